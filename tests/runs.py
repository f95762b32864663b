"""Hand-made workflow results (``runs/<experiment>/<variant>/seed<k>/evaluation.json``
and each run's ``config.json``)."""

from __future__ import annotations

import json
import re
from pathlib import Path


def write_run(
    runs: Path,
    experiment: str,
    stage: str,
    metrics: dict[str, float],
    model: str = "repvgg_a0",
    task: str = "classification",
    data: dict | None = None,
    seed: int = 0,
    train: dict | None = None,
    per_item: dict[str, list[float]] | None = None,
    variant: str = "base",
    quant: dict | None = None,
) -> Path:
    """Add one evaluated run as the workflow writes it (``per_item``: its values per
    validation item, as ``repq evaluate`` writes them); returns its folder."""
    seeded = runs / experiment / variant / f"seed{seed}"
    folder = seeded / stage
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model": {"name": model},
        "task": task,
        "data": data or {},
        "train": {**(train or {}), "seed": seed},
    }
    if quant:
        config["quant"] = quant
    if variant != "base":
        config["tracking"] = {"variant": variant}
    (folder / "config.json").write_text(json.dumps(config))
    evaluation = seeded / "evaluation.json"
    content = json.loads(evaluation.read_text()) if evaluation.exists() else {"results": []}
    entry = {"task": task, "model": model, "stage": stage, "metrics": metrics}
    if per_item is not None:
        entry["per_item"] = per_item
    content["results"].append(entry)
    evaluation.write_text(json.dumps(content))
    return folder


def write_export(
    runs: Path, experiment: str, seed: int, report: dict, variant: str = "base"
) -> None:
    """Add one exported model to ``runs/<experiment>/<variant>/seed<k>/export.json`` as
    ``repq export --summary`` writes it."""
    summary = runs / experiment / variant / f"seed{seed}" / "export.json"
    summary.parent.mkdir(parents=True, exist_ok=True)
    content = json.loads(summary.read_text()) if summary.exists() else {"results": []}
    content["results"].append(report)
    summary.write_text(json.dumps(content))


def cells(markdown: str) -> list[list[str]]:
    """The cells of a Markdown (pipe) table, row by row, header first, without the
    alignment row; an escaped ``\\|`` is a ``|`` of the cell."""
    rows = []
    for line in markdown.strip().splitlines():
        parts = re.split(r"(?<!\\)\|", line.strip())[1:-1]
        row = [part.strip().replace("\\|", "|") for part in parts]
        if not all(set(cell) <= set(":-") for cell in row):
            rows.append(row)
    return rows
