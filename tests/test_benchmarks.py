"""The benchmark scripts run end to end on a tiny setting and write what they promise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ["--models", "ecbsr_m4c16", "--size", "8", "--batch", "2"]


def _run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *TINY, *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=BENCHMARKS,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_train_step_writes_ratios_to_merged_and_peak_memory(tmp_path):
    variants = ["float_deploy", "merged", "bnest"]
    _run("train_step.py", "--rounds", "2", "--variants", *variants, "--out", str(tmp_path))
    result = json.loads((tmp_path / "cpu.json").read_text())["models"]["ecbsr_m4c16"]
    assert list(result["step_s"]) == variants
    assert result["time_vs_merged"]["merged"] == 1.0
    assert all(t > 0 for t in result["step_s"].values())
    # the peak counts parameters and optimiser state, so it exceeds what autograd saves
    for key in variants:
        assert result["memory_bytes"][key] > result["saved_bytes"][key] > 0
    table = (tmp_path / "cpu.md").read_text()
    assert "| bnest |" in table and "memory / Merged" in table


def test_profile_step_bins_add_up_to_the_total():
    out = _run("profile_step.py", "--steps", "1", "--variants", "merged")
    row = next(line for line in out.splitlines() if line.startswith("| merged |"))
    cells = [float(c) for c in row.strip("|").split("|")[1:]]
    conv, quantizer, activation, weight, small, total, ops = cells
    assert abs(conv + quantizer + activation + weight + small - total) < 0.2
    assert conv > 0 and quantizer > 0 and ops > 0
