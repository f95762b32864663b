"""Quantize the input, quantize the weight, convolve (or multiply): one autograd
function that saves the float input and weight only.

The separate path (:func:`~repq.quant.lsq.lsq_op` on each operand, then the conv)
keeps four tensors for backward: ``x`` and ``W`` for the two LSQ backwards, and
``Q_a(x)`` and ``Q_w(W)`` for the conv's. Here backward recomputes ``Q_a(x)`` and
``Q_w(W)`` from ``x`` and ``W`` (one elementwise pass each), so the quantized
activation is not stored beside the float one. Besides ``x`` and the output's
gradient, backward holds one input-sized tensor at a time: ``Q_a(x)`` while the
weight's gradient is computed, then the input's gradient, which LSQ's backward
overwrites in place (the CPU kernel). Outputs and gradients are bit-equal to the separate
path (``tests/test_fused.py``).
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
        mask = [needs[0] or needs[3], needs[1] or needs[4], ctx.bias_dtype is not None and needs[2]]
        operands = ((x, x_step, x_bounds), (weight, w_step, w_bounds))
        grad_xq, grad_wq, grad_b = _op_gradients(ctx.op, grad, *operands, mask)
        if grad_b is not None:
            grad_b = grad_b.to(ctx.bias_dtype)
        grad_x = grad_sx = grad_w = grad_sw = None
        if mask[0]:
            grad_x, grad_sx = _lsq_backward(x, grad_xq, x_step, x_bounds, needs[3])
        if mask[1]:
            grad_w, grad_sw = _lsq_backward(weight, grad_wq, w_step, w_bounds, needs[4])
        return grad_x, grad_w, grad_b, grad_sx, grad_sw, None, None, None


Operand = tuple[Tensor, Tensor, tuple]
"""A quantized operand: ``(value, step, (qmin, qmax, grad_factor))``."""


def _op_gradients(
    op: Conv2dOp | LinearOp, grad: Tensor, input_: Operand, weight_: Operand, mask: list[bool]
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``op``'s gradients at the recomputed ``Q_a(x)`` and ``Q_w(W)``. The weight's and
    bias's come first, so that ``Q_a(x)`` is freed before the input's gradient is
    allocated (``x`` gives the input's shape there); under autocast, where ``grad`` is
    of another dtype than ``x``, one call computes all three."""
    (x, x_step, x_bounds), (weight, w_step, w_bounds) = input_, weight_
    w_q = fake_quantize(weight, w_step, *w_bounds[:2]).to(grad.dtype)  # autocast's cast
    if x.dtype != grad.dtype or not mask[0]:
        x_q = fake_quantize(x, x_step, *x_bounds[:2]).to(grad.dtype)
        return op.backward(grad, x_q, w_q, mask)
    grad_wq = grad_b = None
    if mask[1] or mask[2]:
        x_q = fake_quantize(x, x_step, *x_bounds[:2])
        _, grad_wq, grad_b = op.backward(grad, x_q, w_q, [False, mask[1], mask[2]])
        del x_q
    grad_xq = op.backward(grad, x, w_q, [True, False, False])[0]
    return grad_xq, grad_wq, grad_b


def _lsq_backward(
    value: Tensor, grad: Tensor, step: Tensor, bounds: tuple, step_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """LSQ's backward of one operand, written over the op's gradient of it (a fresh
    tensor nobody else holds) where its dtype is the operand's."""
    reuse = grad.dtype == value.dtype
    return lsq_gradients(value, grad.to(value.dtype), step, *bounds, step_grad, reuse_grad=reuse)


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
