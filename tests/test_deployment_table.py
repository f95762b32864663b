"""The deployed models' table (``tables/deployment.md``) from hand-made export summaries."""

from __future__ import annotations

import pandas as pd
import pytest
from runs import cells, write_export

from repq.report.deployment import collect as collect_exports
from repq.report.deployment import deployment_table, to_markdown, write_deployment


def _report(stage: str, model: str, onnx: dict, torch: dict, **extra) -> dict:
    return {
        "model": model,
        "stage": stage,
        "bytes": 250,
        "fp32_bytes": 1000,
        "weight_codes_equal": True,
        "layers": {"INT4": 3},
        "metrics": onnx,
        "reference_metrics": torch,
        "max_abs_diff": 1e-6,
        **extra,
    }


@pytest.fixture
def runs(tmp_path):
    for seed, (a, b) in enumerate([(70.0, 70.5), (72.0, 71.5)]):
        write_export(tmp_path, "repvgg_a0", seed, _report(
            "qat-repq-4", "repvgg_a0", {"top1": a}, {"top1": b}, top1_agreement=99.0 + seed,
            max_abs_diff=0.1 * (seed + 1),
        ))  # fmt: skip
        write_export(tmp_path, "repvgg_a0", seed, _report(
            "ptq-8", "repvgg_a0", {"top1": 60.0}, {"top1": 60.0}, top1_agreement=100.0,
            weight_codes_equal=seed == 0, bytes=500,
        ))  # fmt: skip
    sr = {"psnr/mini_a": 34.0, "ssim/mini_a": 0.9, "psnr/mini_b": 39.0, "ssim/mini_b": 0.95}
    write_export(tmp_path, "ecbsr_x2", 0, _report("qat-merged-8", "ecbsr", sr, sr))
    return tmp_path


def test_rows_follow_the_stage_order_and_aggregate_seeds(runs):
    table = deployment_table(collect_exports(runs))
    assert list(zip(table["model"], table["stage"], strict=True)) == [
        ("ECBSR", "8-bit Merged"),
        ("RepVGG-A0", "8-bit PTQ"),
        ("RepVGG-A0", "4-bit RepQ"),
    ]
    repq = table.iloc[2]
    assert repq["metric"] == "top1"
    assert repq["ONNX"].values == (70.0, 72.0) and repq["PyTorch"].values == (70.5, 71.5)
    assert repq["top-1 agreement %"].mean == pytest.approx(99.5)
    assert repq["QDQ / FP32 size"].mean == pytest.approx(0.25)
    assert table.iloc[1]["codes equal"] == "no (1 of 2)" and repq["codes equal"] == "yes"
    # super-resolution: the primary metric on the first test set, no agreement figure
    assert table.iloc[0]["metric"] == "psnr/mini_a"
    assert table.iloc[0]["top-1 agreement %"] == "n/a"


def test_a_model_exported_without_verification_says_so(tmp_path):
    report = _report("qat-repq-8", "repvgg_a0", {}, {})
    for key in ("metrics", "reference_metrics", "max_abs_diff"):
        del report[key]
    write_export(tmp_path, "repvgg_a0", 0, report)
    (row,) = deployment_table(collect_exports(tmp_path)).to_dict("records")
    assert row["ONNX"] == row["top-1 agreement %"] == "not verified" and row["codes equal"] == "yes"


def test_markdown_shows_the_largest_difference_and_the_csv_the_numbers(runs, tmp_path):
    written = write_deployment(runs, runs)
    rows = cells((runs / "deployment.md").read_text())
    assert rows[0][:5] == ["model", "stage", "metric", "PyTorch", "ONNX"]
    assert rows[3][:7] == [
        "RepVGG-A0", "4-bit RepQ", "top1", "71.00 ± 0.71", "71.00 ± 1.41", "99.50 ± 0.71", "0.2",
    ]  # fmt: skip
    csv = pd.read_csv(runs / "deployment.csv")
    assert csv.loc[2, "max |Δ output|"] == pytest.approx(0.2)
    assert csv.loc[2, "ONNX"] == pytest.approx(71.0) and csv.loc[1, "QDQ KiB"] == pytest.approx(
        500 / 1024
    )
    assert written == [runs / "deployment.csv", runs / "deployment.md"]
    assert write_deployment(tmp_path / "nothing", tmp_path) == []
    written_text = (runs / "deployment.md").read_text()
    assert to_markdown(deployment_table(collect_exports(runs))) == written_text


def test_the_written_tables_are_exactly_these(runs, tmp_path):
    """Rows in the stage order (8-bit before 4-bit, not alphabetical), each column's
    digits, the Markdown layout and a CSV of numbers without an index column."""
    write_export(runs, "repvgg_a0", 0, _report(
        "qat-merged-4", "repvgg_a0", {"top1": 65.0}, {"top1": 65.0}, top1_agreement=100.0,
    ))  # fmt: skip
    unverified = _report("qat-repq-8", "repvgg_a0", {}, {})
    for key in ("metrics", "reference_metrics", "max_abs_diff"):
        del unverified[key]
    write_export(runs, "repvgg_a0", 0, unverified)
    out = tmp_path / "out"
    out.mkdir()
    write_deployment(runs, out)
    text = (out / "deployment.md").read_text()
    assert text.splitlines()[1].startswith("|:---")  # pandas' pipe table
    assert "max \\|Δ output\\|" in text.splitlines()[0]  # the column's pipes escaped
    assert cells(text) == [
        ["model", "stage", "metric", "PyTorch", "ONNX", "top-1 agreement %", "max |Δ output|",
         "QDQ / FP32 size", "QDQ KiB", "codes equal"],
        ["ECBSR", "8-bit Merged", "psnr/mini_a", "34.00", "34.00", "n/a", "1e-06", "0.250",
         "0.2", "yes"],
        ["RepVGG-A0", "8-bit PTQ", "top1", "60.00 ± 0.00", "60.00 ± 0.00", "100.00 ± 0.00",
         "1e-06", "0.500", "0.5 ± 0.0", "no (1 of 2)"],
        ["RepVGG-A0", "8-bit RepQ", "", "not verified", "not verified", "not verified",
         "not verified", "0.250", "0.2", "yes"],
        ["RepVGG-A0", "4-bit Merged", "top1", "65.00", "65.00", "100.00", "1e-06", "0.250",
         "0.2", "yes"],
        ["RepVGG-A0", "4-bit RepQ", "top1", "71.00 ± 0.71", "71.00 ± 1.41", "99.50 ± 0.71",
         "0.2", "0.250", "0.2 ± 0.0", "yes"],
    ]  # fmt: skip
    csv = (out / "deployment.csv").read_text().splitlines()
    assert csv[0] == (
        "model,stage,metric,PyTorch,ONNX,top-1 agreement %,max |Δ output|,QDQ / FP32 size,"
        "QDQ KiB,codes equal"
    )
    unverified_row = "RepVGG-A0,8-bit RepQ,," + "not verified," * 4 + "0.25,0.244140625,yes"
    assert csv[3] == unverified_row
    assert csv[5] == "RepVGG-A0,4-bit RepQ,top1,71.0,71.0,99.5,0.2,0.25,0.244140625,yes"
