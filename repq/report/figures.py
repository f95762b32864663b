"""Figures: the drop from FP per method and bit width, and training curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from repq.report.tables import BITS, METHOD_NAMES, METHODS


def _numeric(value: object) -> float:
    return value if isinstance(value, float) else float("nan")


def _classification_drops(table: pd.DataFrame) -> pd.DataFrame:
    drops = {}
    for bits in BITS:
        for method in METHODS:
            column = f"{bits}-bit {METHOD_NAMES[method]} drop"
            if column in table:
                drops[f"{METHOD_NAMES[method]} {bits}-bit"] = table[column].map(_numeric)
    return pd.DataFrame(drops, index=table["model"]) if drops else pd.DataFrame()


def _superres_drops(table: pd.DataFrame) -> pd.DataFrame:
    psnr = [c for c in table.columns if c.endswith("PSNR")]
    if table.empty or not psnr:
        return pd.DataFrame()
    column = psnr[0]
    rows = {}
    for model, group in table.groupby("model", sort=False):
        fp = group[group["bits"] == 32][column].map(_numeric).iloc[0]
        rows[model] = {
            f"{r['method']} {r['bits']}-bit": _numeric(r[column]) - fp
            for _, r in group[group["bits"] != 32].iterrows()
        }
    return pd.DataFrame(rows).T


def drop_figure(classification: pd.DataFrame, superres: pd.DataFrame, out: Path) -> list[Path]:
    """Bar charts of the top-1 drop (classification) and the PSNR drop on the first test
    set (super-resolution) from FP; written as PNG and SVG."""
    panels = [
        (_classification_drops(classification), "top-1 drop from FP (points)"),
        (_superres_drops(superres), "PSNR drop from FP (dB)"),
    ]
    panels = [(d, label) for d, label in panels if not d.empty]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6 * max(1, len(panels)), 4))
    axes = axes if hasattr(axes, "__len__") else [axes]
    for ax, (drops, label) in zip(axes, panels, strict=False):
        drops.plot.bar(ax=ax, rot=20)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths = [out.with_suffix(".png"), out.with_suffix(".svg")]
    for path in paths:
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return paths


def curve_figure(history_csv: Path, out: Path, title: str) -> None:
    """Training loss and the validation metric per epoch."""
    history = pd.read_csv(history_csv)
    metric = "top1" if "top1" in history else next(c for c in history if c.startswith("psnr/"))
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
