"""Learned Step Size Quantization (LSQ, Esser et al., ICLR 2020).

``x_q = clamp(round(x / s), -Qn, Qp) * s`` with a straight-through rounding and
the step's gradient scaled by ``g = 1 / sqrt(N * Qp)`` (``N``: elements one step
covers). Rounding before clamping gives the same values as clamping first and the
same gradients as torch's learnable fake-quant ops (and MQBench): an input within
half a step of the range still passes its gradient.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class LSQFunction(torch.autograd.Function):
    """Fused LSQ fake quantization: one tensor (``x``) saved, gradients recomputed.

    ``d out / d x = 1`` where ``round(x / s)`` lies in ``[qmin, qmax]``, else 0;
    ``d out / d s = round(x / s) - x / s`` inside, ``clamp(round(x / s))`` outside,
    times ``grad_factor`` and summed over the elements each step covers.
    """

    @staticmethod
    def forward(ctx, x: Tensor, step: Tensor, qmin: int, qmax: int, grad_factor: float) -> Tensor:
        ctx.save_for_backward(x, step)
        ctx.bounds = (qmin, qmax, grad_factor)
        return (x / step).round_().clamp_(qmin, qmax).mul_(step)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, step = ctx.saved_tensors
        qmin, qmax, grad_factor = ctx.bounds
        v = x / step
        q = torch.round(v)
        local = q.clamp(qmin, qmax)
        # 1 outside the range, 0 inside (q is an integer). Float masks, no bool tensors
        # (comparisons and ``where`` are several times slower on the CPU), and every
        # pass after these three allocations runs in place.
        outside = q.sub_(local).abs_().clamp_(max=1.0)
        grad_x = grad_step = None
        if ctx.needs_input_grad[1]:
            # round(v) - v inside the range, clamp(round(v)) outside
            local.sub_(v).addcmul_(v, outside)
            grad_step = _weighted_sum(local, grad, step.shape).mul_(grad_factor).to(step.dtype)
        del v, local
        if ctx.needs_input_grad[0]:
            grad_x = outside.neg_().add_(1.0).mul_(grad).to(x.dtype)
        return grad_x, grad_step, None, None, None


def _weighted_sum(local: Tensor, grad: Tensor, shape: torch.Size) -> Tensor:
    """``local * grad`` summed to ``shape``: a dot product (no product tensor) for one
    step over contiguous tensors."""
    if shape.numel() == 1 and local.is_contiguous() and grad.is_contiguous():
        return torch.dot(local.view(-1), grad.view(-1).to(local.dtype)).reshape(shape)
    return local.mul_(grad).sum_to_size(shape)


def lsq_fake_quantize(x: Tensor, step: Tensor, qmin: int, qmax: int, grad_factor: float) -> Tensor:
    """Fake-quantize ``x`` with ``step`` (broadcastable to ``x``) onto ``[qmin, qmax]``."""
    return LSQFunction.apply(x, step, qmin, qmax, grad_factor)


def quant_range(bits: int, signed: bool) -> tuple[int, int]:
    """``(-Qn, Qp)``: ``(-2^(b-1), 2^(b-1) - 1)`` signed, ``(0, 2^b - 1)`` unsigned."""
    if bits < 2:
        raise ValueError(f"bits must be >= 2, got {bits}")
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


class LSQQuantizer(nn.Module):
    """An LSQ fake quantizer with one step per tensor or one per output channel.

    The step is initialised from the first tensor it sees as ``2 mean|x| / sqrt(Qp)``
    (per channel for weights). ``enabled = False`` makes it the identity;
    :meth:`freeze` stops the step from learning. No call synchronises with the host.
    """

    def __init__(self, bits: int, signed: bool, channels: int | None = None) -> None:
        super().__init__()
        self.bits, self.signed = bits, signed
        self.qmin, self.qmax = quant_range(bits, signed)
        self.per_channel = channels is not None
        self.step = nn.Parameter(torch.ones(channels if self.per_channel else 1))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.enabled = True
        self._ready = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._ready = bool(self.initialized)

    def _shaped_step(self, x: Tensor) -> Tensor:
        if self.per_channel:
            return self.step.reshape(-1, *([1] * (x.dim() - 1)))
        return self.step

    def _elements_per_step(self, x: Tensor) -> int:
        return x.numel() // self.step.numel()

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set the step to ``2 mean|x| / sqrt(Qp)`` (per output channel if per-channel)."""
        dims = tuple(range(1, x.dim())) if self.per_channel else tuple(range(x.dim()))
        mean_abs = x.detach().abs().float().mean(dim=dims).reshape(-1)
        step = 2 * mean_abs / math.sqrt(self.qmax)
        self.step.copy_(step.clamp_min(1e-8).to(self.step.dtype))
        self.initialized.fill_(True)
        self._ready = True

    def freeze(self) -> LSQQuantizer:
        """Stop learning the step (it stays as it is)."""
        self.step.requires_grad_(False)
        return self

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return x
        if not self._ready:
            self.initialize(x)
        grad_factor = 1.0 / math.sqrt(self._elements_per_step(x) * self.qmax)
        return lsq_fake_quantize(x, self._shaped_step(x), self.qmin, self.qmax, grad_factor)

    @torch.no_grad()
    def integers(self, x: Tensor) -> Tensor:
        """The integer codes ``clamp(round(x / s))`` that the fake quantizer represents."""
        return torch.clamp(torch.round(x / self._shaped_step(x)), self.qmin, self.qmax)

    def extra_repr(self) -> str:
        kind = "per-channel" if self.per_channel else "per-tensor"
        sign = "signed" if self.signed else "unsigned"
        return f"bits={self.bits}, {sign}, {kind}, enabled={self.enabled}"
