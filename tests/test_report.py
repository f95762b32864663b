"""The report on hand-made results: cells, Δ, seeds, bold, n/a, no run, the formats,
the claims and the figure, each against numbers computed here by hand."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from runs import cells, write_export, write_run

from repq.report import write_report
from repq.report.claims import (
    CONTRADICTED,
    HOLDS,
    NOT_RESOLVED,
    Interval,
    _lr_variants,
    better,
    claims_table,
    close,
    effects_markdown,
    loses_at_most,
    variant_effects,
    verdicts_table,
)
from repq.report.claims import to_markdown as claims_markdown
from repq.report.figures import delta_bars, drop_figure
from repq.report.tables import (
    Cell,
    _latex_escape,
    collect,
    seeds_table,
    task_tables,
    to_csv_frame,
    to_latex,
    to_markdown,
)

# top-1 of RepVGG-A0 per seed: FP, FP-BNest and the quantized stages
A0 = {
    "fp": (70.0, 71.0, 72.0),
    "fp-bnest": (69.0, 70.5, 71.0),
    "ptq-8": (69.5, 70.0, 71.5),
    "qat-merged-8": (69.0, 70.2, 71.1),
    "qat-repq-8": (70.1, 71.0, 71.9),
    "qat-bnest-8": (69.2, 70.0, 71.2),
    "ptq-4": (8.0, 9.0, 10.0),
    "qat-merged-4": (60.0, 61.5, 62.0),
    "qat-repq-4": (64.0, 65.0, 66.5),
    "qat-bnest-4": (63.5, 64.5, 66.0),
}
SR = {  # ECBSR x2, PSNR on "a" and "b", one seed
    "fp": {"psnr/a": 34.0, "ssim/a": 0.91, "psnr/b": 30.0, "ssim/b": 0.85},
    "qat-merged-4": {"psnr/a": 33.5, "ssim/a": 0.89, "psnr/b": 29.7, "ssim/b": 0.83},
    "qat-repq-4": {"psnr/a": 33.7, "ssim/a": 0.90, "psnr/b": 29.9, "ssim/b": 0.84},
}


@pytest.fixture
def runs(tmp_path):
    for stage, values in A0.items():
        for seed, value in enumerate(values):
            write_run(tmp_path, "repvgg_a0", stage, {"top1": value}, seed=seed)
    for stage, metrics in SR.items():
        write_run(tmp_path, "ecbsr_x2", stage, metrics, "ecbsr", "superres", {"scale": 2})
    return tmp_path


def test_cells_are_means_and_sample_stds_over_seeds(runs):
    table = task_tables(collect(runs))["classification"].iloc[0]
    assert table["FP"].values == (70.0, 71.0, 72.0)
    assert table["FP"].mean == pytest.approx(71.0) and table["FP"].std == pytest.approx(1.0)
    repq4 = table["4-bit RepQ"]
    assert repq4.mean == pytest.approx(65.1666667) and repq4.n == 3
    deviations = (64.0 - 65.1666667, 65.0 - 65.1666667, 66.5 - 65.1666667)
    assert repq4.std == pytest.approx(math.sqrt(sum(d * d for d in deviations) / 2))


def test_deltas_are_paired_by_seed_and_from_the_fp_stage_a_method_starts_from(runs):
    row = task_tables(collect(runs))["classification"].iloc[0]
    assert row["4-bit RepQ Δ"].values == pytest.approx((-6.0, -6.0, -5.5))
    assert row["4-bit RepQ-BNest Δ"].values == pytest.approx((-5.5, -6.0, -5.0))  # FP-BNest
    assert row["8-bit PTQ Δ"].values == pytest.approx((-0.5, -1.0, -0.5))


def test_missing_runs_and_methods_that_do_not_apply(runs):
    superres = task_tables(collect(runs))["superres"]
    # no row has a PTQ or an 8-bit run: those stages are not configured, and left out
    assert list(superres["method"]) == ["FP", "Merged", "RepQ"]
    assert superres.iloc[1]["a PSNR"].mean == 33.5
    assert "RepQ-BNest" not in set(superres["method"])  # no BN
    repq4 = superres[(superres["method"] == "RepQ") & (superres["bits"] == 4)].iloc[0]
    assert repq4["a PSNR"].mean == 33.7 and repq4["b SSIM"].mean == 0.84
    assert "n/a" not in to_markdown(superres)
    # one experiment's PTQ run makes the stage configured: the other's says "no run"
    x4 = {"psnr/a": 30.0, "ssim/a": 0.8, "psnr/b": 27.0, "ssim/b": 0.7}
    write_run(runs, "ecbsr_x4", "ptq-4", x4, "ecbsr", "superres", {"scale": 4})
    superres = task_tables(collect(runs))["superres"]
    x2 = superres[superres["model"] == "ECBSR x2"]
    assert list(x2["method"]) == ["FP", "PTQ", "Merged", "RepQ"]
    assert x2.iloc[1]["a PSNR"] == "no run"


def test_columns_of_stages_no_row_has_a_run_of_are_left_out(tmp_path):
    for stage in ("fp", "qat-repq-4"):
        write_run(tmp_path, "repvgg_a0", stage, {"top1": 50.0})
    write_run(tmp_path, "ac_resnet18", "fp", {"top1": 60.0}, model="ac_resnet18")
    table = task_tables(collect(tmp_path))["classification"]
    assert list(table.columns) == ["model", "FP", "4-bit RepQ", "4-bit RepQ Δ"]
    ac = table[table["model"] == "AC-ResNet-18"].iloc[0]
    assert ac["4-bit RepQ"] == "no run"  # configured (another row has it)


def test_bold_marks_the_best_mean_per_bit_width(runs):
    markdown = to_markdown(task_tables(collect(runs))["classification"])
    header, row = cells(markdown)
    bold = {header[i] for i, cell in enumerate(row) if cell.startswith("**")}
    assert bold == {"8-bit RepQ", "4-bit RepQ"}
    shown = dict(zip(header, row, strict=True))
    assert shown["8-bit RepQ"] == "**71.00 ± 0.90**"  # two decimals
    assert shown["8-bit RepQ Δ"] == "+0.00 ± 0.10" and shown["4-bit RepQ Δ"] == "-5.83 ± 0.29"


def test_a_result_with_nothing_to_compete_with_is_not_bold(tmp_path):
    for stage, top1 in (("fp", 60.0), ("ptq-8", 59.0), ("ptq-4", 20.0), ("qat-repq-4", 50.0)):
        write_run(tmp_path, "repvgg_a0", stage, {"top1": top1})
    header, row = cells(to_markdown(task_tables(collect(tmp_path))["classification"]))
    bold = {header[i] for i, cell in enumerate(row) if cell.startswith("**")}
    assert bold == {"4-bit RepQ"}  # 8-bit PTQ stands alone at its bit width


def test_a_crowded_panel_slants_one_line_labels(tmp_path, monkeypatch):
    """Eight variants of one model: every group labelled on one line (model / variant),
    slanted so that neighbours do not overlap."""
    import matplotlib.figure

    variants = ["base", *(f"v{i}" for i in range(7))]
    for variant in variants:
        for stage, top1 in (("fp", 60.0), ("qat-merged-4", 55.0), ("qat-repq-4", 54.0)):
            write_run(tmp_path, "repvgg_a0", stage, {"top1": top1}, variant=variant)
    saved = []
    original = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        saved.append(fig)
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    drop_figure(collect(tmp_path), tmp_path / "drop")
    (ax,) = saved[0].axes
    labels = ax.get_xticklabels()
    assert [t.get_text() for t in labels] == ["RepVGG-A0"] + [f"RepVGG-A0 / v{i}" for i in range(7)]
    assert {t.get_rotation() for t in labels} == {45.0}


def test_latex_and_csv_hold_the_markdown_numbers(runs):
    table = task_tables(collect(runs))["classification"]
    latex = to_latex(table)
    assert r"\textbf{65.17 $\pm$ 1.26}" in latex and r"4-bit RepQ $\Delta$" in latex
    csv = to_csv_frame(table)
    assert csv.loc[0, "4-bit RepQ"] == pytest.approx(table.loc[0, "4-bit RepQ"].mean)
    assert csv.loc[0, "4-bit RepQ std"] == pytest.approx(table.loc[0, "4-bit RepQ"].std)
    assert csv.loc[0, "4-bit RepQ n"] == 3


def test_interval_arithmetic_against_hand_computed_values():
    interval = Interval((1.0, 2.0, 3.0))
    # mean 2, s = 1, t(0.975, 2) = 4.302653
    assert interval.mean == 2.0
    assert interval.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert Interval((5.0,)).verdict(better, 1.0) == NOT_RESOLVED
    assert math.isnan(Interval(()).mean) and math.isnan(Interval((5.0,)).half_width)


def test_the_interval_adds_the_error_of_the_finite_item_set():
    # seeds (1, 2, 3): s^2/n = 1/3; items (0, 4, 2, 2): s^2 = 8/3, s^2/N = 2/3; se^2 = 1
    # df = 1 / ((1/3)^2 / 2 + (2/3)^2 / 3) = 54/11; t(0.975, 54/11) = 2.584966
    interval = Interval((1.0, 2.0, 3.0), (0.0, 4.0, 2.0, 2.0))
    assert interval.mean == 2.0
    assert interval.half_width == pytest.approx(2.584966, rel=1e-6)
    # seeds that agree leave the items' error alone: se = sqrt(2/3), df = N - 1 = 3
    level = Interval((2.0, 2.0, 2.0), (0.0, 4.0, 2.0, 2.0))
    assert level.half_width == pytest.approx(3.182446 * math.sqrt(2 / 3), rel=1e-6)
    # the same seeds resolve the claim without the items and leave it open with them
    assert Interval((0.5, 0.6, 0.7)).verdict(better, 1.0) == HOLDS
    assert Interval((0.5, 0.6, 0.7), (-3.0, 4.8, 0.0, 0.6)).verdict(better, 1.0) == NOT_RESOLVED


def test_claims_pair_items_seed_by_seed_and_average_them_over_seeds(tmp_path):
    per_seed = {  # seed -> (FP items, 8-bit RepQ items): top-1 per image
        0: ([100.0, 0.0, 100.0, 100.0], [100.0, 0.0, 0.0, 100.0]),
        1: ([100.0, 100.0, 0.0, 100.0], [100.0, 100.0, 0.0, 0.0]),
    }
    for seed, (fp, repq) in per_seed.items():
        for stage, items in (("fp", fp), ("qat-repq-8", repq)):
            top1 = {"top1": sum(items) / len(items)}
            write_run(tmp_path, "a0", stage, top1, seed=seed, per_item={"top1": items})
    (row,) = claims_table(collect(tmp_path)).to_dict("records")
    # seeds: (-25, -25), no spread; items averaged over seeds: (0, 0, -50, -50)
    # s^2 = 2500/3 over N = 4, df 3: half width t(0.975, 3) * sqrt(2500/12)
    assert row["n"] == 2 and row["items"] == 4 and row["mean"] == pytest.approx(-25.0)
    half = 3.182446 * math.sqrt(2500 / 12)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((-25 - half, -25 + half), rel=1e-6)


def test_claims_ignore_items_that_do_not_pair(tmp_path):
    for seed, count in ((0, 3), (1, 4)):  # the two seeds' item sets differ in size
        for stage, value in (("fp", 50.0 + seed), ("qat-repq-8", 49.0 + seed)):
            items = [value] * count
            write_run(tmp_path, "a0", stage, {"top1": value}, seed=seed, per_item={"top1": items})
    (row,) = claims_table(collect(tmp_path)).to_dict("records")
    assert row["items"] == 0 and row["ci_low"] == row["ci_high"] == -1.0


def test_two_seeds_resolve_and_the_verdict_uses_both_ends():
    # mean 2.1, s = 0.1414, t(0.975, 1) = 12.7062: [0.83, 3.37]
    assert Interval((2.0, 2.2)).verdict(better, 1.0) == HOLDS
    # mean 2, half width 2.48: [-0.48, 4.48] straddles 0
    assert Interval((1.0, 2.0, 3.0)).verdict(better, 1.0) == NOT_RESOLVED
    assert Interval((-3.0, -2.0, -1.0)).verdict(better, 1.0) == NOT_RESOLVED


@pytest.mark.parametrize(
    ("test", "low", "high", "margin", "verdict"),
    [
        (better, 0.1, 2.0, 1.0, HOLDS),
        (better, -0.1, 2.0, 1.0, NOT_RESOLVED),
        (better, -2.0, -0.1, 1.0, CONTRADICTED),
        (loses_at_most, -0.9, 0.5, 1.0, HOLDS),
        (loses_at_most, -1.1, 0.5, 1.0, NOT_RESOLVED),
        (loses_at_most, -3.0, -1.2, 1.0, CONTRADICTED),
        (close, -0.5, 0.9, 1.0, HOLDS),
        (close, -0.5, 1.5, 1.0, NOT_RESOLVED),
        (close, 1.2, 3.0, 1.0, CONTRADICTED),
        (close, -3.0, -1.2, 1.0, CONTRADICTED),
        # an interval that touches the bound is not strictly on one side of it
        (better, 0.0, 2.0, 1.0, NOT_RESOLVED),
        (better, -2.0, 0.0, 1.0, NOT_RESOLVED),
        (better, -2.0, 0.5, 1.0, NOT_RESOLVED),
        (loses_at_most, -1.0, 0.5, 1.0, NOT_RESOLVED),
        (loses_at_most, -3.0, -1.0, 1.0, NOT_RESOLVED),
        (close, -1.0, 0.5, 1.0, NOT_RESOLVED),
        (close, -0.5, 1.0, 1.0, NOT_RESOLVED),
        (close, -3.0, -1.0, 1.0, NOT_RESOLVED),
        (close, -3.0, 0.5, 1.0, NOT_RESOLVED),
        (close, 1.0, 3.0, 1.0, NOT_RESOLVED),
        # a margin-free claim ignores the margin; a margin claim without one never resolves
        (better, 0.5, 2.0, math.nan, HOLDS),
        (loses_at_most, -0.5, 0.5, math.nan, NOT_RESOLVED),
    ],
)
def test_verdicts_follow_the_interval(test, low, high, margin, verdict):
    assert test(low, high, margin) == verdict


def test_claims_on_synthetic_results(runs):
    table = claims_table(collect(runs)).set_index(["model", "claim"])
    a0 = table.loc["RepVGG-A0"]
    # 8-bit RepQ - FP = (0.1, 0.0, -0.1): CI +-0.25, inside (-1, inf)
    assert a0.loc["8-bit RepQ loses at most 1 point against FP", "verdict"] == HOLDS
    # 4-bit RepQ - Merged = (4.0, 3.5, 4.5): CI 4 +- 1.24
    better_row = a0.loc["4-bit RepQ is better than Merged"]
    assert better_row["mean"] == pytest.approx(4.0) and better_row["verdict"] == HOLDS
    assert better_row["ci_low"] == pytest.approx(4.0 - 4.302653 * 0.5 / math.sqrt(3), rel=1e-6)
    assert better_row["ci_high"] == pytest.approx(4.0 + 4.302653 * 0.5 / math.sqrt(3), rel=1e-6)
    assert better_row["difference"] == "4-bit RepQ - 4-bit Merged"
    assert better_row["metric"] == "top1" and better_row["n"] == 3
    # seeds for 80% power against the claim's bound (0): SD 0.5, distance 4: n = 3 gives
    # (4.303 + 1.061) * 0.5 / sqrt(3) = 1.55 <= 4, n = 2 gives 4.98 > 4
    assert better_row["seeds_needed"] == 3
    # against FP the bound is -1: SD 0.1, distance 1: n = 2 gives 14.08 * 0.1 / 1.41 <= 1
    assert a0.loc["8-bit RepQ loses at most 1 point against FP", "seeds_needed"] == 2
    # 4-bit BNest - RepQ = (-0.5, -0.5, -0.5): no spread, inside (-1, 1)
    assert a0.loc["4-bit RepQ-BNest is within 1 point of RepQ", "verdict"] == HOLDS
    # one seed of ECBSR: nothing resolved
    sr = table.loc["ECBSR x2"]
    assert set(sr["verdict"]) == {NOT_RESOLVED} and set(sr["n"]) == {1}


def test_the_lr_claim_compares_experiments_that_differ_only_in_that_lr(tmp_path):
    lr = {"fp": 0.1, "quantized": 0.01}
    for seed, (low, high) in enumerate([(69.2, 68.4), (69.0, 68.3), (69.4, 68.5)]):
        for name, value, merged in (("a0", low, 0.001), ("a0_lr", high, 0.01)):
            train = {"lr": {**lr, "merged_8bit": merged}}
            write_run(tmp_path, name, "qat-merged-8", {"top1": value}, seed=seed, train=train)
    write_run(tmp_path, "other", "qat-merged-8", {"top1": 1.0}, train={"lr": lr})
    # differs in the epochs too: not an LR variant of a0
    train = {"lr": {**lr, "merged_8bit": 0.01}, "epochs": 9}
    write_run(tmp_path, "a0_long", "qat-merged-8", {"top1": 1.0}, train=train)
    table = claims_table(collect(tmp_path))
    (row,) = table[table["claim"] == "8-bit Merged is better with the lower LR"].to_dict("records")
    assert row["difference"] == "a0 - a0_lr" and row["mean"] == pytest.approx(0.8)
    assert row["verdict"] == HOLDS
    assert (row["model"], row["metric"]) == ("RepVGG-A0", "top1")


def test_lr_variants_are_found_whatever_the_seed_and_key_order(tmp_path):
    lr = {"fp": 0.1, "quantized": 0.01}
    for seed, name, merged in ((0, "a0", 0.001), (1, "a0", 0.001), (1, "a0_lr", 0.01)):
        train = {"lr": {**lr, "merged_8bit": merged}}
        write_run(tmp_path, name, "qat-merged-8", {"top1": 70.0}, seed=seed, train=train)
    config = tmp_path / "a0_lr" / "base" / "seed1" / "qat-merged-8" / "config.json"
    content = json.loads(config.read_text())
    config.write_text(json.dumps(dict(reversed(content.items()))))
    assert _lr_variants(collect(tmp_path)) == [(("a0", "base"), ("a0_lr", "base"))]


def test_the_figure_plots_the_tables_deltas(runs):
    write_report(runs, runs / "tables")
    table = task_tables(collect(runs))["classification"]
    means, spreads, metric = delta_bars(collect(runs))["classification"]
    assert metric == "top1"
    for stage in means.columns:
        cell = table.loc[0, f"{stage} Δ"]
        assert means.loc["RepVGG-A0", stage] == pytest.approx(cell.mean)
        assert spreads.loc["RepVGG-A0", stage] == pytest.approx(cell.std)
    assert set(means.columns) == {c.removesuffix(" Δ") for c in table.columns if c.endswith("Δ")}


def test_the_drawn_bars_are_the_deltas(runs, monkeypatch):
    """Read the heights back from the matplotlib axes that drop_figure draws."""
    import matplotlib.axes

    drawn = []
    original = matplotlib.axes.Axes.bar

    def spy(self, x, height, *args, **kwargs):
        drawn.append((kwargs.get("label"), list(height)))
        return original(self, x, height, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", spy)
    write_report(runs, runs / "tables")
    heights = dict(drawn[:8])  # the classification panel comes first
    table = task_tables(collect(runs))["classification"]
    assert heights["4-bit RepQ"][0] == pytest.approx(table.loc[0, "4-bit RepQ Δ"].mean)
    assert heights["8-bit PTQ"][0] == pytest.approx(table.loc[0, "8-bit PTQ Δ"].mean)
    # classification: 2 x (PTQ + 3 methods); SR: the 2 stages it ran
    assert len(drawn) == 8 + 2
    assert (runs / "tables" / "drop.png").stat().st_size > 10_000


def test_every_cell_equals_its_evaluation(runs):
    table = to_csv_frame(task_tables(collect(runs))["classification"])
    for stage, values in A0.items():
        column = {"fp": "FP", "fp-bnest": "FP-BNest"}.get(stage) or _display(stage)
        assert table.loc[0, column] == pytest.approx(sum(values) / 3), stage
    written = pd.read_csv(write_report(runs, runs / "t")[0].parent / "runs.csv")
    assert len(written) == 3 * len(A0) + 4 * len(SR)


def _display(stage: str) -> str:
    from repq.vocab import Stage

    return Stage.parse(stage).display


def test_cell_formats():
    assert Cell((1.234,)).format(2) == "1.23"
    assert Cell((1.0, 2.0)).format(2, signed=True) == "+1.50 ± 0.71"


@pytest.mark.parametrize("trains", [True, False])
def test_the_curves_plot_the_history(tmp_path, monkeypatch, trains):
    """Read the plotted lines back: loss (when the run trained) and the metric per epoch."""
    import matplotlib.axes

    from repq.report.figures import curve_figure

    drawn = []
    original = matplotlib.axes.Axes.plot

    def spy(self, x, y, *args, **kwargs):
        drawn.append((self, list(x), list(y)))
        return original(self, x, y, *args, **kwargs)

    history = pd.DataFrame({"epoch": [0, 1, 2], "top1": [10.0, 20.0, 25.0]})
    if trains:
        history["train_loss"] = [2.0, 1.5, 1.2]
    history.to_csv(tmp_path / "history.csv", index=False)
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    curve_figure(tmp_path / "history.csv", tmp_path / "curves.png", "a0/fp", "top1")
    lines = [(x, y) for _, x, y in drawn]
    expected = [([0, 1, 2], [2.0, 1.5, 1.2])] if trains else []
    assert lines == [*expected, ([0, 1, 2], [10.0, 20.0, 25.0])]
    left, right = drawn[-1][0].figure.axes
    assert (left.get_xlabel(), left.get_ylabel()) == ("epoch", "train loss")
    assert (right.get_xlabel(), right.get_ylabel()) == ("epoch", "top1")
    axes = right
    assert axes.figure._suptitle.get_text() == "a0/fp"
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_metric_curve_joins_the_validated_epochs(tmp_path, monkeypatch):
    """``train.val_every: 2`` leaves the metric empty on the epochs between validations;
    a line through NaN would draw isolated points, so the curve joins the validated ones."""
    import matplotlib.axes

    from repq.report.figures import curve_figure

    drawn = []
    original = matplotlib.axes.Axes.plot

    def spy(self, x, y, *args, **kwargs):
        drawn.append((list(x), list(y)))
        return original(self, x, y, *args, **kwargs)

    (tmp_path / "history.csv").write_text(
        "epoch,train_loss,top1\n0,2.0,\n1,1.5,20.0\n2,1.4,\n3,1.2,25.0\n"
    )
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    curve_figure(tmp_path / "history.csv", tmp_path / "curves.png", "a0/fp", "top1")
    assert drawn == [([0, 1, 2, 3], [2.0, 1.5, 1.4, 1.2]), ([1, 3], [20.0, 25.0])]


def test_a_task_without_a_margin_resolves_no_margin_claim(tmp_path):
    for seed, (fp, repq) in enumerate([(50.0, 49.9), (51.0, 51.0), (52.0, 52.1)]):
        for stage, value in (("fp", fp), ("qat-repq-8", repq)):
            write_run(tmp_path, "d", stage, {"miou": value}, "seg", "segmentation", seed=seed)
    (row,) = claims_table(collect(tmp_path)).to_dict("records")
    assert row["claim"] == "8-bit RepQ loses at most an unset margin against FP"
    assert row["verdict"] == NOT_RESOLVED and row["n"] == 3


def test_no_claim_gives_an_empty_table_with_the_columns(tmp_path):
    write_run(tmp_path, "a0", "fp", {"top1": 70.0})
    table = claims_table(collect(tmp_path))
    assert table.empty
    assert list(table.columns) == [
        *("claim", "model", "variant", "difference", "metric", "n", "items", "mean"),
        *("ci_low", "ci_high", "per_seed", "seeds_needed", "verdict"),
    ]


def _claim_row(claim: str, variant: str, **values) -> dict:
    row = {
        "claim": claim,
        "model": "M",
        "variant": variant,
        "difference": "a - b",
        "metric": "top1",
        "n": 3,
        "items": 1200,
        "mean": 1.234,
        "ci_low": 0.5,
        "ci_high": 1.968,
        "per_seed": "+1.00 +1.20 +1.50",
        "verdict": HOLDS,
    }
    return row | values


def test_the_claims_markdown():
    one_seed = {"difference": "a - c", "n": 1, "items": 0, "mean": -0.5, "per_seed": "-0.50"}
    unresolved = {"ci_low": math.nan, "ci_high": math.nan, "verdict": NOT_RESOLVED}
    rows = [_claim_row("c1", "base"), _claim_row("c2", "base", **one_seed, **unresolved)]
    assert cells(claims_markdown(pd.DataFrame(rows))) == [
        ["claim", "model", "difference (metric)", "seeds", "items", "mean", "95% CI",
         "per seed", "verdict"],
        ["c1", "M", "a - b (top1)", "3", "1200", "+1.23", "[+0.50, +1.97]",
         "+1.00 +1.20 +1.50", "**holds**"],
        ["c2", "M", "a - c (top1)", "1", "—", "-0.50", "—", "-0.50", "**not resolved**"],
    ]  # fmt: skip
    # two variants: a variant column after the model
    rows = [_claim_row("c1", "base"), _claim_row("c1", "lr_x3", verdict=CONTRADICTED)]
    header, _, variant = cells(claims_markdown(pd.DataFrame(rows)))
    assert header[:4] == ["claim", "model", "variant", "difference (metric)"]
    assert variant[:4] == ["c1", "M", "lr_x3", "a - b (top1)"]
    assert variant[-1] == "**contradicted**"


def test_the_verdicts_put_each_variant_beside_the_base():
    rows = [
        _claim_row("c1", "width1", verdict=CONTRADICTED, mean=-2.0),
        _claim_row("c1", "base", mean=1.5),
        _claim_row("c2", "base", verdict=NOT_RESOLVED, mean=0.25),
    ]
    table = verdicts_table(pd.DataFrame(rows))
    assert list(table.columns) == ["claim", "model", "base", "width1"]
    assert table.to_dict("records") == [
        {"claim": "c1", "model": "M", "base": "holds (+1.50)", "width1": "contradicted (-2.00)"},
        {"claim": "c2", "model": "M", "base": "not resolved (+0.25)", "width1": "—"},
    ]


def test_the_written_report_files(runs):
    out = runs / "nested" / "tables"  # parents made; a second write overwrites
    write_export(runs, "repvgg_a0", 0, {
        "model": "repvgg_a0", "stage": "qat-repq-4", "bytes": 250, "fp32_bytes": 1000,
        "weight_codes_equal": True, "layers": {"INT4": 3},
    })  # fmt: skip
    write_report(runs, out)
    written = write_report(runs, out)
    tasks = ("classification", "superres")
    expected = {f"{t}.{ext}" for t in tasks for ext in ("md", "csv", "tex")}
    expected |= {"claims.md", "claims.csv", "runs.csv", "drop.png", "drop.svg"}
    expected |= {"seeds.md", "seeds.csv", "verdicts.md", "verdicts.csv"}
    expected |= {"effects.md", "effects.csv"}
    expected |= {"deployment.md", "deployment.csv"}
    assert {p.name for p in written} == expected
    assert ["RepVGG-A0", "4-bit RepQ"] in [
        r[:2] for r in cells((out / "deployment.md").read_text())
    ]
    results = collect(runs)
    claims = claims_table(results)
    assert (out / "claims.md").read_text() == claims_markdown(claims)
    read = pd.read_csv(out / "claims.csv")
    assert list(read.columns) == list(claims.columns)
    assert list(read["verdict"]) == list(claims["verdict"])
    tables = task_tables(results)
    for task in tasks:
        assert (out / f"{task}.md").read_text() == to_markdown(tables[task])
        assert (out / f"{task}.tex").read_text() == to_latex(tables[task])
        assert list(pd.read_csv(out / f"{task}.csv").columns) == list(
            to_csv_frame(tables[task]).columns
        )
    values = pd.read_csv(out / "runs.csv")
    columns = ["experiment", "variant", "model", "seed", "stage", "metric", "value"]
    assert list(values.columns) == columns
    row = values[(values["stage"] == "qat-repq-4") & (values["seed"] == 2)].iloc[0]
    assert (row["experiment"], row["model"], row["metric"]) == ("repvgg_a0", "RepVGG-A0", "top1")
    assert row["value"] == A0["qat-repq-4"][2]


def test_the_latex_layout(runs):
    table = task_tables(collect(runs))["superres"]
    lines = to_latex(table).split("\n")
    n = len(table.columns)
    assert lines[:2] == ["\\begin{tabular}{l" + "r" * (n - 1) + "}", "\\toprule"]
    assert lines[2] == " & ".join(table.columns) + " \\\\"
    assert lines[3] == "\\midrule"
    body = lines[4:-3]
    assert len(body) == len(table) and all(r.endswith(" \\\\") for r in body)
    assert all(len(r.removesuffix(" \\\\").split(" & ")) == n for r in body)
    assert lines[-3:] == ["\\bottomrule", "\\end{tabular}", ""]


@pytest.mark.parametrize(
    ("text", "latex"),
    [("a_b", "a\\_b"), ("top-1 %", "top-1 \\%"), ("A & B", "A \\& B"), ("Δ ±", "$\\Delta$ $\\pm$")],
)
def test_latex_escapes(text, latex):
    assert _latex_escape(text) == latex


def test_what_the_figure_shows_a_reader(runs, monkeypatch):
    """Per panel: its task's title, the metric on the y axis, a zero line, the models on
    the x axis, each model's bars side by side inside its slot, error bars over seeds,
    one colour per method at every bit width (PTQ grey) and hatching below 8 bits."""
    import matplotlib.axes

    bars = []
    original = matplotlib.axes.Axes.bar

    def spy(self, x, height, width, *args, **kwargs):
        bars.append((self, list(x), width, kwargs))
        return original(self, x, height, width, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", spy)
    write_report(runs, runs / "tables")
    axes = list(dict.fromkeys(ax for ax, *_ in bars))
    assert [ax.get_title() for ax in axes] == ["Classification", "Super-resolution"]
    assert "top1" in axes[0].get_ylabel()
    assert "psnr/a" in axes[1].get_ylabel()
    for ax in axes:
        assert [t.get_text() for t in ax.get_xticklabels()] in (["RepVGG-A0"], ["ECBSR x2"])
        assert [0, 0] in [list(line.get_ydata()) for line in ax.get_lines()]
        assert ax.get_legend() is not None
    classification = [b for b in bars if b[0] is axes[0]]
    lefts = [x[0] - width / 2 for _, x, width, _ in classification]
    rights = [x[0] + width / 2 for _, x, width, _ in classification]
    assert min(lefts) == pytest.approx(-0.4) and max(rights) == pytest.approx(0.4)
    assert all(r <= nxt + 1e-9 for r, nxt in zip(rights, lefts[1:], strict=False))
    style = {kw["label"]: kw for *_, kw in classification}
    assert (
        style["8-bit RepQ"]["color"]
        == style["4-bit RepQ"]["color"]
        != style["8-bit Merged"]["color"]
    )
    assert style["8-bit PTQ"]["color"] == style["4-bit PTQ"]["color"] == "0.6"
    assert [style[f"{b}-bit RepQ"]["hatch"] for b in (8, 4)] == ["", "//"]
    spread = task_tables(collect(runs))["classification"].loc[0, "4-bit RepQ Δ"].std
    assert list(style["4-bit RepQ"]["yerr"]) == [pytest.approx(spread)] and spread > 0


def test_the_markdown_layout_and_ssim_digits(runs):
    table = task_tables(collect(runs))["superres"]
    text = to_markdown(table)
    lines = text.split("\n")
    assert lines[1].startswith("|:---") and lines[1].count("|") == len(table.columns) + 1
    assert lines[-1] == "" and len(lines) == 2 + len(table) + 1
    rows = cells(text)
    assert rows[0] == list(table.columns)
    assert rows[1] == ["ECBSR x2", "FP", "32", "34.00", "0.9100", "30.00", "0.8500"]


def test_a_model_without_bn_shows_n_a_where_bnest_does_not_apply(tmp_path):
    """The classification (wide) layout of a model without BN: FP-BNest and RepQ-BNest
    and its Δ are n/a, while the stages that apply have their values."""
    write_run(tmp_path, "sr_as_cls", "fp", {"top1": 50.0}, model="ecbsr")
    write_run(tmp_path, "sr_as_cls", "qat-repq-8", {"top1": 49.0}, model="ecbsr")
    (row,) = task_tables(collect(tmp_path))["classification"].to_dict("records")
    assert next(iter(row)) == "model" and row["model"] == "ECBSR"
    assert row["FP-BNest"] == row["8-bit RepQ-BNest"] == row["8-bit RepQ-BNest Δ"] == "n/a"
    assert row["8-bit RepQ Δ"].values == (-1.0,) and "8-bit Merged" not in row  # not run


def test_a_metric_without_a_test_set_keeps_its_name(tmp_path):
    """The long layout (a task the report does not know) names ``psnr/a`` "a PSNR" and a
    metric without a test set by its own name."""
    write_run(tmp_path, "x", "fp", {"loss": 0.5, "psnr/a": 30.0}, task="denoise", model="ecbsr")
    table = task_tables(collect(tmp_path))["denoise"]
    assert {"loss", "a PSNR"} <= set(table.columns)
    assert table.iloc[0]["loss"].mean == 0.5


def test_super_resolution_bold_marks_the_best_of_each_bit_width(runs):
    def bold_count(rows: list[list[str]], method: str, bits: str) -> int:
        (row,) = [r for r in rows if r[1:3] == [method, bits]]
        return sum(cell.startswith("**") for cell in row)

    rows = cells(to_markdown(task_tables(collect(runs))["superres"]))
    # 4 bits: RepQ beats Merged on all four columns; FP is never bold
    assert bold_count(rows, "RepQ", "4") == 4 and bold_count(rows, "Merged", "4") == 0
    assert bold_count(rows, "FP", "32") == 0
    write_run(runs, "ecbsr_x2", "qat-merged-8", SR["qat-merged-4"], "ecbsr", "superres")
    rows = cells(to_markdown(task_tables(collect(runs))["superres"]))
    # the only 8-bit run competes with nothing (not bold), and 4 bits keeps its own marks
    assert bold_count(rows, "Merged", "8") == 0 and bold_count(rows, "RepQ", "4") == 4


def test_latex_rows_separate_cells_with_ampersands(runs):
    latex = to_latex(task_tables(collect(runs))["superres"])
    (fp_row,) = [line for line in latex.splitlines() if " & FP & " in line]
    assert fp_row.endswith(r" \\") and fp_row.count(" & ") == fp_row.count("&") == 6


def test_the_csv_frame_gives_numbers_and_seed_counts(runs):
    x4 = {"psnr/a": 30.0, "ssim/a": 0.8, "psnr/b": 27.0, "ssim/b": 0.7}
    write_run(runs, "ecbsr_x4", "ptq-4", x4, "ecbsr", "superres", {"scale": 4})
    frame = to_csv_frame(task_tables(collect(runs))["superres"])
    assert frame["method"].tolist()[:2] == ["FP", "PTQ"] and frame["bits"].tolist()[0] == 32
    assert frame["a PSNR"].iloc[0] == 34.0 and frame["a PSNR n"].iloc[0] == 1
    assert frame["a PSNR n"].iloc[1] == 0  # "no run": no seed
    assert frame["a PSNR"].iloc[1] == "no run"


def test_an_interval_counts_two_items_and_refuses_none_of_one():
    """Two items: their variance enters the interval; one item: no item term."""
    seeds = Interval((1.0, 2.0, 3.0))
    two = Interval((1.0, 2.0, 3.0), (0.0, 4.0))
    one = Interval((1.0, 2.0, 3.0), (5.0,))
    variance = 1.0 / 3 + 8.0 / 2  # s^2/n of the seeds (1.0) and of the items (8.0)
    df = variance**2 / ((1.0 / 3) ** 2 / 2 + (8.0 / 2) ** 2 / 1)
    from scipy.stats import t as student_t

    assert two.half_width == pytest.approx(student_t.ppf(0.975, df) * math.sqrt(variance))
    assert (
        one.half_width
        == seeds.half_width
        == pytest.approx(student_t.ppf(0.975, 2) * math.sqrt(1.0 / 3))
    )


def test_one_item_per_seed_still_pairs():
    from repq.report.claims import _item_means

    assert _item_means({0: (1.0,), 1: (3.0,)}, {0: (0.0,), 1: (1.0,)}, [0, 1]) == (1.5,)
    assert _item_means({0: (1.0,)}, {0: (0.0, 1.0)}, [0]) == ()  # different counts


def test_a_task_the_vocabulary_does_not_know_gets_its_own_panel(tmp_path):
    write_run(tmp_path, "x", "fp", {"loss": 0.5}, task="denoise", model="ecbsr")
    write_run(tmp_path, "x", "qat-repq-8", {"loss": 0.4}, task="denoise", model="ecbsr")
    panels = delta_bars(collect(tmp_path))
    assert list(panels) == ["denoise"]
    assert drop_figure(collect(tmp_path), tmp_path / "drop")  # titled by the task's name


def test_the_power_calculation_against_hand_computed_values():
    from repq.report.claims import bound_distance, planned_half_width, seeds_needed

    assert bound_distance(better, -2.0, 1.0) == -2.0
    assert bound_distance(loses_at_most, -0.25, 1.0) == 0.75
    assert bound_distance(close, -0.25, 1.0) == 0.75 and bound_distance(close, 1.5, 1.0) == -0.5

    # t(0.975, 4) = 2.776445: five seeds of SD 1.1
    assert planned_half_width(1.1, 5) == pytest.approx(2.776445 * 1.1 / math.sqrt(5), rel=1e-6)
    # effect 2.4, SD 1.1: n = 4 gives (3.182 + 0.978) * 0.55 = 2.29 <= 2.4; n = 3 gives
    # (4.303 + 1.061) * 0.635 = 3.41 > 2.4
    assert seeds_needed(1.1, -2.4) == 4
    assert seeds_needed(1.1, 0.5) > seeds_needed(1.1, 1.0) > seeds_needed(1.1, 2.0)
    assert seeds_needed(1.0, 0.0, most=50) == 50


def test_a_quantized_variant_shows_the_base_fp_models_of_its_own_seeds(tmp_path):
    """A variant that starts from the base's FP models shows them in its rows (its Δ is
    paired with them), for the seeds it has; its own runs alone are in the seeds table."""
    for seed, (fp, repq, lr) in enumerate([(70.0, 60.0, 62.0), (72.0, 61.0, 64.0)]):
        write_run(tmp_path, "a0", "fp", {"top1": fp}, seed=seed)
        write_run(tmp_path, "a0", "qat-repq-4", {"top1": repq}, seed=seed)
        write_run(tmp_path, "a0", "qat-repq-4", {"top1": lr}, seed=seed, variant="lr_x3")
    write_run(tmp_path, "a0", "fp", {"top1": 71.0}, seed=2)  # no lr_x3 run of seed 2
    write_run(tmp_path, "a0", "qat-repq-4", {"top1": 9.0}, seed=5, variant="lr_x3")  # no base
    results = collect(tmp_path)
    table = task_tables(results)["classification"]
    assert list(table["variant"]) == ["base", "lr_x3"]
    variant = table.iloc[1]
    assert variant["FP"].values == (70.0, 72.0)  # the base's, at lr_x3's seeds 0 and 1
    assert variant["4-bit RepQ Δ"].values == (-8.0, -8.0)  # seed 5 has no FP to pair with
    seeds = seeds_table(results)
    assert list(zip(seeds["variant"], seeds["stage"], strict=True)) == [
        ("base", "FP"), ("base", "4-bit RepQ"), ("lr_x3", "4-bit RepQ"),
    ]  # fmt: skip
    assert seeds.iloc[2]["seed 5"] == 9.0 and math.isnan(seeds.iloc[0]["seed 5"])
    assert seeds.iloc[0]["mean"] == pytest.approx(71.0)


def test_a_variants_effect_is_its_difference_minus_the_bases_seed_by_seed(tmp_path):
    # base: RepQ - Merged = (-3, -2, -4); lever: (+1, +0.5, +1.5): per seed +4, +2.5, +5.5
    base = [(70.0, 73.0), (71.0, 73.0), (69.0, 73.0)]
    lever = [(74.0, 73.0), (73.5, 73.0), (75.0, 73.5)]
    for variant, pairs in (("base", base), ("lever", lever)):
        for seed, (repq, merged) in enumerate(pairs):
            for stage, value in (("qat-repq-4", repq), ("qat-merged-4", merged)):
                write_run(tmp_path, "a0", stage, {"top1": value}, seed=seed, variant=variant)
    (row,) = variant_effects(collect(tmp_path)).to_dict("records")
    assert (row["variant"], row["claim"]) == ("lever", "4-bit RepQ is better than Merged")
    assert row["per_seed"] == "+4.00 +2.50 +5.50" and row["mean"] == pytest.approx(4.0)
    half = 4.302653 * 1.5 / math.sqrt(3)  # s = 1.5, t(0.975, 2)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((4.0 - half, 4.0 + half), rel=1e-6)
    assert row["effect"] == "raises"  # [+0.27, +7.73]
    rows = cells(effects_markdown(variant_effects(collect(tmp_path))))
    assert rows[1][-1] == "**raises**" and rows[1][2] == "lever"
