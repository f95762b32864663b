"""The benchmark scripts run end to end on a tiny setting and write what they promise."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ["--models", "ecbsr_m4c16", "--size", "8", "--batch", "2"]


def _script(script: str, *args: str) -> str:
    """Run a benchmark script (in benchmarks/) with ``args``; its stdout."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=BENCHMARKS,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _run(script: str, *args: str) -> str:
    return _script(script, *TINY, *args)


def test_train_step_writes_ratios_to_merged_and_peak_memory(tmp_path):
    variants = ["float_deploy", "merged", "bnest"]
    args = ["--sr-size", "8", "--rounds", "2", "--variants", *variants, "--out", str(tmp_path)]
    _run("train_step.py", *args, "--tag", "cpu")
    written = json.loads((tmp_path / "cpu.json").read_text())
    result = written["models"]["ecbsr_m4c16"]
    provenance = written["provenance"]  # where the numbers come from
    assert {"command", "commit", "date", "cpu", "cores", "torch"} <= set(provenance)
    assert provenance["command"].endswith("--tag cpu") and provenance["cores"] >= 1
    assert list(result["step_s"]) == variants
    assert result["time_vs_merged"]["merged"] == 1.0
    assert all(t > 0 for t in result["step_s"].values())
    # the spread over rounds: the median of each round's ratio lies within its range,
    # and Merged against itself is exactly 1 in every round
    for key in variants:
        ratio, step = result["time_vs_merged_spread"][key], result["step_s_spread"][key]
        assert ratio["min"] <= result["time_vs_merged"][key] == ratio["median"] <= ratio["max"]
        assert step["min"] <= result["step_s"][key] == step["median"] <= step["max"]
    assert result["time_vs_merged_spread"]["merged"] == {"min": 1.0, "median": 1.0, "max": 1.0}
    assert result["rounds"] == 2
    # the peak counts parameters and optimiser state, so it exceeds what autograd saves
    for key in variants:
        assert result["memory_bytes"][key] > result["saved_bytes"][key] > 0
    assert result["input"] == [1, 8, 8]
    table = (tmp_path / "cpu.md").read_text()
    assert "| bnest |" in table and "memory / Merged" in table
    row = next(line for line in table.splitlines() if line.startswith("| bnest |"))
    low, high = (
        result["time_vs_merged_spread"]["bnest"]["min"],
        result["time_vs_merged_spread"]["bnest"]["max"],
    )
    assert f"{result['time_vs_merged']['bnest']:.2f} ({low:.2f}-{high:.2f})" in row
    assert not list(tmp_path.glob("*.partial"))
    # a tag is never overwritten: the same tag again is refused in one line
    again = subprocess.run(
        [sys.executable, str(BENCHMARKS / "train_step.py"), *TINY, *args, "--tag", "cpu"],
        capture_output=True,
        text=True,
        cwd=BENCHMARKS,
    )
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        f"{tmp_path / 'cpu'}.json exists: a measurement never replaces another; use a new --tag"
    ]


def test_profile_step_bins_add_up_to_the_total():
    out = _run("profile_step.py", "--steps", "1", "--variants", "merged")
    row = next(line for line in out.splitlines() if line.startswith("| merged |"))
    cells = [float(c) for c in row.strip("|").split("|")[1:]]
    conv, quantizer, activation, weight, small, total, ops = cells
    assert abs(conv + quantizer + activation + weight + small - total) < 0.2
    assert conv > 0 and quantizer > 0 and ops > 0


class _RefusesDouble(nn.Module):
    """A real layer that refuses one dtype, as an op without a kernel for it does."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float64:
            raise RuntimeError("no kernel for Double\nsecond line | with a bar")
        return self.linear(x)


def test_a_failing_variant_is_dropped_and_named_but_merged_must_run():
    sys.path.insert(0, str(BENCHMARKS))
    from train_step import Step, warm_up

    x, target = torch.randn(2, 4), torch.tensor([0, 2])
    good = Step(nn.Linear(4, 3), x, target, "ce", False)
    bad = Step(_RefusesDouble(), x.double(), target, "ce", False)
    steps = {"merged": good, "torch_ao": bad}
    seconds, failed = warm_up(steps, 1)
    assert list(steps) == ["merged"] and list(seconds) == ["merged"]
    assert failed == {"torch_ao": "RuntimeError: no kernel for Double"}
    with pytest.raises(RuntimeError, match="no kernel"):
        warm_up({"merged": bad}, 1)


def test_input_pipeline_writes_rates_per_core_with_their_spread(tmp_path):
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "input_pipeline.py"), "--rounds", "2", "--images", "4"]
        + ["--seedings", "10"]
        + ["--out", str(tmp_path), "--tag", "input-pipeline"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "input-pipeline.json").read_text())
    assert result["provenance"]["command"].endswith("--tag input-pipeline")
    rates = result["images_per_second_per_core"]
    assert list(rates) == ["PIL + transforms v1", "torchvision.io + v2", "torchcodec + v2"]
    for spread in rates.values():
        assert 0 < spread["min"] <= spread["median"] <= spread["max"]
    assert result["speed_vs_v1"]["PIL + transforms v1"] == 1.0
    table = (tmp_path / "input-pipeline.md").read_text()
    codec = rates["torchcodec + v2"]
    assert f"| torchcodec + v2 | {codec['median']:.0f} | {codec['min']:.0f} |" in table
    assert set(result["seeding_us_per_sample"]) == {"torch.manual_seed", "cpu_rng_seeded"}
    decoding = result["decoded_per_second_per_core"]
    assert list(decoding) == ["torchvision.io", "torchcodec"]
    paired = result["torchcodec_vs_torchvision_decoding"]
    assert 0 < paired["min"] <= paired["median"] <= paired["max"]
    assert f"round by round: {paired['median']:.3f}x" in table


def test_mini_epoch_times_both_pipelines_with_their_spread(tmp_path):
    args = ["--rounds", "2", "--train-per-class", "6", "--val-per-class", "2"]
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "mini_epoch.py"), *args, "--out", str(tmp_path)]
        + ["--tag", "mini-epoch"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "mini-epoch.json").read_text())
    assert {"commit", "date", "cpu", "cores", "torch"} <= set(result["provenance"])
    assert result["images"] == {"train": 72, "val": 24}
    assert list(result["seconds"]) == ["read every epoch", "data.cache"]
    for parts in result["seconds"].values():
        assert list(parts) == ["train", "validate", "epoch"]
        for s in parts.values():
            assert 0 < s["min"] <= s["median"] <= s["max"]
    ratio = result["epoch_time_cached_vs_read"]
    assert ratio["min"] <= ratio["median"] <= ratio["max"]
    cached = result["seconds"]["data.cache"]["epoch"]
    table = (tmp_path / "mini-epoch.md").read_text()
    assert "| data.cache | " in table and f"{cached['median']:.2f} (" in table


def test_bn_recalibration_replaces_running_stats_by_their_plain_mean(monkeypatch):
    """The diagnostic's re-estimation: every BN's running mean and (unbiased) variance
    become the plain means over the batches of the per-batch statistics."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from bn_recalibration import reestimate_running_stats

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    model[1].running_mean.fill_(5.0)  # stale statistics, and a momentum to ignore
    batches = [(torch.randn(8, 3, 6, 6) * (i + 1), None) for i in range(3)]
    assert reestimate_running_stats(model, batches) == 1
    with torch.no_grad():
        outputs = [model[0](x) for x, _ in batches]
    means = torch.stack([y.mean((0, 2, 3)) for y in outputs]).mean(0)
    variances = torch.stack([y.var((0, 2, 3), unbiased=True) for y in outputs]).mean(0)
    torch.testing.assert_close(model[1].running_mean, means)  # float32 rounding
    torch.testing.assert_close(model[1].running_var, variances)
    assert not model.training


