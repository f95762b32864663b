"""LSQ's forward and backward on the CPU: repq's C++ kernel, torch's fused learnable
fake-quant kernels (what runs on CUDA) and the torch-ops reference, side by side.

Two tensors: an activation (32x64x56x56, one step, 4 bits unsigned) and a weight
(256x256x3x3, one step per output channel, 4 bits signed); each variant runs forward and
backward once per round, the variants interleaved, in one process.

    python benchmarks/lsq_kernels.py --tag lsq-kernels-cpu
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from record import new_tag, save, stamp

from repq import cpu_kernel
from repq.quant.lsq import lsq_fake_quantize, quant_range, torch_kernels_on

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "activation 32x64x56x56, 4-bit unsigned, per tensor": ((32, 64, 56, 56), False, False),
    "weight 256x256x3x3, 4-bit signed, per channel": ((256, 256, 3, 3), True, True),
}
VARIANTS = ("repq C++ kernel", "torch fused op", "torch ops (reference)")


def operands(shape: tuple[int, ...], signed: bool, per_channel: bool):
    x = torch.randn(shape)
    x = x if signed else x.relu()
    qmin, qmax = quant_range(4, signed)
    steps = shape[0] if per_channel else 1
    step = (x.abs().reshape(steps, -1).mean(1) * 2 / qmax**0.5).clamp_min(1e-4)
    step = step.reshape(-1, *[1] * (len(shape) - 1)) if per_channel else step
    return x.requires_grad_(True), step.requires_grad_(True), qmin, qmax


def timed(variant: str, args, grad: torch.Tensor) -> float:
    """Seconds of one forward and backward under ``variant``."""
    x, step, qmin, qmax = args
    kernel = cpu_kernel.enabled(variant == "repq C++ kernel", ("lsq",))
    devices = {"cpu"} if variant == "torch fused op" else set()
    with kernel, torch_kernels_on(devices):
        start = time.perf_counter()
        lsq_fake_quantize(x, step, qmin, qmax, 1e-3).backward(grad)
        seconds = time.perf_counter() - start
    x.grad = step.grad = None
    return seconds


def measure(rounds: int, warmup: int) -> dict[str, dict[str, dict[str, float]]]:
    results = {}
    for case, spec in CASES.items():
        args = operands(*spec)
        grad = torch.randn_like(args[0])
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for round_ in range(warmup + rounds):
            for variant in VARIANTS:
                seconds = timed(variant, args, grad)
                if round_ >= warmup:
                    times[variant].append(seconds * 1e3)
        results[case] = {v: spread(t) for v, t in times.items()}
    return results


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def markdown(result: dict) -> str:
    lines = [
        f"LSQ forward + backward on the CPU, {result['threads']} threads, "
        f"{result['rounds']} rounds (ms; torch {result['torch']})",
        "",
        "| tensor | variant | median | min | max | vs repq's kernel |",
        "|---|---|---|---|---|---|",
    ]
    for case, variants in result["ms"].items():
        base = variants[VARIANTS[0]]["median"]
        for name, s in variants.items():
            ratio = s["median"] / base
            lines.append(
                f"| {case} | {name} | {s['median']:.1f} | {s['min']:.1f} | {s['max']:.1f} | "
                f"{ratio:.2f}x |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--tag", required=True, help="name of the result files (a new one)")
    args = parser.parse_args()
    new_tag(args.out, args.tag)
    if cpu_kernel.kernel() is None:
        raise SystemExit("repq's CPU kernel did not build: nothing to compare it with")
    torch.set_num_threads(args.threads)
    result = {
        "provenance": stamp(),
        "torch": torch.__version__,
        "threads": args.threads,
        "rounds": args.rounds,
        "ms": measure(args.rounds, args.warmup),
    }
    save(args.out, args.tag, result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
