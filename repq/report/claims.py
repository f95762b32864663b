"""The paper's claims that the configured runs can test, each with a verdict.

Every claim compares two stages of one experiment seed by seed (paired differences,
so the seed-to-seed spread of the FP model cancels), or one stage of two experiments
that differ only in one hyperparameter. Over the ``n`` seeds that have both runs, the
mean difference gets a two-sided 95% confidence interval ``mean ± t(0.975, df) se``.
Where the runs were evaluated item by item on the same ``N`` validation or test items
(``per_item`` of ``evaluation.json``), the interval counts both sources of error: the
seeds and the finite set of items, ``se² = s²_seed / n + s²_item / N`` (``s_item``: the
spread over the items of the per-item difference averaged over the seeds), with
Welch-Satterthwaite degrees of freedom; otherwise ``se = s_seed / √n`` and
``df = n - 1``. The verdict follows from the interval alone:

* a claim that one is *better* holds when the interval lies above 0 and is
  contradicted when it lies below 0;
* a claim that one *loses at most* ``m`` holds when the interval lies above ``-m``
  and is contradicted when it lies below ``-m``;
* a claim that two are *close* (within ``m``) holds when the interval lies inside
  ``[-m, m]`` and is contradicted when it lies outside it;
* otherwise, or with fewer than two seeds, it is ``not resolved``.

The margins ``m`` are fixed per task before any run (``MARGINS``): 1 point of top-1,
0.1 dB of PSNR.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
from scipy.stats import t as student_t

from repq.report.tables import (
    Result,
    Runs,
    by_experiment,
    first,
    item_values,
    markdown_text,
    primary_metric,
    values,
    variant_order,
)
from repq.vocab import BASE_VARIANT, Stage

HOLDS, CONTRADICTED, NOT_RESOLVED = "holds", "contradicted", "not resolved"
MARGINS = {"classification": (1.0, "point"), "superres": (0.1, "dB")}
"""The margin ``m`` of each task, and its unit (top-1 points, PSNR dB)."""
Verdict = Callable[[float, float, float], str]


def better(low: float, high: float, margin: float) -> str:
    if low > 0:
        return HOLDS
    return CONTRADICTED if high < 0 else NOT_RESOLVED


def loses_at_most(low: float, high: float, margin: float) -> str:
    if low > -margin:
        return HOLDS
    return CONTRADICTED if high < -margin else NOT_RESOLVED


def close(low: float, high: float, margin: float) -> str:
    if -margin < low and high < margin:
        return HOLDS
    return CONTRADICTED if high < -margin or low > margin else NOT_RESOLVED


def bound_distance(test: Verdict, mean: float, margin: float) -> float:
    """How far a mean lies from the bound its claim's verdict turns on: 0 for
    :func:`better`, ``-m`` for :func:`loses_at_most`, the nearer of ``±m`` for
    :func:`close` (NaN where the claim has no margin)."""
    if test is loses_at_most:
        return mean + margin
    if test is close:
        return margin - abs(mean)
    return mean


@dataclass(frozen=True)
class Claim:
    """``text``: the claim; ``a - b``: the difference it is about; ``verdict``: its test."""

    text: str
    a: Stage
    b: Stage
    verdict: Verdict


CLAIMS = (
    Claim(
        "8-bit RepQ loses at most {m} against FP", Stage.qat("repq", 8), Stage("fp"), loses_at_most
    ),
    Claim("4-bit RepQ is better than Merged", Stage.qat("repq", 4), Stage.qat("merged", 4), better),
    Claim(
        "4-bit RepQ-BNest is within {m} of RepQ", Stage.qat("bnest", 4), Stage.qat("repq", 4), close
    ),
    Claim(
        "8-bit RepQ-BNest is within {m} of RepQ", Stage.qat("bnest", 8), Stage.qat("repq", 8), close
    ),
)
LR_CLAIM = "8-bit Merged is better with the lower LR"


@dataclass(frozen=True)
class Interval:
    """Mean and two-sided 95% confidence interval of a paired difference.

    ``differences``: per seed. ``items``: per validation or test item, the difference
    averaged over the seeds (empty where the runs have no per-item values). With seeds
    and items both random, the mean's variance is ``σ²_seed/n + σ²_item/N +
    σ²_interaction/(nN)``; the two sample variances each hold the interaction term
    once, so their sum errs on the wide side."""

    differences: tuple[float, ...]
    items: tuple[float, ...] = ()

    @property
    def n(self) -> int:
        return len(self.differences)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.differences) if self.n else math.nan

    def _components(self) -> list[tuple[float, int]]:
        """``(variance of the mean, degrees of freedom)`` of each source of error."""
        found = [(statistics.variance(self.differences) / self.n, self.n - 1)]
        if len(self.items) > 1:
            found.append((statistics.variance(self.items) / len(self.items), len(self.items) - 1))
        return found

    @property
    def half_width(self) -> float:
        if self.n < 2:
            return math.nan
        parts = [(v, df) for v, df in self._components() if v > 0]
        variance = sum(v for v, _ in parts)
        if variance == 0:
            return 0.0
        df = variance**2 / sum(v**2 / df for v, df in parts)  # Welch-Satterthwaite
        return float(student_t.ppf(0.975, df)) * math.sqrt(variance)

    def verdict(self, test: Verdict, margin: float) -> str:
        if self.n < 2:
            return NOT_RESOLVED
        return test(self.mean - self.half_width, self.mean + self.half_width, margin)


def _item_means(a: dict[int, tuple], b: dict[int, tuple], seeds: list[int]) -> tuple:
    """Per item, ``a - b`` averaged over ``seeds``; empty unless every seed has the same
    number of items in both."""
    rows = [(a.get(s, ()), b.get(s, ())) for s in seeds]
    sizes = {len(x) for row in rows for x in row}
    if len(sizes) != 1 or 0 in sizes:
        return ()
    return tuple(statistics.fmean(x[i] - y[i] for x, y in rows) for i in range(len(rows[0][0])))


def paired(
    a: dict[int, float],
    b: dict[int, float],
    a_items: dict[int, tuple] | None = None,
    b_items: dict[int, tuple] | None = None,
) -> Interval:
    """``a - b`` over the seeds both have (``*_items``: seed -> per-item values)."""
    seeds = sorted(set(a) & set(b))
    items = _item_means(a_items or {}, b_items or {}, seeds) if seeds else ()
    return Interval(tuple(a[s] - b[s] for s in seeds), items)


def margin_of(task: str) -> tuple[float, str]:
    """The task's margin and how a claim names it; a task without one gets NaN, so no
    claim about a margin resolves for it."""
    if task not in MARGINS:
        return math.nan, "an unset margin"
    margin, unit = MARGINS[task]
    return margin, f"{margin:g} {unit}"


def _interval(a: tuple[Runs, Stage], b: tuple[Runs, Stage], metric: str) -> Interval:
    """:func:`paired` for stage ``a[1]`` of runs ``a[0]`` against ``b``, with items."""
    found = (values(*a, metric), values(*b, metric))
    return paired(*found, item_values(*a, metric), item_values(*b, metric))


COLUMNS = [
    "claim",
    "model",
    "variant",
    "difference",
    "metric",
    "n",
    "items",
    "mean",
    "ci_low",
    "ci_high",
    "per_seed",
    "seeds_needed",
    "verdict",
]


def _row(claim: str, head: Result, difference: str, metric: str, test, interval: Interval) -> dict:
    """One row of the claims table: the claim with its margin, the model and variant of
    ``head``, the interval, the differences seed by seed, the verdict."""
    margin, named = margin_of(head.task)
    low, high = interval.mean - interval.half_width, interval.mean + interval.half_width
    return {
        "claim": claim.format(m=named),
        "model": head.label,
        "variant": head.variant,
        "difference": difference,
        "metric": metric,
        "n": interval.n,
        "items": len(interval.items),
        "mean": interval.mean,
        "ci_low": low,
        "ci_high": high,
        "per_seed": " ".join(f"{d:+.2f}" for d in interval.differences),
        "seeds_needed": _seeds_needed(interval, bound_distance(test, interval.mean, margin)),
        "verdict": interval.verdict(test, margin),
    }


SEEDS_AT_MOST = 100


def _seeds_needed(interval: Interval, distance: float) -> float:
    """The seeds with which the interval would clear the claim's bound with 80% power,
    from the per-seed spread measured here (:func:`seeds_needed`; the items' error is
    left out, so it is a lower bound); NaN with fewer than two seeds or no margin."""
    if interval.n < 2 or math.isnan(distance):
        return math.nan
    return seeds_needed(statistics.stdev(interval.differences), distance, most=SEEDS_AT_MOST)


def stage_claims(results: list[Result]) -> list[dict]:
    """Every claim of ``CLAIMS`` that an experiment's variant has both runs for."""
    rows = []
    for runs in by_experiment(results).values():
        head = first(runs)
        metric = primary_metric(head)
        for claim in CLAIMS:
            interval = _interval((runs, claim.a), (runs, claim.b), metric)
            if interval.n:
                difference = f"{claim.a.display} - {claim.b.display}"
                rows.append(_row(claim.text, head, difference, metric, claim.verdict, interval))
    return rows


