"""LSQ fake quantization, quantized layers and the per-layer precision policy."""

from repq.quant.init import INIT_RULES, QuantInit, initial_step
from repq.quant.layers import (
    QuantConv2d,
    QuantLayer,
    QuantLinear,
    set_recompute,
    wrap_quantized,
)
from repq.quant.lsq import LSQQuantizer, lsq_fake_quantize, quant_range
from repq.quant.policy import LayerPrecision, PrecisionPolicy

__all__ = [
    "INIT_RULES",
    "LSQQuantizer",
    "LayerPrecision",
    "PrecisionPolicy",
    "QuantConv2d",
    "QuantInit",
    "QuantLayer",
    "QuantLinear",
    "initial_step",
    "lsq_fake_quantize",
    "quant_range",
    "set_recompute",
    "wrap_quantized",
]
