"""The two operations of an integer model, as torch custom ops with ONNX translations.

* ``repq::quantize_dequantize(x, scale, qmin, qmax)``: per-tensor fake quantization of
  an activation, ``clamp(round(x / s), qmin, qmax) * s`` (the LSQ forward), exported as
  ``QuantizeLinear`` then ``DequantizeLinear`` (opset 21), zero point 0;
* ``repq::dequantize_weight(codes, scale, bits, zero_point)``: integer codes less their
  zero point (none: 0) times their per-output-channel steps, exported as
  ``DequantizeLinear(axis=0)`` of an integer initializer: a weight (``bits`` 4 or 8) or
  a bias (32: int32 codes of step ``s_x * s_w``, what an integer engine adds to its
  accumulator).

The container of a ``b``-bit code is ``INT<b>``/``UINT<b>`` for the bit widths ONNX has
(4 and 8, opset 21): ``QuantizeLinear`` saturates to the container's range, which is
then exactly ``[qmin, qmax]``. Both ops run eagerly with the values LSQ gives, so the
export model computes in PyTorch what it exports.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from repq.errors import ConfigError

CONTAINER_BITS = (4, 8)
"""Bit widths with an ONNX integer type (opset 21: INT4/UINT4, INT8/UINT8)."""


def check_bits(bits: int, what: str) -> None:
    """A clear error for a bit width that has no exact ONNX container."""
    if bits not in CONTAINER_BITS:
        raise ConfigError(f"{what} is {bits}-bit; ONNX QDQ export supports {CONTAINER_BITS}")


def code_range(bits: int, signed: bool) -> tuple[int, int]:
    """``(qmin, qmax)`` of a ``bits``-bit container."""
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


@torch.library.custom_op("repq::quantize_dequantize", mutates_args=())
def quantize_dequantize(x: Tensor, scale: Tensor, qmin: int, qmax: int) -> Tensor:
    """``clamp(round(x / scale), qmin, qmax) * scale`` (round half to even)."""
    return torch.div(x, scale).round_().clamp_(qmin, qmax).mul_(scale)


@quantize_dequantize.register_fake
def _(x: Tensor, scale: Tensor, qmin: int, qmax: int) -> Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("repq::dequantize_weight", mutates_args=())
def dequantize_weight(
    codes: Tensor, scale: Tensor, bits: int, zero_point: Tensor | None = None
) -> Tensor:
    """``(codes - zero_point) * scale``, one step and one zero point per output channel
    (dimension 0)."""
    values = codes.to(scale.dtype)
    if zero_point is not None:
        values = values - _per_channel(zero_point.to(scale.dtype), codes)
    return values * _per_channel(scale, codes)


def _per_channel(values: Tensor, like: Tensor) -> Tensor:
    return values.reshape(-1, *([1] * (like.dim() - 1)))


@dequantize_weight.register_fake
def _(codes: Tensor, scale: Tensor, bits: int, zero_point: Tensor | None = None) -> Tensor:
    return torch.empty_like(codes, dtype=scale.dtype)


def translation_table() -> dict[Callable, Callable]:
    """The ONNX translations of both ops, for ``torch.onnx.export``'s
    ``custom_translation_table`` (onnxscript is imported here only)."""
    import onnx_ir as ir
    from onnxscript import opset21 as op

    def container(bits: int, signed: bool) -> ir.DataType:
        names = {4: ("UINT4", "INT4"), 8: ("UINT8", "INT8"), 32: ("UINT32", "INT32")}
        return getattr(ir.DataType, names[bits][signed])

    def zero_of(dtype: ir.DataType):
        return op.Constant(value=ir.tensor(np.zeros((), dtype=dtype.numpy()), dtype=dtype))

    def onnx_quantize_dequantize(x, scale, qmin: int, qmax: int):
        bits = (qmax - qmin + 1).bit_length() - 1
        zero = zero_of(container(bits, qmin < 0))  # its type is QuantizeLinear's output's
        return op.DequantizeLinear(op.QuantizeLinear(x, scale, zero), scale, zero)

    def onnx_dequantize_weight(codes, scale, bits: int, zero_point=None):
        if zero_point is not None:  # UINT8 codes (repq.export.qdq.UNSIGNED_OFFSET)
            return op.DequantizeLinear(codes, scale, zero_point, axis=0)
        # zero point left out: 0 of the codes' type
        typed = op.Cast(codes, to=container(bits, True)) if bits == 4 else codes  # INT4 data
        return op.DequantizeLinear(typed, scale, axis=0)

    return {
        torch.ops.repq.quantize_dequantize.default: onnx_quantize_dequantize,
        torch.ops.repq.dequantize_weight.default: onnx_dequantize_weight,
    }