def _difference(runs: Runs, claim: Claim, metric: str) -> tuple[dict, dict]:
    """seed -> a claim's ``a - b`` in one experiment's variant, and seed -> the same per
    item (seeds whose two stages have items of one size)."""
    a, b = values(runs, claim.a, metric), values(runs, claim.b, metric)
    a_items, b_items = item_values(runs, claim.a, metric), item_values(runs, claim.b, metric)
    seeds = sorted(set(a) & set(b))
    items = {
        s: tuple(x - y for x, y in zip(a_items[s], b_items[s], strict=True))
        for s in seeds
        if s in a_items and s in b_items and len(a_items[s]) == len(b_items[s])
    }
    return {s: a[s] - b[s] for s in seeds}, items


RAISES, LOWERS = "raises", "lowers"
EFFECT_COLUMNS = [*COLUMNS[:-1], "effect"]


def variant_effects(results: list[Result]) -> pd.DataFrame:
    """How each variant moves each claim's difference against the base: seed by seed,
    the variant's ``a - b`` minus the base's (with items), its mean and 95% interval
    (as a claim's); ``raises`` when the interval lies above 0, ``lowers`` when below,
    else ``not resolved``. A lever closes a gap when it raises the difference."""
    grouped = by_experiment(results)
    effect = {HOLDS: RAISES, CONTRADICTED: LOWERS, NOT_RESOLVED: NOT_RESOLVED}
    rows = []
    for (experiment, variant), runs in grouped.items():
        base = grouped.get((experiment, BASE_VARIANT))
        if variant == BASE_VARIANT or base is None:
            continue
        head = first(runs)
        metric = primary_metric(head)
        for claim in CLAIMS:
            ours, theirs = _difference(runs, claim, metric), _difference(base, claim, metric)
            interval = paired(ours[0], theirs[0], ours[1], theirs[1])
            if interval.n:
                name = f"({claim.a.display} - {claim.b.display}) - the base's"
                row = _row(claim.text, head, name, metric, better, interval)
                row["effect"] = effect[row.pop("verdict")]
                rows.append(row)
    return pd.DataFrame(rows, columns=EFFECT_COLUMNS)


