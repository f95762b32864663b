"""LSQ fake quantization, quantized layers and the per-layer precision policy."""

from repq.quant.layers import QuantConv2d, QuantLayer, QuantLinear, wrap_quantized
from repq.quant.lsq import LSQFunction, LSQQuantizer, lsq_fake_quantize, quant_range
from repq.quant.policy import LayerPrecision, PrecisionPolicy

__all__ = [
    "LSQFunction",
    "LSQQuantizer",
    "LayerPrecision",
    "PrecisionPolicy",
    "QuantConv2d",
    "QuantLayer",
    "QuantLinear",
    "lsq_fake_quantize",
    "quant_range",
    "wrap_quantized",
]
