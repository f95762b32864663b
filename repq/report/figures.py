"""Figures: the difference from FP per method and bit width, and training curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from repq.report.tables import (
    BITS,
    DELTA,
    Cell,
    Result,
    by_experiment,
    delta_cell,
    first,
    primary_metric,
    quantized_stages,
)
from repq.vocab import BASE_VARIANT, METHODS, TASKS

METHOD_DISPLAYS = [m.display for m in METHODS.values()]
COLOURS = ("tab:orange", "tab:green", "tab:blue", "tab:purple", "tab:red", "tab:brown")
CROWDED = 4
"""More groups (models, or models x variants) than this in a panel: labels slanted."""
MIN_PANEL_INCHES, BAR_INCHES = 7.0, 0.14


def delta_bars(results: list[Result]) -> dict[str, tuple[pd.DataFrame, pd.DataFrame, str]]:
    """Per task (vocabulary order): the mean and the standard deviation over seeds (NaN
    for one seed) of every quantized stage's Δ from its FP model (model x stage), and
    the metric."""
    present = list(dict.fromkeys(r.task for r in results))
    panels = {}
    for task in [t for t in TASKS if t in present] + [t for t in present if t not in TASKS]:
        means: dict[str, dict[str, float]] = {}
        spreads: dict[str, dict[str, float]] = {}
        metric = ""
        for runs in by_experiment([r for r in results if r.task == task]).values():
            head = first(runs)
            metric = primary_metric(head)
            stages = [s for b in BITS for s in quantized_stages(head.model, b)]
            cells = {s.display: delta_cell(runs, s, metric) for s in stages}
            found = {k: c for k, c in cells.items() if isinstance(c, Cell)}
            label = head.label if head.variant == BASE_VARIANT else f"{head.label}\n{head.variant}"
            means[label] = {k: c.mean for k, c in found.items()}
            spreads[label] = {k: c.std for k, c in found.items()}  # NaN: one seed
        panels[task] = (pd.DataFrame(means).T, pd.DataFrame(spreads).T, metric)
    return panels


def _style(stage: str) -> dict:
    """One colour per method (PTQ grey), solid at the highest bit width, hatched below."""
    bits, _, method = stage.partition("-bit ")
    colours = {"PTQ": "0.6", **dict(zip(METHOD_DISPLAYS, COLOURS, strict=False))}
    hatch = "" if int(bits) == max(BITS) else "//"
    return {"color": colours.get(method, "0.3"), "hatch": hatch, "edgecolor": "white"}


def _panel(ax, means: pd.DataFrame, spreads: pd.DataFrame) -> None:
    width = 0.8 / max(1, len(means.columns))
    for i, stage in enumerate(means.columns):
        offsets = [x - 0.4 + width * (i + 0.5) for x in range(len(means.index))]
        ax.bar(
            offsets,
            means[stage].to_numpy(),
            width,
            yerr=spreads[stage].to_numpy(),  # no bar where a run has one seed
            capsize=2,
            label=stage,
            **_style(stage),
        )
    crowded = len(means.index) > CROWDED
    ax.set_xticks(
        range(len(means.index)),
        [label.replace("\n", " / ") for label in means.index] if crowded else means.index,
        rotation=45 if crowded else 0,
        ha="right" if crowded else "center",
        rotation_mode="anchor",
        fontsize=8 if crowded else 10,
    )


def _panel_width(means: pd.DataFrame) -> float:
    """Inches for a panel: room for every bar, at least a readable minimum."""
    return max(MIN_PANEL_INCHES, BAR_INCHES * len(means.index) * max(2, len(means.columns)))


def drop_figure(results: list[Result], out: Path) -> list[Path]:
    """One bar chart per task of each quantized result's difference from its FP model
    (mean over seeds, error bars one standard deviation); written as PNG and SVG."""
    panels = delta_bars(results)
    widths = [_panel_width(means) for means, _, _ in panels.values()] or [MIN_PANEL_INCHES]
    crowded = any(len(means.index) > CROWDED for means, _, _ in panels.values())
    fig, axes = plt.subplots(
        1,
        len(widths),
        figsize=(sum(widths), 5.4 if crowded else 4.2),
        squeeze=False,
        gridspec_kw={"width_ratios": widths},
    )
    for ax, (task, (means, spreads, metric)) in zip(axes[0], panels.items(), strict=False):
        _panel(ax, means, spreads)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_title(TASKS[task].display if task in TASKS else task)
        ax.set_ylabel(f"{DELTA} {metric} vs FP (quantized - FP)")
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    paths = [out.with_suffix(".png"), out.with_suffix(".svg")]
    for path in paths:
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return paths


def curve_figure(history_csv: Path, out: Path, title: str, metric: str) -> None:
    """Training loss and the validation ``metric`` per epoch."""
    history = pd.read_csv(history_csv)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    if "train_loss" in history:  # a PTQ run does not train
        left.plot(history["epoch"], history["train_loss"], marker="o")
    left.set_xlabel("epoch")
    left.set_ylabel("train loss")
    validated = history.dropna(subset=[metric])  # train.val_every > 1 leaves gaps
    right.plot(validated["epoch"], validated[metric], marker="o", color="tab:green")
    right.set_xlabel("epoch")
    right.set_ylabel(metric)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100, format="png")
    plt.close(fig)
