"""LSQ's operands for the kernel tests: layouts, ranges, the exact step-gradient terms
the tests bound the summation error with, and every kind of quantized layer."""

from __future__ import annotations

import torch
from torch import nn

from repq.qat.repq_conv import RepQConv
from repq.quant.layers import QuantConv2d, QuantLinear
from repq.quant.lsq import CHUNK_ELEMENTS
from repq.quant.policy import LayerPrecision
from repq.reparam import ACBlock, RepVGGBlock

RANGES = {"int8": (-128, 127), "uint4": (0, 15), "int4": (-8, 7), "int2": (-2, 1)}
# (shape, steps): per tensor, per output channel, and rows and columns that span several
# of the kernel's 16,384-element blocks and of the reference's chunks
LAYOUTS = {
    "activation": ((4, 3, 50, 50), 1),
    "weight": ((64, 16, 3, 3), 64),
    "long tensor": ((2, CHUNK_ELEMENTS + 5), 1),
    "long rows": ((3, 70_001), 3),
}


def operands(
    layout: str, dtype: torch.dtype, qmin: int, qmax: int, seed: int = 0, edges: bool = True
):
    """``x`` spread over the range and beyond it, with (``edges``) exact ties
    (half-integer codes) and infinities; ``grad``; and the step shaped to broadcast."""
    shape, steps = LAYOUTS[layout]
    generator = torch.Generator().manual_seed(seed)
    step = torch.rand(steps, generator=generator, dtype=dtype) * 0.1 + 0.02
    step = step.reshape(-1, *[1] * (len(shape) - 1)) if steps > 1 else step
    codes = torch.randn(shape, generator=generator, dtype=dtype) * (qmax - qmin) / 2
    ties = torch.randint(qmin - 2, qmax + 2, shape, generator=generator).to(dtype) + 0.5
    pick = torch.rand(shape, generator=generator) < (0.1 if edges else 0.0)
    x = torch.where(pick, ties, codes) * step
    if edges:
        x.view(-1)[:3] = torch.tensor([float("inf"), -float("inf"), 0.0], dtype=dtype)
    grad = torch.randn(shape, generator=generator, dtype=dtype)
    return x, grad, step


def step_terms(x, grad, step, qmin, qmax, reciprocal: bool = False) -> torch.Tensor:
    """The float terms of ``d L / d step`` in float64, one row per step (``x / step``, or
    with ``reciprocal`` ``x * (1 / step)``, as torch's fake-quant kernels compute it)."""
    v = x * (1 / step) if reciprocal else x / step
    r = torch.round(v)
    outside = (r <= qmin - 0.5) | (r >= qmax + 0.5)
    terms = torch.where(outside, grad * r.clamp(qmin, qmax), grad * (r - v)).double()
    return terms.reshape(step.numel(), -1)


def repq_block(norm_mode: str, **precision) -> RepQConv:
    block = RepVGGBlock(8, 16, 3, stride=1) if norm_mode != "acnet" else ACBlock(8, 16, 3)
    block.norm_mode = "estimate" if norm_mode == "estimate" else "batch"
    return RepQConv(block, LayerPrecision("block", **precision))


LAYERS = {
    "conv": lambda **p: QuantConv2d(nn.Conv2d(8, 16, 3, 2, 1), LayerPrecision("c", **p)),
    "linear": lambda **p: QuantLinear(nn.Linear(8, 10), LayerPrecision("fc", **p)),
    "RepQ block (BN folded with batch statistics)": lambda **p: repq_block("batch", **p),
    "RepQ-BNest block (estimated statistics)": lambda **p: repq_block("estimate", **p),
    "RepQ ACNet block, stored operands": lambda **p: repq_block("acnet", **p),
}
PRECISIONS = {
    "8-bit unsigned input": {"weight_bits": 8, "input_bits": 8, "input_signed": False},
    "4-bit signed input": {"weight_bits": 4, "input_bits": 4, "input_signed": True},
}


def calibrated_layer(kind: str, precision: str) -> tuple[nn.Module, torch.Tensor]:
    """A layer of ``LAYERS`` at one of ``PRECISIONS``, calibrated on its input ``x`` and
    in training mode, and ``x``."""
    from repq.qat import calibrate
    from repq.quant.layers import set_recompute

    torch.manual_seed(0)
    layer = LAYERS[kind](**PRECISIONS[precision]).train()
    if "stored" in kind:
        set_recompute(layer, False)
    x = torch.randn(3, 8, 10, 10) if kind != "linear" else torch.randn(4, 5, 8)
    x = x if PRECISIONS[precision]["input_signed"] else x.relu()
    calibrate(layer, [x])
    return layer.train(), x