def test_layer_sensitivity_finds_the_layer_whose_quantizer_costs_the_most(monkeypatch):
    """One layer's weight grid is too coarse, the other's is not: the diagnostic
    names the first, scores every layer alone from the all-off model, and leaves every
    quantizer as it found it."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from layer_sensitivity import KINDS, sensitivity

    from repq.qat import calibrate, prepare
    from repq.qat.health import quant_layers

    torch.manual_seed(0)
    float_model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1))
    model = prepare(float_model, "merged", 2).eval()
    x = torch.randn(16, 3, 8, 8)
    calibrate(model, [x])
    with torch.no_grad():
        reference = float_model(x)
    layers = dict(quant_layers(model))
    first = next(iter(layers))
    with torch.no_grad():  # the first layer's weight step 50 times too coarse
        layers[first].weight_quant.step.mul_(50.0)

    def score() -> float:  # higher is better: minus the error against the float model
        with torch.no_grad():
            return -float((model(x) - reference).pow(2).mean())

    found = sensitivity(model, score)
    alone = found["alone"]["weight_quant"]
    assert set(alone) == set(layers) and min(alone, key=alone.get) == first
    assert found["all_off"]["weight_quant"] > alone[first]
    assert all(getattr(m, k).enabled for m in layers.values() for k in KINDS)
    assert score() == found["as_trained"]


def _private_members_of_repq() -> set[str]:
    """Names of repq's private methods and attributes (``def _x``, ``self._x = ``)."""
    names: set[str] = set()
    for path in (BENCHMARKS.parent / "repq").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_no_benchmark_touches_a_private_member_of_a_repq_object():
    private = _private_members_of_repq()
    assert {"_stats", "_track", "_loader"} & private  # the scan finds repq's own
    touched = [
        f"{path.name}:{node.lineno} .{node.attr}"
        for path in sorted(BENCHMARKS.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr in private
    ]
    assert touched == []


def test_lsq_kernels_times_the_three_variants_side_by_side(tmp_path):
    _script(
        "lsq_kernels.py", "--rounds", "2", "--warmup", "1", "--out", str(tmp_path), "--tag", "lsq"
    )
    result = json.loads((tmp_path / "lsq.json").read_text())
    assert result["provenance"]["command"].endswith("--tag lsq")
    for variants in result["ms"].values():
        assert list(variants) == ["repq C++ kernel", "torch fused op", "torch ops (reference)"]
        assert all(0 < s["min"] <= s["median"] <= s["max"] for s in variants.values())
    assert "| torch fused op |" in (tmp_path / "lsq.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the check runs for real here")
def test_the_gpu_check_stops_in_one_line_without_cuda():
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_check.py")], capture_output=True, text=True
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "gpu-check: no CUDA device here (torch.cuda.is_available() is False); "
        "run it on a machine with a GPU"
    ]


def test_a_variant_that_cannot_be_built_is_reported_and_the_others_run(monkeypatch):
    """torchao's x86 quantizer refuses OREPA-ResNet-18's deployed graph (a ValueError):
    the benchmark keeps the error in its table and times the other variants."""
    sys.path.insert(0, str(BENCHMARKS))
    import train_step

    def refuses(model, example):
        raise ValueError("Input partition has more than one output node\nmore")

    monkeypatch.setattr(train_step, "torchao_pt2e_qat", refuses)
    factory = lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))  # noqa: E731
    built, failed = train_step.build_variants(
        factory, torch.randn(2, 3, 8, 8), ("merged", "torchao_pt2e")
    )
    assert list(built) == ["merged"]
    assert failed == {"torchao_pt2e": "ValueError: Input partition has more than one output node"}
