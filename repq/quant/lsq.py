"""Learned Step Size Quantization (LSQ, Esser et al., ICLR 2020).

``x_q = clamp(round(x / s), -Qn, Qp) * s`` with a straight-through rounding and
the step's gradient scaled by ``g = 1 / sqrt(N * Qp)``; ``N`` is, as in the LSQ paper,
the number of weights one step covers for a weight quantizer and the number of features
of one example for an activation quantizer, so an activation step learns at the same
rate whatever the per-GPU batch (one GPU or eight, the same global batch). Rounding
before clamping gives the same values as clamping first and the same gradients as
torch's learnable fake-quant ops (and MQBench): an input within half a step of the range
still passes its gradient.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from repq import cpu_kernel
from repq.quant.init import QuantInit, initial_step

MIN_STEP = 1e-8
CHUNK_ELEMENTS = 1 << 18
"""Elements per chunk on the CPU: a chunk's passes run in cache, and the backward's two
scratch buffers (1 MiB each) are reused where whole-tensor temporaries would be fresh
pages every step."""
_torch_kernel_devices = {"cuda"}
"""Where LSQ runs on torch's own fused learnable fake-quant kernels
(``torch._fake_quantize_learnable_per_{tensor,channel}_affine`` and their backward, with
``grad_factor`` = LSQ's ``g``): CUDA. They take the code as ``round(x * (1 / s))``, which
differs from ``round(x / s)`` (the reference's, and ONNX's) by one only where ``x / s`` is
within a rounding error of a half-integer (``tests/test_torch_lsq.py``). On the CPU repq's
kernel is the faster (``benchmarks/lsq_kernels.py``); :func:`torch_kernels_on` changes the
set (tests, benchmarks)."""


@torch.library.custom_op("repq::lsq", mutates_args=())
def lsq_op(x: Tensor, step: Tensor, qmin: int, qmax: int, grad_factor: float) -> Tensor:
    """LSQ fake quantization as one op of torch's library (``torch.ops.repq.lsq``): the
    forward of :func:`fake_quantize`, the backward of :func:`lsq_gradients` (registered
    below), so ``torch.compile`` and ``torch.export`` see one opaque node per quantizer
    and eager mode runs the fastest kernel the tensors allow. One tensor (``x``) is saved;
    the gradients are recomputed.

    ``d out / d x = 1`` where ``round(x / s)`` lies in ``[qmin, qmax]``, else 0;
    ``d out / d s = round(x / s) - x / s`` inside, ``clamp(round(x / s))`` outside,
    times ``grad_factor`` and summed over the elements each step covers.
    """
    return fake_quantize(x, step, qmin, qmax)


@lsq_op.register_fake
def _lsq_fake(x: Tensor, step: Tensor, qmin: int, qmax: int, grad_factor: float) -> Tensor:
    return torch.empty_like(x, dtype=torch.promote_types(x.dtype, step.dtype))


@torch.library.custom_op("repq::lsq_backward", mutates_args=())
def lsq_backward_op(
    x: Tensor, grad: Tensor, step: Tensor, qmin: int, qmax: int, grad_factor: float
) -> tuple[Tensor, Tensor]:
    """``(d L / d x, d L / d step)`` of :func:`lsq_op` (``torch.ops.repq.lsq_backward``)."""
    grad_x, grad_step = lsq_gradients(x, grad, step, qmin, qmax, grad_factor)
    return grad_x, grad_step


@lsq_backward_op.register_fake
def _lsq_backward_fake(
    x: Tensor, grad: Tensor, step: Tensor, qmin: int, qmax: int, grad_factor: float
) -> tuple[Tensor, Tensor]:
    return torch.empty_like(grad, dtype=x.dtype), torch.empty_like(step)


def _lsq_setup(ctx, inputs: tuple, output: Tensor) -> None:
    x, step, *bounds = inputs
    ctx.save_for_backward(x, step)
    ctx.bounds = tuple(bounds)


def _lsq_grad(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
    x, step = ctx.saved_tensors
    grad_x, grad_step = lsq_backward_op(x, grad, step, *ctx.bounds)
    return grad_x, grad_step if ctx.needs_input_grad[1] else None, None, None, None


lsq_op.register_autograd(_lsq_grad, setup_context=_lsq_setup)


def fake_quantize(x: Tensor, step: Tensor, qmin: int, qmax: int) -> Tensor:
    """``clamp(round(x / step), qmin, qmax) * step`` (LSQ's forward): the CPU kernel
    where it takes the tensors, else :func:`reference_fake_quantize`."""
    if torch_kernel_takes(x, step):
        return _torch_forward(x, step, qmin, qmax)
    if _kernel_takes(x, step):
        out = torch.empty_like(x)
        with record_function("repq::lsq_cpu_forward"):
            cpu_kernel.kernel().fake_quantize(x, step, qmin, qmax, out)
        return out
    return reference_fake_quantize(x, step, qmin, qmax)


def reference_fake_quantize(x: Tensor, step: Tensor, qmin: int, qmax: int) -> Tensor:
    """:func:`fake_quantize` as torch ops, in chunks on the CPU."""
    out = torch.empty_like(x, dtype=torch.result_type(x, step))
    for x_part, out_part, step_part in _parts(step, _chunkable(step, x, out), x, out):
        torch.div(x_part, step_part, out=out_part).round_().clamp_(qmin, qmax)
        out_part.mul_(step_part)
    return out


def lsq_gradients(
    x: Tensor,
    grad: Tensor,
    step: Tensor,
    qmin: int,
    qmax: int,
    grad_factor: float,
    step_grad: bool = True,
    reuse_grad: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """LSQ's backward: ``(d L / d x, d L / d step)`` from ``grad = d L / d out`` (the
    step's gradient scaled by ``grad_factor``; None unless ``step_grad``). With
    ``reuse_grad`` the CPU kernel writes ``d L / d x`` over ``grad`` (one buffer less)."""
    if torch_kernel_takes(x, step, grad):
        grad_x, grad_step = _torch_backward(x, grad, step, qmin, qmax, grad_factor)
        return grad_x, grad_step if step_grad else None
    if _kernel_takes(x, step, grad):
        grad_x = grad if reuse_grad else torch.empty_like(grad)
        with record_function("repq::lsq_cpu_backward"):
            sums = cpu_kernel.kernel().lsq_backward(x, grad, step, qmin, qmax, grad_x)
        return grad_x, sums.reshape(step.shape).mul_(grad_factor) if step_grad else None
    return reference_lsq_gradients(x, grad, step, qmin, qmax, grad_factor, step_grad)


def _one_step_per_row(x: Tensor, step: Tensor) -> bool:
    """One step per tensor, or one per slice of ``x``'s first dimension."""
    return step.numel() == 1 or (x.dim() > 0 and step.numel() == x.shape[0] == step.shape[0])


def _kernel_takes(x: Tensor, step: Tensor, *like_x: Tensor) -> bool:
    """Whether the CPU kernel runs LSQ on ``x`` (and ``like_x``) with ``step``: tensors it
    takes (:func:`repq.cpu_kernel.usable`), one step per tensor or per slice of
    ``x``'s first dimension (its ``[steps, elements per step]`` layout)."""
    return _one_step_per_row(x, step) and cpu_kernel.usable(x, *like_x, step)


def torch_kernel_takes(x: Tensor, step: Tensor, *like_x: Tensor) -> bool:
    """Whether torch's fused learnable fake-quant kernels run LSQ on ``x``: float32 on a
    device of :data:`_torch_kernel_devices`, one step per tensor or per output channel."""
    tensors = (x, *like_x, step)
    if x.device.type not in _torch_kernel_devices or x.numel() == 0:
        return False
    same = all(t.dtype == torch.float32 and t.device == x.device for t in tensors)
    return same and _one_step_per_row(x, step)


@contextlib.contextmanager
def torch_kernels_on(devices: set[str]) -> Iterator[None]:
    """Inside the block, LSQ runs on torch's fused kernels on these device types."""
    before = set(_torch_kernel_devices)
    _torch_kernel_devices.clear()
    _torch_kernel_devices.update(devices)
    try:
        yield
    finally:
        _torch_kernel_devices.clear()
        _torch_kernel_devices.update(before)


def _torch_forward(x: Tensor, step: Tensor, qmin: int, qmax: int) -> Tensor:
    """LSQ's forward by torch's learnable fake-quant op (zero point 0)."""
    flat = step.reshape(-1)
    zero = torch.zeros_like(flat)
    if step.numel() == 1:
        return torch._fake_quantize_learnable_per_tensor_affine(x, flat, zero, qmin, qmax, 1.0)
    return torch._fake_quantize_learnable_per_channel_affine(x, flat, zero, 0, qmin, qmax, 1.0)


def _torch_backward(
    x: Tensor, grad: Tensor, step: Tensor, qmin: int, qmax: int, grad_factor: float
) -> tuple[Tensor, Tensor]:
    """LSQ's backward by torch's learnable fake-quant backward: ``(d L / d x,
    d L / d step)``, the step's gradient scaled by ``grad_factor`` (LSQ's ``g``)."""
    flat = step.reshape(-1)
    zero = torch.zeros_like(flat)
    aten = torch.ops.aten
    if step.numel() == 1:
        grad_x, grad_step, _ = aten._fake_quantize_learnable_per_tensor_affine_backward(
            grad, x, flat, zero, qmin, qmax, grad_factor
        )
    else:
        grad_x, grad_step, _ = aten._fake_quantize_learnable_per_channel_affine_backward(
            grad, x, flat, zero, 0, qmin, qmax, grad_factor
        )
    return grad_x, grad_step.reshape(step.shape)


def reference_lsq_gradients(
    x: Tensor,
    grad: Tensor,
    step: Tensor,
    qmin: int,
    qmax: int,
    grad_factor: float,
    step_grad: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """:func:`lsq_gradients` as torch ops, in chunks on the CPU."""
    grad_x = torch.empty_like(grad)
    chunked = _chunkable(step, x, grad, grad_x)
    scratch = _scratch(x, step, chunked)
    sums = [
        _gradients_into(x_part, g_part, step_part, qmin, qmax, gx_part, *scratch(x_part))
        for x_part, g_part, gx_part, step_part in _parts(step, chunked, x, grad, grad_x)
    ]
    grad_step = None
    if step_grad:
        total = torch.cat(sums) if len(sums) > 1 and step.numel() > 1 else sum(sums)
        grad_step = total.reshape(step.shape).mul_(grad_factor).to(step.dtype)
    return grad_x.to(x.dtype), grad_step


def _chunkable(step: Tensor, *tensors: Tensor) -> bool:
    """Chunk non-empty contiguous CPU tensors in eager mode (a compiled graph fuses the
    passes)."""
    if torch.compiler.is_compiling() or step.device.type != "cpu" or tensors[0].numel() == 0:
        return False
    return all(t.is_contiguous() for t in tensors)


def _parts(step: Tensor, chunked: bool, *tensors: Tensor) -> list[tuple[Tensor, ...]]:
    """``tensors`` with ``step``, whole, or in chunks: blocks of rows of the tensors seen
    as ``[steps, elements per step]`` (of columns for a single step)."""
    if not chunked:
        return [(*tensors, step)]
    rows = step.numel()
    flat = [t.view(rows, -1) for t in tensors]
    step2 = step.reshape(rows, 1)
    columns = flat[0].shape[1]
    if rows == 1:
        blocks = [slice(a, a + CHUNK_ELEMENTS) for a in range(0, columns, CHUNK_ELEMENTS)]
        return [(*(t[:, b] for t in flat), step2) for b in blocks]
    per_chunk = max(1, CHUNK_ELEMENTS // columns)
    blocks = [slice(a, a + per_chunk) for a in range(0, rows, per_chunk)]
    return [(*(t[b] for t in flat), step2[b]) for b in blocks]


def _scratch(x: Tensor, step: Tensor, chunked: bool):
    """A function giving two scratch tensors shaped like a part of ``x``: views of two
    buffers allocated once when ``x`` is chunked, fresh tensors otherwise."""
    dtype = torch.result_type(x, step)
    if not chunked:
        return lambda part: (
            torch.empty_like(part, dtype=dtype),
            torch.empty_like(part, dtype=dtype),
        )
    size = min(x.numel(), max(CHUNK_ELEMENTS, x.numel() // step.numel()))
    buffers = torch.empty(2, size, dtype=dtype)
    return lambda part: tuple(b[: part.numel()].view(part.shape) for b in buffers)


def _gradients_into(
    x: Tensor,
    grad: Tensor,
    step: Tensor,
    qmin: int,
    qmax: int,
    grad_x: Tensor,
    v: Tensor,
    r: Tensor,
) -> Tensor:
    """Write ``d L / d x`` into ``grad_x`` and return ``sum(grad * d out / d step)``
    reduced to ``step``'s shape; ``v`` and ``r`` are scratch tensors shaped like ``x``.

    ``grad_x = grad`` where the code ``r = round(x / s)`` is in range (an integer against
    half-integer bounds, so exact); the step term is
    ``sum(grad_x * (r - v)) + sum((grad - grad_x) * clamp(r))`` (inside, outside).
    """
    torch.div(x, step, out=v)
    torch.round(v, out=r)
    torch.ops.aten.hardtanh_backward.grad_input(grad, r, qmin - 0.5, qmax + 0.5, grad_input=grad_x)
    inside = torch.sub(r, v, out=v).mul_(grad_x).sum_to_size(step.shape)
    r.clamp_(qmin, qmax)
    outside = torch.sub(grad, grad_x, out=v).mul_(r).sum_to_size(step.shape)
    return inside.add_(outside)


def lsq_fake_quantize(x: Tensor, step: Tensor, qmin: int, qmax: int, grad_factor: float) -> Tensor:
    """Fake-quantize ``x`` with ``step`` (broadcastable to ``x``) onto ``[qmin, qmax]``."""
    return lsq_op(x, step, qmin, qmax, grad_factor)


def quant_range(bits: int, signed: bool) -> tuple[int, int]:
    """``(-Qn, Qp)``: ``(-2^(b-1), 2^(b-1) - 1)`` signed, ``(0, 2^b - 1)`` unsigned."""
    if bits < 2:
        raise ValueError(f"bits must be >= 2, got {bits}")
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


class LSQQuantizer(nn.Module):
    """An LSQ fake quantizer with one step per tensor or one per output channel.

    Its step is initialised by ``init`` (a rule of :mod:`repq.quant.init`; by default
    the rule :class:`~repq.quant.init.QuantInit` gives weights or activations): from
    calibration batches (:meth:`start_calibration`, the model's forward passes, then
    :meth:`finish_calibration`), or else from the first tensor it quantizes.
    ``enabled = False`` makes it the identity; :meth:`freeze` stops the step from
    learning. ``batched`` (default: a per-tensor quantizer, i.e. an activation one) says
    that dimension 0 of what it quantizes is the batch. No call synchronises with the host.
    """

    def __init__(
        self,
        bits: int,
        signed: bool,
        channels: int | None = None,
        init: str | None = None,
        batched: bool | None = None,
    ) -> None:
        super().__init__()
        self.bits, self.signed = bits, signed
        self.qmin, self.qmax = quant_range(bits, signed)
        self.per_channel = channels is not None
        self.batched = not self.per_channel if batched is None else batched
        self.init = init or QuantInit().rule(weight=self.per_channel)
        self.step = nn.Parameter(torch.ones(channels if self.per_channel else 1))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.enabled = True
        self._ready = False
        self._estimates: list[Tensor] | None = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._ready = bool(self.initialized)

    @property
    def scale(self) -> Tensor:
        """The step in use: ``|step|``, at least ``MIN_STEP``. A learned step that an
        update pushes through zero stays a valid step (as MQBench keeps ``|scale|``),
        and the gradient is unchanged while the step is positive."""
        return self.step.abs().clamp_min(MIN_STEP)

    def _shaped_step(self, x: Tensor) -> Tensor:
        if self.per_channel:
            return self.scale.reshape(-1, *([1] * (x.dim() - 1)))
        return self.scale

    def _elements_per_step(self, x: Tensor) -> int:
        """``N`` of the step's gradient scale: elements of one example (batched) or of
        the whole tensor, per step."""
        elements = math.prod(x.shape[1:]) if self.batched and x.dim() > 1 else x.numel()
        return max(1, elements // self.step.numel())

    def _estimate(self, x: Tensor) -> Tensor:
        return initial_step(x, self.init, self.qmin, self.qmax, self.per_channel)

    @torch.no_grad()
    def _set_step(self, step: Tensor) -> None:
        self.step.copy_(step.reshape(self.step.shape).to(self.step.dtype))
        self.initialized.fill_(True)
        self._ready = True

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set the step from ``x`` by this quantizer's ``init`` rule."""
        self._set_step(self._estimate(x))

    def start_calibration(self) -> None:
        """From now on, forward passes return their input and collect step estimates."""
        self._estimates = []

    def finish_calibration(self) -> None:
        """Set the step to the mean of the collected estimates (if any were collected)."""
        estimates, self._estimates = self._estimates, None
        if estimates:
            self._set_step(torch.stack(estimates).mean(0))

    def _observe(self, x: Tensor) -> Tensor:
        """A calibration pass: a weight is estimated once, an activation every batch."""
        if x.numel() and not (self.per_channel and self._estimates):
            self._estimates.append(self._estimate(x))
        return x

    @property
    def active(self) -> bool:
        """Whether the quantizer quantizes now (enabled, initialised, not calibrating)."""
        return self.enabled and self._ready and self._estimates is None

    def freeze(self) -> LSQQuantizer:
        """Stop learning the step (it stays as it is)."""
        self.step.requires_grad_(False)
        return self

    def forward(self, x: Tensor) -> Tensor:
        if self.enabled and self._estimates is not None:
            return self._observe(x)
        args = self.lsq_args(x)
        return x if args is None else lsq_fake_quantize(x, *args)

    def lsq_args(self, x: Tensor) -> tuple[Tensor, int, int, float] | None:
        """What :meth:`forward` quantizes ``x`` with: ``(step shaped for x, qmin, qmax,
        grad_factor)``, the step initialised from ``x`` if it was not; None where forward
        returns ``x`` as it is (disabled or calibrating)."""
        if not self.enabled or self._estimates is not None:
            return None
        if not self._ready and x.numel():  # an empty tensor has no statistics to learn from
            self.initialize(x)
        grad_factor = 1.0 / math.sqrt(self._elements_per_step(x) * self.qmax)
        return self._shaped_step(x), self.qmin, self.qmax, grad_factor

    @torch.no_grad()
    def integers(self, x: Tensor, clamp: bool = True) -> Tensor:
        """The integer codes ``clamp(round(x / s))`` that the fake quantizer represents
        (unclamped: where ``x`` would land without the range)."""
        codes = torch.round(x / self._shaped_step(x))
        return torch.clamp(codes, self.qmin, self.qmax) if clamp else codes

    def extra_repr(self) -> str:
        kind = "per-channel" if self.per_channel else "per-tensor"
        sign = "signed" if self.signed else "unsigned"
        return f"bits={self.bits}, {sign}, {kind}, init={self.init}, enabled={self.enabled}"
