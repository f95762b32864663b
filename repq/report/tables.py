"""The paper's tables from the evaluation results of a workflow run.

Every number comes from an ``evaluation.json`` (``runs/<experiment>/seed<k>/``: the
deployed models' evaluation); the task of a result is read from the ``config.json`` of
its run. Stages, methods, bit widths and names come from :mod:`repq.vocab`.

A cell aggregates the seeds of its run: mean ± sample standard deviation over ``n``
seeds (one seed: the value). A ``Δ`` cell aggregates, seed by seed, the quantized value
minus its FP baseline of the same seed (the FP stage the method starts from): negative
is a loss. A cell whose run does not exist says ``no run``; a method that does not
apply to an architecture (RepQ-BNest without BN) says ``n/a``. The best mean quantized
result of each model at each bit width is bold (every one of them on a tie).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from repq.vocab import (
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
KEYS = ("model", "method", "bits")


@dataclass(frozen=True)
class Result:
    """One evaluated run: an entry of ``runs/<experiment>/seed<k>/evaluation.json`` and
    the ``config.json`` of its stage folder."""

    experiment: str
    seed: int
    stage: Stage
    task: str
    model: str
    label: str
    metrics: dict[str, float]
    per_item: dict[str, tuple[float, ...]] = field(default_factory=dict)
    """Each metric per validation or test item (absent from older evaluations)."""


@dataclass(frozen=True)
class Cell:
    """The values of one table cell over seeds."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation (``n - 1``); NaN for one seed."""
        return statistics.stdev(self.values) if self.n > 1 else math.nan

    def format(self, digits: int, signed: bool = False) -> str:
        sign = "+" if signed else ""
        text = f"{self.mean:{sign}.{digits}f}"
        return text if self.n == 1 else f"{text} ± {self.std:.{digits}f}"


def _label(config: dict) -> str:
    """The row label of a model: its table name, with the SR scale when there is one."""
    scale = config["data"].get("scale")
    name = display_name(config["model"]["name"])
    return f"{name} x{scale}" if scale else name


def collect(runs: Path) -> list[Result]:
    """Every evaluation under ``runs`` (sorted by experiment and seed)."""
    results = []
    for path in sorted(runs.glob("*/seed*/evaluation.json")):
        seed = int(path.parent.name.removeprefix("seed"))
        for entry in json.loads(path.read_text())["results"]:
            config = json.loads((path.parent / entry["stage"] / "config.json").read_text())
            results.append(
                Result(
                    experiment=path.parent.parent.name,
                    seed=seed,
                    stage=Stage.parse(entry["stage"]),
                    task=config["task"],
                    model=config["model"]["name"],
                    label=_label(config),
                    metrics=entry["metrics"],
                    per_item={k: tuple(v) for k, v in entry.get("per_item", {}).items()},
                )
            )
    return results


def runs_table(results: list[Result]) -> pd.DataFrame:
    """Every measured value, one row per experiment, seed, stage and metric."""
    rows = [
        {
            "experiment": r.experiment,
            "model": r.label,
            "seed": r.seed,
            "stage": str(r.stage),
            "metric": key,
            "value": value,
        }
        for r in results
        for key, value in r.metrics.items()
    ]
    return pd.DataFrame(rows, columns=["experiment", "model", "seed", "stage", "metric", "value"])


def applies(method: str, model: str) -> bool:
    """Whether a method applies to a model (an architecture outside the zoo: always)."""
    return METHODS[method].applies_to(model)


def fp_stages_of(model: str) -> list[Stage]:
    owners = {m.fp_stage: name for name, m in METHODS.items()}
    return [Stage(s) for s in fp_stages() if s not in owners or applies(owners[s], model)]


def quantized_stages(model: str, bits: int) -> list[Stage]:
    """PTQ, then every method that applies, at one bit width."""
    return [Stage.ptq(bits), *(Stage.qat(m, bits) for m in METHODS if applies(m, model))]


Runs = dict[str, dict[int, Result]]
"""stage name -> seed -> result, for one experiment."""


def by_experiment(results: list[Result]) -> dict[str, Runs]:
    """experiment -> stage -> seed -> result, in the order of ``results``."""
    grouped: dict[str, Runs] = {}
    for r in results:
        grouped.setdefault(r.experiment, {}).setdefault(str(r.stage), {})[r.seed] = r
    return grouped


def first(runs: Runs) -> Result:
    """A result of an experiment (its model, label and task are the same in all)."""
    return next(iter(next(iter(runs.values())).values()))


def primary_metric(result: Result) -> str:
    """The metric key that claims and figures use: the task's primary metric on its first
    test set (the first metric of a task this module does not know)."""
    if result.task in TASKS:
        return TASKS[result.task].primary_key(result.metrics)
    return next(iter(result.metrics))


def values(runs: Runs, stage: Stage, metric: str) -> dict[int, float]:
    """seed -> value of ``metric`` for one stage."""
    return {seed: r.metrics[metric] for seed, r in runs.get(str(stage), {}).items()}


