"""One prepared check of the whole GPU path, for a machine with CUDA (``make gpu-check``;
planned to take at most 8 minutes on one GPU).

Steps, each under its own time limit, each recorded whatever its outcome:

1. ``tests/test_cuda.py``: the CUDA tests (LSQ on torch's fused kernels against the CPU
   reference, no host synchronisation in a QAT step, eval equals deploy, fp32 QAT
   numerics, nvJPEG decoding);
2. ``make bench-gpu``'s measurement (``benchmarks/train_step.py`` on CUDA, batch 256 at
   224x224, bf16 autocast, channels-last; fewer rounds), to a new
   ``benchmarks/results/gpu-check-<time>.*``;
3. with two or more GPUs, one DDP training step over NCCL on two processes
   (``benchmarks/ddp_nccl_step.py``): every rank's gradients equal after the all-reduce;
4. the rehearsal's slice on CUDA (``snakemake`` with ``config/paper.yaml`` and
   ``config/rehearse.yaml``, ``only: [repvgg_a0, ecbsr_x2]``): full-width RepVGG-A0 at
   224x224 and ECBSR x2 at the recipes' batch sizes (256 and 32), every method and bit
   width, evaluated, exported and tabulated, in ``results/gpu-check/rehearse`` (the
   synthetic data in ``config/rehearse.yaml``'s folder), with its ``rehearsal.md`` (each
   job's wall time, peak RSS and peak CUDA memory).

It writes ``results/gpu-check/summary.json`` (each step's command, exit status, seconds
and output tail, the device and torch) and exits non-zero if a step failed. Without
CUDA it stops at once with one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "gpu-check"
LIMITS_S = {
    "cuda tests": 120,
    "bench-gpu": 150,
    "ddp nccl": 60,
    "rehearsal slice": 300,
    "rehearsal table": 30,
}


def cuda_devices() -> int:
    """The number of CUDA devices torch sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def steps(gpus: int, stamp: str) -> dict[str, list[str]]:
    python = sys.executable
    bench = [python, "benchmarks/train_step.py", "--device", "cuda", "--batch", "256"]
    bench += ["--size", "224", "--amp", "--channels-last", "--rounds", "3", "--warmup", "2"]
    plan = {
        "cuda tests": [
            python,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_cuda.py",
        ],
        "bench-gpu": [*bench, "--tag", f"gpu-check-{stamp}"],
    }
    if gpus >= 2:
        torchrun = [python, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
        plan["ddp nccl"] = [*torchrun, "benchmarks/ddp_nccl_step.py"]
    results = OUT.relative_to(ROOT) / "rehearse"
    snakemake = [str(Path(python).parent / "snakemake"), "--profile", "profiles/default"]
    plan["rehearsal slice"] = [
        *snakemake, "--cores", str(os.cpu_count() or 2),
        "--configfile", "config/paper.yaml", "config/rehearse.yaml",
        "--config", "only=[repvgg_a0,ecbsr_x2]", f"results={results}",
    ]  # fmt: skip
    plan["rehearsal table"] = [
        str(Path(python).parent / "repq"), "report", "rehearsal", "--results", str(results)
    ]  # fmt: skip
    return plan


def run(name: str, command: list[str]) -> dict:
    start = time.perf_counter()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    try:
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=LIMITS_S[name]
        )
        status, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        status = "timeout"
        output = f"{expired.stdout or ''}{expired.stderr or ''}"
        output = output if isinstance(output, str) else output.decode(errors="replace")
    seconds = round(time.perf_counter() - start, 1)
    print(f"gpu-check: {name}: {'ok' if status == 0 else status} in {seconds} s", flush=True)
    return {"command": command, "status": status, "seconds": seconds, "tail": output[-4000:]}


def main() -> int:
    gpus = cuda_devices()
    if gpus == 0:
        print("gpu-check: no CUDA device here (torch.cuda.is_available() is False); "
              "run it on a machine with a GPU", file=sys.stderr)  # fmt: skip
        return 1
    import torch

    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M")
    OUT.mkdir(parents=True, exist_ok=True)
    results = {name: run(name, command) for name, command in steps(gpus, stamp).items()}
    summary = {
        "date": stamp,
        "device": torch.cuda.get_device_name(0),
        "gpus": gpus,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "steps": results,
        "passed": all(r["status"] == 0 for r in results.values()),
    }
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"gpu-check: {'passed' if summary['passed'] else 'FAILED'}; {OUT / 'summary.json'}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
