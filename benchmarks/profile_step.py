"""Where a training step's time goes: a torch.profiler breakdown by the size of the data.

Every aten op's self CPU time over a few steps is put in one bin: ``conv``
(convolutions, their backward, linear layers), ``quantizer`` (inside a fake quantizer,
forward or backward: LSQ here, also inside the fused quantize-quantize-convolve
function, torch.ao's fused observer and fake quantizer), then by
its inputs: ``activation`` (an input shaped like a batch of feature maps), ``weight``
(an input of at least ``--large`` elements that is not a batch: kernels, their
gradients and the optimiser step) and ``small`` (everything else: per-channel vectors
and scalars, where the time is per-op overhead); repq's C++ kernels for RepQ-BNest
record no shapes and are binned by what they pass over. The profiler's own overhead inflates
the small ops; compare the bins across variants, not with ``train_step.py``'s times.

    python benchmarks/profile_step.py --models repvgg_a0 --variants merged bnest
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path

import torch
from torch.autograd.profiler_util import FunctionEvent
from torch.profiler import ProfilerActivity, profile
from train_step import TORCH_OPS, VARIANTS, Step, build_variants, models

BINS = ("conv", "quantizer", "activation", "weight", "small")
CONV_OPS = ("convolution", "addmm", "aten::mm")
QUANTIZER_OPS = ("repq::lsq", "QuantizedOpFunction", "fake_quant", "FakeQuant", "FqHelper")
"""Fake quantizers; the convs inside ``QuantizedOpFunction`` are binned as ``conv``."""
KERNEL_BINS = {"repq::channel_moments": "activation", "repq::estimated_merge": "weight"}
"""repq's C++ kernels that record no input shapes, by what they pass over."""


def _lineage(event: FunctionEvent) -> list[str]:
    """The names of an event and of every event it runs inside."""
    names = []
    while event is not None:
        names.append(event.name)
        event = event.cpu_parent
    return names


def op_bin(event: FunctionEvent, batch: int, large: int) -> str:
    """The bin of one op, from what it runs inside and its input shapes."""
    names = _lineage(event)
    if any(key in name for name in names for key in CONV_OPS):
        return "conv"
    if any(key in name for name in names for key in QUANTIZER_OPS):
        return "quantizer"
    for prefix, kernel_bin in KERNEL_BINS.items():
        if event.name.startswith(prefix):
            return kernel_bin
    tensors = [s for s in event.input_shapes if isinstance(s, list) and s]
    if any(len(s) == 4 and s[0] == batch for s in tensors):
        return "activation"
    if any(math.prod(s) >= large for s in tensors):
        return "weight"
    return "small"


def breakdown(step: Step, batch: int, steps: int, large: int) -> dict[str, float]:
    """Milliseconds of self CPU time per step in each bin, plus the op count."""
    step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    totals: dict[str, float] = defaultdict(float)
    calls = 0
    for event in prof.events():
        if not event.name.startswith(("aten::", "repq::")):  # repq's C++ kernels too
            continue
        totals[op_bin(event, batch, large)] += event.self_cpu_time_total
        calls += 1
    result = {b: totals[b] / 1000 / steps for b in BINS}
    result["total"] = sum(result.values())
    result["ops"] = calls / steps
    return result


def markdown(name: str, rows: dict[str, dict[str, float]]) -> str:
    head = "| variant | " + " | ".join(f"{b} (ms)" for b in BINS) + " | total (ms) | ops |"
    lines = [f"### {name}", "", head, "|---" * (len(BINS) + 3) + "|"]
    for variant, r in rows.items():
        cells = " | ".join(f"{r[b]:.1f}" for b in (*BINS, "total"))
        lines.append(f"| {variant} | {cells} | {r['ops']:.0f} |")
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--large", type=int, default=16384, help="elements of a 'weight' op")
    parser.add_argument("--models", nargs="+", default=["repvgg_a0"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--out", type=Path, help="write the Markdown table here")
    args = parser.parse_args()
    tables = []
    for name in args.models:
        factory, shape, loss = models(args.size, args.size)[name]
        x = torch.randn(args.batch, *shape)
        variants, _ = build_variants(factory, x, args.variants)
        target = torch.randint(0, 1000, (args.batch,))
        if name.startswith("ecbsr"):
            target = torch.randn(args.batch, 1, shape[1] * 2, shape[2] * 2)
        steps = {
            v: Step(variants[v], x, target, loss, False, cpu_kernel_on=v not in TORCH_OPS)
            for v in variants
        }
        rows = {v: breakdown(s, args.batch, args.steps, args.large) for v, s in steps.items()}
        tables.append(markdown(f"{name} (batch {args.batch}, {args.size}x{args.size})", rows))
    text = "\n".join(tables)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
