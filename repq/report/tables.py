"""The paper's tables from the evaluation results of a workflow run.

Every number comes from an experiment's ``evaluation.json`` (the deployed models'
evaluation); the task of a result is read from the ``config.json`` of its run. Stages,
methods, bit widths and names come from :mod:`repq.vocab`. A cell whose run does not
exist says ``no run``; a method that does not apply to an architecture (RepQ-BNest
without BN) says ``n/a``.
``Δ`` columns hold the quantized value minus its FP baseline (the FP stage the method
starts from): negative is a loss. The best quantized result of each model at each bit
width is bold (every one of them on a tie).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from repq.vocab import (
    ARCHITECTURES,
    BITS,
    FP_BITS,
    METHODS,
    TASKS,
    Stage,
    display_name,
    fp_stages,
)

NO_RUN, NOT_APPLICABLE = "no run", "n/a"
DELTA = "Δ"


@dataclass(frozen=True)
class Result:
    """One evaluated run: an entry of ``runs/<experiment>/evaluation.json`` and the
    ``config.json`` of its stage folder."""

    experiment: str
    stage: Stage
    task: str
    model: str
    label: str
    metrics: dict[str, float]


def _label(config: dict) -> str:
    """The row label of a model: its table name, with the SR scale when there is one."""
    scale = config["data"].get("scale")
    name = display_name(config["model"]["name"])
    return f"{name} x{scale}" if scale else name


def collect(runs: Path) -> list[Result]:
    """Every evaluation under ``runs`` (sorted by experiment, then in evaluation order)."""
    results = []
    for path in sorted(runs.glob("*/evaluation.json")):
        for entry in json.loads(path.read_text())["results"]:
            config = json.loads((path.parent / entry["stage"] / "config.json").read_text())
            results.append(
                Result(
                    experiment=path.parent.name,
                    stage=Stage.parse(entry["stage"]),
                    task=config["task"],
                    model=config["model"]["name"],
                    label=_label(config),
                    metrics=entry["metrics"],
                )
            )
    return results


def _applies(method: str, model: str) -> bool:
    """Whether a method applies to a model (an architecture outside the zoo: always)."""
    return model not in ARCHITECTURES or METHODS[method].applies_to(model)


def _qat_stages(model: str) -> list[Stage]:
    return [Stage.qat(m, b) for b in BITS for m in METHODS if _applies(m, model)]


def _fp_stages(model: str) -> list[Stage]:
    owners = {m.fp_stage: name for name, m in METHODS.items()}
    return [Stage(s) for s in fp_stages() if s not in owners or _applies(owners[s], model)]


def _experiments(results: list[Result]) -> dict[str, dict[str, Result]]:
    """experiment -> stage name -> result, in the order of ``results``."""
    by_experiment: dict[str, dict[str, Result]] = {}
    for r in results:
        by_experiment.setdefault(r.experiment, {})[str(r.stage)] = r
    return by_experiment


def _value(stages: dict[str, Result], stage: Stage, metric: str) -> object:
    result = stages.get(str(stage))
    return NO_RUN if result is None else result.metrics[metric]


def _delta(base: object, value: object) -> object:
    if isinstance(base, float) and isinstance(value, float):
        return value - base
    return value if isinstance(value, str) else NO_RUN


def wide_table(results: list[Result], metric: str) -> pd.DataFrame:
    """One row per experiment: every FP stage, then per bit width each method's value of
    ``metric`` and its Δ from the FP stage it starts from (the classification layout)."""
    rows = []
    for stages in _experiments(results).values():
        first = next(iter(stages.values()))
        row: dict[str, object] = {"model": first.label}
        for fp in map(Stage, fp_stages()):
            applies = fp in _fp_stages(first.model)
            row[fp.display] = _value(stages, fp, metric) if applies else NOT_APPLICABLE
        for bits in BITS:
            for name in METHODS:
                stage = Stage.qat(name, bits)
                if not _applies(name, first.model):
                    row[stage.display] = row[f"{stage.display} {DELTA}"] = NOT_APPLICABLE
                    continue
                value = _value(stages, stage, metric)
                row[stage.display] = value
                row[f"{stage.display} {DELTA}"] = _delta(row[stage.init.display], value)
        rows.append(row)
    return pd.DataFrame(rows)


def _metric_columns(result: Result) -> list[tuple[str, str]]:
    """``(metric key, column name)`` of a result, e.g. ``("psnr/Set5", "Set5 PSNR")``."""
    columns = []
    for key in result.metrics:
        metric, _, test_set = key.partition("/")
        columns.append((key, f"{test_set} {metric.upper()}" if test_set else metric))
    return columns


def long_table(results: list[Result]) -> pd.DataFrame:
    """One row per experiment and stage (FP first), one column per metric and test set
    (the super-resolution layout; also the layout of a task this module does not know)."""
    rows = []
    for stages in _experiments(results).values():
        first = next(iter(stages.values()))
        for stage in _fp_stages(first.model) + _qat_stages(first.model):
            method = METHODS[stage.method].display if stage.is_qat else stage.display
            row: dict[str, object] = {"model": first.label, "method": method}
            row["bits"] = stage.bit_width
            for key, column in _metric_columns(first):
                row[column] = _value(stages, stage, key)
            rows.append(row)
    return pd.DataFrame(rows)


def task_tables(results: list[Result]) -> dict[str, pd.DataFrame]:
    """One table per task present in ``results`` (known tasks first, in vocabulary order):
    the wide layout for a task with one metric, the long layout otherwise."""
    present = list(dict.fromkeys(r.task for r in results))
    tasks = [t for t in TASKS if t in present] + [t for t in present if t not in TASKS]
    tables = {}
    for task in tasks:
        chosen = [r for r in results if r.task == task]
        facts = TASKS.get(task)
        if facts is not None and len(facts.metrics) == 1:
            tables[task] = wide_table(chosen, facts.primary)
        else:
            tables[task] = long_table(chosen)
    return tables


def _bold_cells(table: pd.DataFrame) -> set[tuple[int, str]]:
    """``(row, column)`` of the best quantized result per model and bit width."""
    bold: set[tuple[int, str]] = set()
    if table.empty:
        return bold
    if "bits" not in table.columns:  # wide layout
        for bits in BITS:
            columns = [Stage.qat(m, bits).display for m in METHODS]
            for index, row in table.iterrows():
                values = {c: row[c] for c in columns if isinstance(row[c], float)}
                bold |= {(index, c) for c in _best(values)}
        return bold
    quantized = table[table["bits"] != FP_BITS]
    metric_columns = [c for c in table.columns if c not in ("model", "method", "bits")]
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
    if column.endswith(DELTA):
        return f"{value:+.2f}"
    return f"{value:.4f}" if column.endswith("SSIM") else f"{value:.2f}"


def _cells(
    table: pd.DataFrame, escape: Callable[[str], str], bold: Callable[[str], str]
) -> list[list[str]]:
    """Each row's formatted cells, escaped, the best results wrapped by ``bold``."""
    best = _bold_cells(table)
    rows = []
    for index, row in table.iterrows():
        texts = {column: escape(_format(row[column], column)) for column in table.columns}
        rows.append([bold(t) if (index, c) in best else t for c, t in texts.items()])
    return rows


def to_markdown(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for cells in _cells(table, str, lambda text: f"**{text}**"):
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    text = text.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")
    return text.replace(DELTA, r"$\Delta$")


def to_latex(table: pd.DataFrame) -> str:
    """A booktabs table (``\\toprule``, ``\\midrule``, ``\\bottomrule``)."""
    spec = "l" + "r" * (len(table.columns) - 1)
    lines = [
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(_latex_escape(c) for c in table.columns) + r" \\",
        r"\midrule",
    ]
    for cells in _cells(table, _latex_escape, lambda text: rf"\textbf{{{text}}}"):
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_tables(runs: Path, out: Path) -> dict[str, pd.DataFrame]:
    """Write one table per task as ``<task>.csv``, ``.md`` and ``.tex``."""
    out.mkdir(parents=True, exist_ok=True)
    tables = task_tables(collect(runs))
    for task, table in tables.items():
        table.to_csv(out / f"{task}.csv", index=False)
        (out / f"{task}.md").write_text(to_markdown(table))
        (out / f"{task}.tex").write_text(to_latex(table))
    return tables
