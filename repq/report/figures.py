"""Figures: the difference from FP per method and bit width, and training curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from repq.report.tables import DELTA
from repq.vocab import FP_BITS, METHODS


def _numeric(value: object) -> float:
    return value if isinstance(value, float) else float("nan")


def _wide_deltas(table: pd.DataFrame) -> pd.DataFrame:
    """model x stage: the table's Δ columns."""
    columns = [c for c in table.columns if c.endswith(f" {DELTA}")]
    data = {c.removesuffix(f" {DELTA}"): table[c].map(_numeric).to_numpy() for c in columns}
    return pd.DataFrame(data, index=table["model"].to_numpy())


def _long_deltas(table: pd.DataFrame) -> pd.DataFrame:
    """model x stage: the first metric column of each quantized row minus the FP row its
    method starts from."""
    metric = next(c for c in table.columns if c not in ("model", "method", "bits"))
    fp_of = {m.display: m.fp_display for m in METHODS.values()}
    rows: dict[str, dict[str, float]] = {}
    for model, group in table.groupby("model", sort=False):
        base = {r["method"]: _numeric(r[metric]) for _, r in group.iterrows()}
        rows[model] = {
            f"{r['bits']}-bit {r['method']}": _numeric(r[metric]) - base[fp_of[r["method"]]]
            for _, r in group[group["bits"] != FP_BITS].iterrows()
        }
    return pd.DataFrame(rows).T


def deltas(table: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The bars of one task's panel (model x stage) and what they measure."""
    if "bits" not in table.columns:
        return _wide_deltas(table), f"{DELTA} from FP (points, QAT - FP)"
    metric = next(c for c in table.columns if c not in ("model", "method", "bits"))
    return _long_deltas(table), f"{DELTA} {metric} from FP (QAT - FP)"


def drop_figure(tables: dict[str, pd.DataFrame], out: Path) -> list[Path]:
    """One bar chart per task of each quantized result's difference from its FP model;
    written as PNG and SVG."""
    panels = [(task, *deltas(t)) for task, t in tables.items() if not t.empty]
    count = max(1, len(panels))
    fig, axes = plt.subplots(1, count, figsize=(6 * count, 4), squeeze=False)
    for ax, (task, bars, label) in zip(axes[0], panels, strict=False):
        bars.plot.bar(ax=ax, rot=20)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_title(task)
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
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
    left.plot(history["epoch"], history["train_loss"], marker="o")
    left.set_xlabel("epoch")
    left.set_ylabel("train loss")
    right.plot(history["epoch"], history[metric], marker="o", color="tab:green")
    right.set_xlabel("epoch")
    right.set_ylabel(metric)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100, format="png")
    plt.close(fig)