def item_values(runs: Runs, stage: Stage, metric: str) -> dict[int, tuple[float, ...]]:
    """seed -> the per-item values of ``metric`` for one stage (seeds that have them)."""
    found = runs.get(str(stage), {}).items()
    return {seed: r.per_item[metric] for seed, r in found if metric in r.per_item}


def cell(runs: Runs, stage: Stage, metric: str) -> Cell | str:
    found = values(runs, stage, metric)
    return Cell(tuple(found[s] for s in sorted(found))) if found else NO_RUN


def delta_cell(runs: Runs, stage: Stage, metric: str) -> Cell | str:
    """``stage`` minus its FP stage, seed by seed (seeds that have both)."""
    value, base = values(runs, stage, metric), values(runs, stage.init, metric)
    paired = sorted(set(value) & set(base))
    return Cell(tuple(value[s] - base[s] for s in paired)) if paired else NO_RUN


def wide_table(results: list[Result], metric: str) -> pd.DataFrame:
    """One row per experiment: every FP stage, then per bit width PTQ and each method's
    ``metric`` with its Δ from the FP stage it starts from (the classification layout)."""
    rows = []
    for runs in by_experiment(results).values():
        head = first(runs)
        row: dict[str, object] = {"model": head.label}
        for fp in map(Stage, fp_stages()):
            applicable = fp in fp_stages_of(head.model)
            row[fp.display] = cell(runs, fp, metric) if applicable else NOT_APPLICABLE
        for bits in BITS:
            applicable = quantized_stages(head.model, bits)
            for stage in [Stage.ptq(bits), *(Stage.qat(m, bits) for m in METHODS)]:
                if stage not in applicable:
                    row[stage.display] = row[f"{stage.display} {DELTA}"] = NOT_APPLICABLE
                    continue
                row[stage.display] = cell(runs, stage, metric)
                row[f"{stage.display} {DELTA}"] = delta_cell(runs, stage, metric)
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
    for runs in by_experiment(results).values():
        head = first(runs)
        stages = fp_stages_of(head.model) + [
            s for b in BITS for s in quantized_stages(head.model, b)
        ]
        for stage in stages:
            row: dict[str, object] = {
                "model": head.label,
                "method": stage.method_display,
                "bits": stage.bit_width,
            }
            for key, column in _metric_columns(head):
                row[column] = cell(runs, stage, key)
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
    """``(row, column)`` of the best mean quantized result per model and bit width."""
    bold: set[tuple[int, str]] = set()
    if table.empty:
        return bold
    if "bits" not in table.columns:  # wide layout
        for bits in BITS:
            columns = [s.display for s in (Stage.ptq(bits), *(Stage.qat(m, bits) for m in METHODS))]
            for index, row in table.iterrows():
                found = {c: row[c].mean for c in columns if isinstance(row[c], Cell)}
                bold |= {(index, c) for c in _best(found)}
        return bold
    quantized = table[table["bits"] != FP_BITS]
    metric_columns = [c for c in table.columns if c not in KEYS]
    for _, group in quantized.groupby(["model", "bits"]):
        for column in metric_columns:
            found = {i: v.mean for i, v in group[column].items() if isinstance(v, Cell)}
            bold |= {(i, column) for i in _best(found)}
    return bold


def _best(found: dict) -> list:
    """Keys of the highest value (all of them on a tie)."""
    top = max(found.values(), default=None)
    return [k for k, v in found.items() if v == top]


def _format(value: object, column: str) -> str:
    if not isinstance(value, Cell):
        return str(value)
    if column.endswith(DELTA):
        return value.format(2, signed=True)
    return value.format(4 if column.endswith("SSIM") else 2)


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
    return text.replace(DELTA, r"$\Delta$").replace("±", r"$\pm$")


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


def to_csv_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The table with numbers only: each value column as its mean, plus ``<column> std``
    and ``<column> n`` (a cell without a value keeps its text)."""
    columns: dict[str, list] = {}
    for column in table.columns:
        cells = list(table[column])
        if not any(isinstance(c, Cell) for c in cells):
            columns[column] = cells
            continue
        columns[column] = [c.mean if isinstance(c, Cell) else c for c in cells]
        columns[f"{column} std"] = [c.std if isinstance(c, Cell) else math.nan for c in cells]
        columns[f"{column} n"] = [c.n if isinstance(c, Cell) else 0 for c in cells]
    return pd.DataFrame(columns)


def write_tables(results: list[Result], out: Path) -> dict[str, pd.DataFrame]:
    """Write one table per task as ``<task>.csv``, ``.md`` and ``.tex``, and every
    measured value as ``runs.csv``."""
    out.mkdir(parents=True, exist_ok=True)
    tables = task_tables(results)
    for task, table in tables.items():
        to_csv_frame(table).to_csv(out / f"{task}.csv", index=False)
        (out / f"{task}.md").write_text(to_markdown(table))
        (out / f"{task}.tex").write_text(to_latex(table))
    runs_table(results).to_csv(out / "runs.csv", index=False)
    return tables
