"""Quantize the input, quantize the weight, convolve (or multiply): one autograd
function that saves the float input and weight only.

The separate path (:class:`~repq.quant.lsq.LSQFunction` on each operand, then the conv)
keeps four tensors for backward: ``x`` and ``W`` for the two LSQ backwards, and
``Q_a(x)`` and ``Q_w(W)`` for the conv's. Here backward recomputes ``Q_a(x)`` and
``Q_w(W)`` from ``x`` and ``W`` (one elementwise pass each), so the quantized
activation is not stored beside the float one. Outputs and gradients are bit-equal to
the separate path (``tests/test_fused.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from repq.quant.lsq import fake_quantize, lsq_gradients


@dataclass(frozen=True)
class Conv2dOp:
    """``conv2d`` with a fixed geometry, and its backward."""

    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int

    def forward(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def backward(self, grad: Tensor, x: Tensor, w: Tensor, mask: list[bool]):
        bias_sizes = [w.shape[0]] if mask[2] else None
        return torch.ops.aten.convolution_backward(
            grad, x, w, bias_sizes, self.stride, self.padding, self.dilation,
            False, [0, 0], self.groups, mask,
        )  # fmt: skip


@dataclass(frozen=True)
class LinearOp:
    """``linear``, and its backward."""

    def forward(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        return F.linear(x, w, b)

    def backward(self, grad: Tensor, x: Tensor, w: Tensor, mask: list[bool]):
        rows = grad.reshape(-1, grad.shape[-1])
        grad_x = grad @ w if mask[0] else None
        grad_w = rows.t() @ x.reshape(-1, x.shape[-1]) if mask[1] else None
        grad_b = rows.sum(0) if mask[2] else None
        return grad_x, grad_w, grad_b


class QuantizedOpFunction(torch.autograd.Function):
    """``op(Q_a(x), Q_w(W), b)`` with LSQ's gradients for ``x``, ``W`` and both steps."""

    @staticmethod
    def forward(ctx, x, weight, bias, x_step, w_step, x_bounds, w_bounds, op):
        ctx.save_for_backward(x, weight, x_step, w_step)
        ctx.bounds, ctx.op = (x_bounds, w_bounds), op
        ctx.bias_dtype = None if bias is None else bias.dtype
        x_q = fake_quantize(x, x_step, *x_bounds[:2])
        w_q = fake_quantize(weight, w_step, *w_bounds[:2])
        return op.forward(x_q, w_q, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight, x_step, w_step = ctx.saved_tensors
        (x_bounds, w_bounds), needs = ctx.bounds, ctx.needs_input_grad
        x_q = fake_quantize(x, x_step, *x_bounds[:2]).to(grad.dtype)  # autocast's cast
        w_q = fake_quantize(weight, w_step, *w_bounds[:2]).to(grad.dtype)
        mask = [needs[0] or needs[3], needs[1] or needs[4], ctx.bias_dtype is not None and needs[2]]
        grad_xq, grad_wq, grad_b = ctx.op.backward(grad, x_q, w_q, mask)
        del x_q, w_q  # freed before LSQ's backward allocates, as autograd frees saved ones
        if grad_b is not None:
            grad_b = grad_b.to(ctx.bias_dtype)
        grad_x = grad_sx = grad_w = grad_sw = None
        if mask[0]:
            grad_x, grad_sx = lsq_gradients(x, grad_xq.to(x.dtype), x_step, *x_bounds, needs[3])
        if mask[1]:
            grad_w, grad_sw = lsq_gradients(
                weight, grad_wq.to(weight.dtype), w_step, *w_bounds, needs[4]
            )
        return grad_x, grad_w, grad_b, grad_sx, grad_sw, None, None, None


def quantized_op(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    x_args: tuple[Tensor, int, int, float],
    w_args: tuple[Tensor, int, int, float],
    op: Conv2dOp | LinearOp,
) -> Tensor:
    """``op(Q_a(x), Q_w(W), bias)``; ``x_args``/``w_args`` are the quantizers'
    :meth:`~repq.quant.lsq.LSQQuantizer.lsq_args`."""
    (x_step, *x_bounds), (w_step, *w_bounds) = x_args, w_args
    return QuantizedOpFunction.apply(
        x, weight, bias, x_step, w_step, tuple(x_bounds), tuple(w_bounds), op
    )
