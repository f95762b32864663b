"""Per-layer precision: which bit widths and signedness each quantized layer gets.

Supplementary S1, at 4 bits: ECBSR and OREPA-ResNet-18 keep the first and last layers
fully 8-bit; AC-ResNet-18 keeps only the first layer 8-bit; RepVGG keeps only the
*input* of the first layer 8-bit. At 8 bits everything is 8-bit. Inputs are unsigned
where they are non-negative (after ReLU; ECBSR's 0-255 luma input, which an integer
deployment receives as uint8) and signed otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FirstRule = Literal["same", "input", "full"]
LastRule = Literal["same", "full"]


@dataclass(frozen=True)
class LayerPrecision:
    """The precision of one quantized layer."""

    name: str
    weight_bits: int
    input_bits: int
    input_signed: bool


@dataclass(frozen=True)
class PrecisionPolicy:
    """How the quantized layers of a model get their precision.

    ``first``: ``"full"`` keeps the first layer's weight and input at ``high_bits``,
    ``"input"`` only its input, ``"same"`` neither; ``last``: ``"full"`` keeps the last
    layer at ``high_bits``. ``signed_input``: whether the network's input is signed (a
    normalised image) or not (ECBSR's 0-255 luma); ``signed_hidden``: whether the later
    layers' inputs are (ECBSR: after PReLU) or not (after ReLU).
    """

    first: FirstRule = "same"
    last: LastRule = "same"
    signed_input: bool = True
    signed_hidden: bool = False
    high_bits: int = 8

    def layer(self, name: str, index: int, count: int, bits: int) -> LayerPrecision:
        """Precision of the ``index``-th of ``count`` quantized layers (forward order)."""
        is_first, is_last = index == 0, index == count - 1
        weight_bits = input_bits = bits
        if is_first and self.first != "same":
            input_bits = max(bits, self.high_bits)
            if self.first == "full":
                weight_bits = max(bits, self.high_bits)
        if is_last and self.last == "full":
            weight_bits = input_bits = max(bits, self.high_bits)
        signed = self.signed_input if is_first else self.signed_hidden
        return LayerPrecision(name, weight_bits, input_bits, signed)
