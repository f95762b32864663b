"""The deployed models' table: every exported PTQ/QAT model as onnxruntime runs it.

Read from ``runs/<experiment>/<variant>/seed<k>/export.json`` (``repq export
--summary``). One row per experiment, variant and quantized stage: the primary metric
of the PyTorch deploy model and of the ONNX file in onnxruntime (mean ± std over seeds,
as in the other tables), the top-1 agreement of the two (classification), the largest
output difference, the file's size against the same model in FP32, and whether every
stored weight code equals the PyTorch model's (``yes``, or ``no`` with the number of
seeds that differ).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from repq.report.tables import RUN_SETS, Cell, markdown_text, run_set, variant_order
from repq.vocab import TASKS, Stage, display_name, stage_names

SUMMARY = "export.json"


@dataclass(frozen=True)
class Export:
    """One exported model of one seed (an entry of an ``export.json`` summary)."""

    experiment: str
    variant: str
    seed: int
    stage: Stage
    model: str
    report: dict


def collect(runs: Path) -> list[Export]:
    """Every export summary under ``runs`` (by experiment, variant, then seed)."""
    found = []
    for path in sorted(runs.glob(f"{RUN_SETS}/{SUMMARY}")):
        experiment, variant, seed = run_set(path.parent)
        for entry in json.loads(path.read_text())["results"]:
            found.append(
                Export(
                    experiment,
                    variant,
                    seed,
                    Stage.parse(entry["stage"]),
                    entry["model"],
                    entry,
                )
            )
    return found


def _primary(report: dict) -> str | None:
    """The task's primary metric on its first test set, among the verified metrics."""
    metrics = report.get("metrics")
    if not metrics:
        return None
    primary = next(t.primary for t in TASKS.values() if t.primary_keys(metrics))
    return next(k for k in metrics if k.split("/")[0] == primary)


def _cell(exports: list[Export], read) -> Cell | str:
    """The values ``read`` finds over seeds: ``not verified`` if no seed was verified,
    ``n/a`` if the figure does not apply (top-1 agreement of a super-resolution model)."""
    found = [v for v in (read(e.report) for e in exports) if v is not None]
    if found:
        return Cell(tuple(found))
    return "n/a" if any("metrics" in e.report for e in exports) else "not verified"


def _row(group: list[Export], variants: bool) -> dict[str, object]:
    """The row of one experiment, variant and stage (``group``: its seeds; a variant
    column if ``variants``)."""
    metric = _primary(group[0].report)
    unequal = sum(not e.report["weight_codes_equal"] for e in group)
    return {
        "model": display_name(group[0].model),
        **({"variant": group[0].variant} if variants else {}),
        "stage": group[0].stage.display,
        "metric": metric or "",
        "PyTorch": _cell(group, lambda r: r.get("reference_metrics", {}).get(metric)),
        "ONNX": _cell(group, lambda r: r.get("metrics", {}).get(metric)),
        "top-1 agreement %": _cell(group, lambda r: r.get("top1_agreement")),
        "max |Δ output|": _cell(group, lambda r: r.get("max_abs_diff")),
        "QDQ / FP32 size": _cell(group, lambda r: r["bytes"] / r["fp32_bytes"]),
        "QDQ KiB": _cell(group, lambda r: r["bytes"] / 1024),
        "codes equal": "yes" if not unequal else f"no ({unequal} of {len(group)})",
    }


def deployment_table(exports: list[Export]) -> pd.DataFrame:
    """One row per experiment, variant and quantized stage: variants grouped (the base
    first), stages in the vocabulary's order."""
    order = {name: i for i, name in enumerate(stage_names(quantized_only=True))}
    variants = {v: i for i, v in enumerate(variant_order(e.variant for e in exports))}
    groups: dict[tuple[str, str, str], list[Export]] = {}
    for e in exports:
        groups.setdefault((e.variant, e.experiment, str(e.stage)), []).append(e)
    keys = sorted(groups, key=lambda k: (variants[k[0]], k[1], order[k[2]]))
    rows = [_row(sorted(groups[k], key=lambda e: e.seed), len(variants) > 1) for k in keys]
    return pd.DataFrame(rows)


def _text(value: object, column: str) -> str:
    if not isinstance(value, Cell):
        return str(value)
    if column.startswith("max"):
        return f"{max(value.values):.2g}"
    if column.endswith("size"):
        return f"{value.mean:.3f}"
    return value.format(1 if column.endswith("KiB") else 2)


def to_markdown(table: pd.DataFrame) -> str:
    """The table as Markdown (the largest difference over seeds, sizes as ratios)."""
    text = table.apply(lambda column: [_text(v, column.name) for v in column])
    return markdown_text(text.astype(str))


def to_csv_frame(table: pd.DataFrame) -> pd.DataFrame:
    """Numbers only: each value column as its mean (the largest for differences)."""
    columns = {}
    for column in table.columns:
        cells = list(table[column])
        if column.startswith("max"):
            columns[column] = [max(c.values) if isinstance(c, Cell) else c for c in cells]
        else:
            columns[column] = [c.mean if isinstance(c, Cell) else c for c in cells]
    return pd.DataFrame(columns)


def write_deployment(runs: Path, out: Path) -> list[Path]:
    """``deployment.csv`` and ``deployment.md`` in ``out`` when any model was exported."""
    exports = collect(runs)
    if not exports:
        return []
    table = deployment_table(exports)
    to_csv_frame(table).to_csv(out / "deployment.csv", index=False)
    (out / "deployment.md").write_text(to_markdown(table))
    return [out / "deployment.csv", out / "deployment.md"]
