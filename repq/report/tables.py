"""The paper's tables from the evaluation results of a workflow run.

Every number comes from an ``evaluation.json`` (``runs/<experiment>/<variant>/seed<k>/``:
the deployed models' evaluation); the task of a result is read from the ``config.json``
of its run. Stages, methods, bit widths and names come from :mod:`repq.vocab`. Rows are
grouped by variant (the base first) where the runs hold more than one; a variant that
shares the base's FP models (``stages: quantized``) is shown with them.

A cell aggregates the seeds of its run: mean ± sample standard deviation over ``n``
seeds (one seed: the value). A ``Δ`` cell aggregates, seed by seed, the quantized value
minus its FP baseline of the same seed (the FP stage the method starts from): negative
is a loss. A cell whose run does not exist says ``no run`` (a stage no row has a run of
is left out); a method that does not
apply to an architecture (RepQ-BNest without BN) says ``n/a``. The best mean quantized
result of each model at each bit width is bold (every one of them on a tie), where two or
more compete.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from repq.vocab import (
    BASE_VARIANT,
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
KEYS = ("model", "variant", "method", "bits")


@dataclass(frozen=True)
class Result:
    """One evaluated run: an entry of ``runs/<experiment>/<variant>/seed<k>/
    evaluation.json`` and the ``config.json`` of its stage folder (``config``)."""

    experiment: str
    variant: str
    seed: int
    stage: Stage
    task: str
    model: str
    label: str
    metrics: dict[str, float]
    per_item: dict[str, tuple[float, ...]] = field(default_factory=dict)
    """Each metric per validation or test item (absent from older evaluations)."""
    config: dict = field(default_factory=dict, compare=False, repr=False)
    shared: bool = False
    """A base FP result shown in a variant that starts from it (not the variant's run)."""


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


RUN_SETS = "*/*/seed*"
"""The folders of ``runs/`` that hold one experiment's variant at one seed."""


def run_set(folder: Path) -> tuple[str, str, int]:
    """``(experiment, variant, seed)`` of a folder ``runs/<experiment>/<variant>/seed<k>``."""
    return folder.parent.parent.name, folder.parent.name, int(folder.name.removeprefix("seed"))


def collect(runs: Path) -> list[Result]:
    """Every evaluation under ``runs`` (sorted by experiment, variant and seed)."""
    results = []
    for path in sorted(runs.glob(f"{RUN_SETS}/evaluation.json")):
        experiment, variant, seed = run_set(path.parent)
        for entry in json.loads(path.read_text())["results"]:
            config = json.loads((path.parent / entry["stage"] / "config.json").read_text())
            results.append(
                Result(
                    experiment=experiment,
                    variant=variant,
                    seed=seed,
                    stage=Stage.parse(entry["stage"]),
                    task=config["task"],
                    model=config["model"]["name"],
                    label=_label(config),
                    metrics=entry["metrics"],
                    per_item={k: tuple(v) for k, v in entry.get("per_item", {}).items()},
                    config=config,
                )
            )
    return results


def runs_table(results: list[Result]) -> pd.DataFrame:
    """Every measured value, one row per experiment, variant, seed, stage and metric."""
    rows = [
        {
            "experiment": r.experiment,
            "variant": r.variant,
            "model": r.label,
            "seed": r.seed,
            "stage": str(r.stage),
            "metric": key,
            "value": value,
        }
        for r in results
        for key, value in r.metrics.items()
    ]
    columns = ["experiment", "variant", "model", "seed", "stage", "metric", "value"]
    return pd.DataFrame(rows, columns=columns)


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
"""stage name -> seed -> result, for one experiment's variant."""


def variant_order(names: Iterable[str]) -> list[str]:
    """Variant names without repeats: the base first, then the others by name."""
    return sorted(set(names), key=lambda v: (v != BASE_VARIANT, v))


def by_experiment(results: list[Result]) -> dict[tuple[str, str], Runs]:
    """``(experiment, variant)`` -> stage -> seed -> result, grouped by variant (the base
    first), experiments in the order of ``results``. A variant's group also holds the
    base's FP stages it has no run of (a variant with ``stages: quantized`` starts from
    them), for the seeds it has."""
    grouped: dict[tuple[str, str], Runs] = {}
    order = {v: i for i, v in enumerate(variant_order(r.variant for r in results))}
    for r in sorted(results, key=lambda r: order[r.variant]):
        runs = grouped.setdefault((r.experiment, r.variant), {})
        runs.setdefault(str(r.stage), {})[r.seed] = r
    for (experiment, variant), runs in grouped.items():
        base = grouped.get((experiment, BASE_VARIANT), {})
        if variant != BASE_VARIANT:
            _share_fp(runs, base)
    return grouped


def _share_fp(runs: Runs, base: Runs) -> None:
    """Add to a variant's ``runs`` the base's FP results it lacks, at its own seeds."""
    seeds = {seed for found in runs.values() for seed in found}
    for stage in fp_stages():
        if stage in runs or stage not in base:
            continue
        variant = first(runs).variant
        found = {s: r for s, r in base[stage].items() if s in seeds}
        if found:
            runs[stage] = {s: replace(r, variant=variant, shared=True) for s, r in found.items()}


def multiple_variants(results: list[Result]) -> bool:
    """Whether the tables need a variant column."""
    return len({r.variant for r in results}) > 1


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
    ``metric`` with its Δ from the FP stage it starts from (the classification layout).
    A column that no row has a run of is left out (a method or bit width not configured)."""
    rows = []
    for runs in by_experiment(results).values():
        head = first(runs)
        row: dict[str, object] = {"model": head.label, **_variant(head, results)}
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
    table = pd.DataFrame(rows)
    unrun = [c for c in table.columns if (table[c].astype(str) == NO_RUN).all()]
    return table.drop(columns=unrun)


def _variant(head: Result, results: list[Result]) -> dict[str, str]:
    """The variant column of a row, where the results hold more than one variant."""
    return {"variant": head.variant} if multiple_variants(results) else {}


def _metric_columns(result: Result) -> list[tuple[str, str]]:
    """``(metric key, column name)`` of a result, e.g. ``("psnr/Set5", "Set5 PSNR")``."""
    columns = []
    for key in result.metrics:
        metric, _, test_set = key.partition("/")
        columns.append((key, f"{test_set} {metric.upper()}" if test_set else metric))
    return columns


def long_table(results: list[Result]) -> pd.DataFrame:
    """One row per experiment and stage (FP first), one column per metric and test set
    (the super-resolution layout; also the layout of a task this module does not know).
    A stage that no row has a run of is left out (a method or bit width not configured)."""
    rows = []
    for runs in by_experiment(results).values():
        head = first(runs)
        stages = fp_stages_of(head.model) + [
            s for b in BITS for s in quantized_stages(head.model, b)
        ]
        for stage in stages:
            row: dict[str, object] = {
                "model": head.label,
                **_variant(head, results),
                "method": stage.method_display,
                "bits": stage.bit_width,
            }
            for key, column in _metric_columns(head):
                row[column] = cell(runs, stage, key)
            rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    values = table.drop(columns=[k for k in KEYS if k in table.columns]).astype(str)
    unrun = (values == NO_RUN).all(axis=1)
    stage = table["method"] + " " + table["bits"].astype(str)
    return table[~stage.isin(set(stage[unrun]) - set(stage[~unrun]))].reset_index(drop=True)


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
                found = {c: row[c].mean for c in columns if isinstance(row.get(c), Cell)}
                bold |= {(index, c) for c in _best(found)}
        return bold
    quantized = table[table["bits"] != FP_BITS]
    metric_columns = [c for c in table.columns if c not in KEYS]
    keys = [k for k in ("model", "variant", "bits") if k in table.columns]
    for _, group in quantized.groupby(keys):
        for column in metric_columns:
            found = {i: v.mean for i, v in group[column].items() if isinstance(v, Cell)}
            bold |= {(i, column) for i in _best(found)}
    return bold


def _best(found: dict) -> list:
    """Keys of the highest value (all of them on a tie); none where fewer than two
    results compete."""
    if len(found) < 2:
        return []
    top = max(found.values())
    return [k for k, v in found.items() if v == top]


def _format(value: object, column: str) -> str:
    if not isinstance(value, Cell):
        return str(value)
    if column.endswith(DELTA):
        return value.format(2, signed=True)
    return value.format(4 if column.endswith("SSIM") else 2)


def _formatted(
    table: pd.DataFrame, escape: Callable[[str], str], bold: Callable[[str], str]
) -> pd.DataFrame:
    """The table as text: each cell formatted and escaped, the best results wrapped by
    ``bold``, the column names escaped."""
    best = _bold_cells(table)
    rows = []
    for index, row in table.iterrows():
        texts = {column: escape(_format(row[column], column)) for column in table.columns}
        rows.append([bold(t) if (index, c) in best else t for c, t in texts.items()])
    return pd.DataFrame(rows, columns=[escape(c) for c in table.columns], dtype=str)


def markdown_text(frame: pd.DataFrame) -> str:
    """A frame of text as a Markdown (pipe) table, cells as they are but for ``|``,
    escaped (``max |Δ output|``)."""

    def escape(text: object) -> str:
        return str(text).replace("|", "\\|")

    escaped = frame.rename(columns=escape).map(escape)
    return escaped.to_markdown(index=False, disable_numparse=True) + "\n"


def to_markdown(table: pd.DataFrame) -> str:
    return markdown_text(_formatted(table, str, lambda text: f"**{text}**"))


def _latex_escape(text: str) -> str:
    text = text.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")
    return text.replace(DELTA, r"$\Delta$").replace("±", r"$\pm$")


def to_latex(table: pd.DataFrame) -> str:
    """A booktabs table (``\\toprule``, ``\\midrule``, ``\\bottomrule``), by pandas'
    Styler."""
    frame = _formatted(table, _latex_escape, lambda text: rf"\textbf{{{text}}}")
    spec = "l" + "r" * (len(table.columns) - 1)
    return frame.style.hide(axis="index").to_latex(column_format=spec, hrules=True)


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


def seeds_table(results: list[Result]) -> pd.DataFrame:
    """The primary metric of every run seed by seed: one row per experiment, variant and
    stage (a variant's own runs, not the base's FP models it shares), one column per
    seed, then mean and sample standard deviation."""
    seeds = sorted({r.seed for r in results})
    rows = []
    for (_, variant), runs in by_experiment(results).items():
        head = first(runs)
        metric = primary_metric(head)
        for stage, found in runs.items():
            if any(r.shared for r in found.values()):
                continue
            value = Cell(tuple(found[s].metrics[metric] for s in sorted(found)))
            row = {"model": head.label, "variant": variant, "stage": Stage.parse(stage).display}
            row["metric"] = metric
            for seed in seeds:
                row[f"seed {seed}"] = found[seed].metrics[metric] if seed in found else math.nan
            rows.append(row | {"mean": value.mean, "std": value.std})
    return pd.DataFrame(rows)


def write_tables(results: list[Result], out: Path) -> dict[str, pd.DataFrame]:
    """Write one table per task as ``<task>.csv``, ``.md`` and ``.tex``, every measured
    value as ``runs.csv`` and each run's primary metric seed by seed as
    ``seeds.{csv,md}``."""
    out.mkdir(parents=True, exist_ok=True)
    tables = task_tables(results)
    for task, table in tables.items():
        to_csv_frame(table).to_csv(out / f"{task}.csv", index=False)
        (out / f"{task}.md").write_text(to_markdown(table))
        (out / f"{task}.tex").write_text(to_latex(table))
    runs_table(results).to_csv(out / "runs.csv", index=False)
    seeds = seeds_table(results)
    seeds.to_csv(out / "seeds.csv", index=False)
    (out / "seeds.md").write_text(seeds.to_markdown(index=False, floatfmt=".2f") + "\n")
    return tables
