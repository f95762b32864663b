"""The paper's tables from the evaluation results of a workflow run.

Every number comes from an ``eval.json`` (the deployed model's evaluation). A cell
whose run does not exist says ``no run``; RepQ-BNest on a model without BN says
``n/a``. The best quantized result of each model (classification) or of each scale
(super-resolution) at each bit width is bold (every one of them on a tie).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from repq.models import NORM_FREE

METHODS = ("merged", "repq", "bnest")
METHOD_NAMES = {"merged": "Merged", "repq": "RepQ", "bnest": "RepQ-BNest"}
BITS = (8, 4)
MODEL_NAMES = {
    "repvgg_a0": "RepVGG-A0",
    "repvgg_b0": "RepVGG-B0",
    "ac_resnet18": "AC-ResNet-18",
    "orepa_resnet18": "OREPA-ResNet-18",
    "resnet18": "ResNet-18",
    "ecbsr": "ECBSR",
}
NO_RUN, NOT_APPLICABLE = "no run", "n/a"


@dataclass(frozen=True)
class Result:
    """One evaluated run: ``runs/<experiment>/<stage>/eval.json``."""

    experiment: str
    stage: str
    model: str
    metrics: dict[str, float]
    scale: int | None


def collect(runs: Path) -> list[Result]:
    """Every evaluation under ``runs`` (sorted by experiment and stage)."""
    results = []
    for path in sorted(runs.glob("*/*/eval.json")):
        content = json.loads(path.read_text())
        config = json.loads((path.parent / "config.json").read_text())
        scale = (
            config["model"].get("kwargs", {}).get("scale")
            if content["model"] in NORM_FREE
            else None
        )
        results.append(
            Result(
                path.parent.parent.name,
                path.parent.name,
                content["model"],
                content["metrics"],
                scale,
            )
        )
    return results


def _by_stage(results: list[Result], experiment: str) -> dict[str, Result]:
    return {r.stage: r for r in results if r.experiment == experiment}


def _experiments(results: list[Result], classification: bool) -> list[str]:
    return list(
        dict.fromkeys(r.experiment for r in results if ("top1" in r.metrics) == classification)
    )


def classification_table(results: list[Result]) -> pd.DataFrame:
    """Rows: models. Columns: FP, FP-BNest, then per bit width each method's top-1 and its
    drop (RepQ-BNest's drop is from FP-BNest, the model it starts from)."""
    rows = []
    for experiment in _experiments(results, classification=True):
        stages = _by_stage(results, experiment)
        model = next(iter(stages.values())).model
        row: dict[str, object] = {"model": MODEL_NAMES.get(model, model)}
        row["FP"] = _value(stages, "fp", "top1")
        row["FP-BNest"] = _value(stages, "fp-bnest", "top1", model in NORM_FREE)
        for bits in BITS:
            for method in METHODS:
                name = f"{bits}-bit {METHOD_NAMES[method]}"
                value = _value(stages, f"qat-{method}-{bits}", "top1", _na(method, model))
                base = row["FP-BNest" if method == "bnest" else "FP"]
                row[name] = value
                row[f"{name} drop"] = _drop(base, value)
        rows.append(row)
    return pd.DataFrame(rows)


def superres_table(results: list[Result]) -> pd.DataFrame:
    """Rows: ECBSR scale x method x bits (FP first). Columns: PSNR and SSIM per test set."""
    rows = []
    for experiment in _experiments(results, classification=False):
        stages = _by_stage(results, experiment)
        first = next(iter(stages.values()))
        sets = [k.split("/", 1)[1] for k in first.metrics if k.startswith("psnr/")]
        plan = [("fp", "FP", 32)] + [
            (f"qat-{m}-{b}", METHOD_NAMES[m], b) for b in BITS for m in ("merged", "repq")
        ]
        for stage, method, bits in plan:
            row: dict[str, object] = {
                "model": f"{MODEL_NAMES.get(first.model, first.model)} x{first.scale}",
                "method": method,
                "bits": bits,
            }
            for name in sets:
                for metric in ("psnr", "ssim"):
                    row[f"{name} {metric.upper()}"] = _value(stages, stage, f"{metric}/{name}")
            rows.append(row)
    return pd.DataFrame(rows)


def _na(method: str, model: str) -> bool:
    return method == "bnest" and model in NORM_FREE


def _value(stages: dict[str, Result], stage: str, metric: str, na: bool = False) -> object:
    if na:
        return NOT_APPLICABLE
    result = stages.get(stage)
    return NO_RUN if result is None else result.metrics[metric]


def _drop(base: object, value: object) -> object:
    if isinstance(base, float) and isinstance(value, float):
        return value - base
    return value if isinstance(value, str) else NO_RUN


def _bold_cells(table: pd.DataFrame, kind: str) -> set[tuple[int, str]]:
    """``(row, column)`` of the best quantized result per model (or scale) and bit width."""
    bold: set[tuple[int, str]] = set()
    if table.empty:
        return bold
    if kind == "classification":
        for bits in BITS:
            columns = [f"{bits}-bit {METHOD_NAMES[m]}" for m in METHODS]
            for index, row in table.iterrows():
                values = {c: row[c] for c in columns if isinstance(row[c], float)}
                bold |= {(index, c) for c in _best(values)}
        return bold
    quantized = table[table["bits"] != 32]
    metric_columns = [c for c in table.columns if c.endswith(("PSNR", "SSIM"))]
    for _, group in quantized.groupby(["model", "bits"]):
        for column in metric_columns:
            values = {i: v for i, v in group[column].items() if isinstance(v, float)}
            bold |= {(i, column) for i in _best(values)}
    return bold


def _best(values: dict) -> list:
    """Keys of the highest value (all of them on a tie)."""
    top = max(values.values(), default=None)
    return [k for k, v in values.items() if v == top]


def _format(value: object, column: str) -> str:
    if not isinstance(value, float):
        return str(value)
    if column.endswith("drop"):
        return f"{value:+.2f}"
    return f"{value:.4f}" if column.endswith("SSIM") else f"{value:.2f}"


def _cells(
    table: pd.DataFrame, kind: str, escape: Callable[[str], str], bold: Callable[[str], str]
) -> list[list[str]]:
    """Each row's formatted cells, escaped, the best results wrapped by ``bold``."""
    best = _bold_cells(table, kind)
    rows = []
    for index, row in table.iterrows():
        texts = {column: escape(_format(row[column], column)) for column in table.columns}
        rows.append([bold(t) if (index, c) in best else t for c, t in texts.items()])
    return rows


def to_markdown(table: pd.DataFrame, kind: str) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for cells in _cells(table, kind, str, lambda text: f"**{text}**"):
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    return text.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")


def to_latex(table: pd.DataFrame, kind: str) -> str:
    """A booktabs table (``\\toprule``, ``\\midrule``, ``\\bottomrule``)."""
    spec = "l" + "r" * (len(table.columns) - 1)
    lines = [
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(_latex_escape(c) for c in table.columns) + r" \\",
        r"\midrule",
    ]
    for cells in _cells(table, kind, _latex_escape, lambda text: rf"\textbf{{{text}}}"):
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_tables(runs: Path, out: Path) -> dict[str, pd.DataFrame]:
    """Write ``classification`` and ``superres`` as CSV, Markdown and LaTeX."""
    out.mkdir(parents=True, exist_ok=True)
    results = collect(runs)
    tables = {
        "classification": classification_table(results),
        "superres": superres_table(results),
    }
    for kind, table in tables.items():
        table.to_csv(out / f"{kind}.csv", index=False)
        (out / f"{kind}.md").write_text(to_markdown(table, kind))
        (out / f"{kind}.tex").write_text(to_latex(table, kind))
    return tables