def effects_markdown(table: pd.DataFrame) -> str:
    """The variants' effects as Markdown."""
    return _markdown(table, "change of the difference (metric)", "effect", variants=True)


def _merged_lr_and_rest(config: dict) -> tuple[float | None, str]:
    """A run config's Merged 8-bit LR, and everything else but the seed and the variant's
    name, as text."""
    train = {k: v for k, v in config["train"].items() if k != "seed"}
    lr = dict(train.get("lr", {}))
    merged = lr.pop("merged_8bit", None)
    tracking = {k: v for k, v in config.get("tracking", {}).items() if k != "variant"}
    rest = {**config, "train": {**train, "lr": lr}, "tracking": tracking}
    return merged, json.dumps(rest, sort_keys=True)


Group = tuple[str, str]
"""``(experiment, variant)``."""


def _lr_variants(results: list[Result]) -> list[tuple[Group, Group]]:
    """``(lower, higher)`` pairs of experiments' variants whose 8-bit Merged runs differ
    only in the Merged 8-bit LR (read from each run's config)."""
    stage = str(Stage.qat("merged", 8))
    found: dict[Group, tuple[float | None, str]] = {}
    for r in results:
        if str(r.stage) == stage and (r.experiment, r.variant) not in found:
            found[(r.experiment, r.variant)] = _merged_lr_and_rest(r.config)
    return [
        (low, high)
        for low, (low_lr, low_rest) in found.items()
        for high, (high_lr, high_rest) in found.items()
        if low_rest == high_rest and None not in (low_lr, high_lr) and low_lr < high_lr
    ]


def _group_name(group: Group) -> str:
    experiment, variant = group
    return experiment if variant == BASE_VARIANT else f"{experiment}/{variant}"


def lr_claims(results: list[Result]) -> list[dict]:
    """The Merged 8-bit LR claim (S1) for every pair of experiments' variants configured
    for it."""
    grouped = by_experiment(results)
    stage = Stage.qat("merged", 8)
    rows = []
    for low, high in _lr_variants(results):
        head = first(grouped[low])
        metric = primary_metric(head)
        interval = _interval((grouped[low], stage), (grouped[high], stage), metric)
        if interval.n:
            difference = f"{_group_name(low)} - {_group_name(high)}"
            rows.append(_row(LR_CLAIM, head, difference, metric, better, interval))
    return rows


def claims_table(results: list[Result]) -> pd.DataFrame:
    """One row per testable claim, model and variant."""
    return pd.DataFrame(stage_claims(results) + lr_claims(results), columns=COLUMNS)


def to_markdown(table: pd.DataFrame) -> str:
    """The claims as Markdown (a variant column where the table holds more than one)."""
    variants = table["variant"].nunique() > 1
    return _markdown(table, "difference (metric)", "verdict", variants)


def _markdown(table: pd.DataFrame, difference: str, outcome: str, variants: bool) -> str:
    """Rows of the claims or effects table as Markdown: the ``difference`` column's
    header, the column that holds the outcome, and whether to show the variant."""
    rows = []
    for _, r in table.iterrows():
        ci = "—" if math.isnan(r["ci_low"]) else f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
        row = {"claim": r["claim"], "model": r["model"]}
        row |= {"variant": r["variant"]} if variants else {}
        row |= {
            difference: f"{r['difference']} ({r['metric']})",
            "seeds": str(r["n"]),
            "items": str(r["items"] or "—"),
            "mean": f"{r['mean']:+.2f}",
            "95% CI": ci,
            "per seed": r["per_seed"],
            outcome: f"**{r[outcome]}**",
        }
        rows.append(row)
    head = ["claim", "model", *(["variant"] if variants else []), difference]
    head += ["seeds", "items", "mean", "95% CI", "per seed", outcome]
    return markdown_text(pd.DataFrame(rows, columns=head, dtype=str))


def verdicts_table(claims: pd.DataFrame) -> pd.DataFrame:
    """Claim x variant at a glance: one row per claim and model, one column per variant
    (the base first), each cell the verdict with the mean difference."""
    order = variant_order(claims["variant"])
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for _, r in claims.iterrows():
        cell = f"{r['verdict']} ({r['mean']:+.2f})"
        rows.setdefault((r["claim"], r["model"]), {})[r["variant"]] = cell
    return pd.DataFrame(
        [
            {"claim": c, "model": m, **{v: found.get(v, "—") for v in order}}
            for (c, m), found in rows.items()
        ],
        columns=["claim", "model", *order],
    )


def planned_half_width(sd: float, n: int) -> float:
    """The expected half-width of the 95% interval of a mean over ``n`` seeds whose
    per-seed differences spread with standard deviation ``sd`` (seeds only)."""
    return float(student_t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def seeds_needed(sd: float, effect: float, power: float = 0.8, most: int = 1000) -> int:
    """The fewest seeds (at least 2) with which a paired difference of mean ``effect``
    and per-seed standard deviation ``sd`` gives a 95% interval that excludes 0 with
    probability ``power`` (``(t_0.975 + t_power) sd / sqrt(n) <= |effect|``); ``most``
    when not even that many do."""
    for n in range(2, most):
        quantiles = student_t.ppf(0.975, n - 1) + student_t.ppf(power, n - 1)
        if quantiles * sd / math.sqrt(n) <= abs(effect):
            return n
    return most
