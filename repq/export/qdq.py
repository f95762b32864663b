"""The integer form of a quantized model: every quantized layer holds its weight as
integer codes with per-output-channel steps and quantizes its input with its per-tensor
step, through the ops of :mod:`repq.export.ops`. What ``torch.onnx.export`` traces."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repq.errors import CheckpointError
from repq.export.ops import check_bits, dequantize_weight, quantize_dequantize
from repq.qat import to_deploy
from repq.quant.layers import QuantConv2d, QuantLayer
from repq.reparam.surgery import replace_modules

UNSIGNED_OFFSET = 128
"""8-bit weight codes are stored as UINT8 ``code + 128`` with zero point 128: integer
engines then run u8 x u8 kernels. u8 x s8 (INT8 codes) saturates on x86 CPUs without
VNNI (AVX2: ``vpmaddubsw`` adds two products into int16), which the identity taps of
merged RepVGG kernels reach: measured on an AVX2 host, INT8 codes gave 91.3% top-1
agreement with PyTorch for the demo's 8-bit RepVGG-A0, UINT8 codes 100%."""


class QDQLayer(nn.Module):
    """A deploy layer in integer form: ``layer(Q_a(x), codes * steps) + bias``.

    Buffers: ``codes`` (the weight's integer codes: 4-bit ones as int8, which an ONNX
    export stores as ``INT4``; 8-bit ones as uint8 ``code + UNSIGNED_OFFSET``, with
    ``codes_zero_point``), ``weight_scale`` (one step per output channel),
    ``input_scale`` (the input's step) and the bias as ``bias_codes`` (int32) of step
    ``bias_scale`` (``s_x * s_w``); a layer whose input stays float keeps a float bias."""

    def __init__(self, layer: QuantLayer) -> None:
        super().__init__()
        weight, bias = layer.weight, layer.bias
        check_bits(layer.weight_quant.bits, f"{layer.precision.name}'s weight")
        self.weight_bits = layer.weight_quant.bits
        codes = layer.weight_quant.integers(weight)
        if self.weight_bits == 8:
            zero = torch.full((codes.shape[0],), UNSIGNED_OFFSET, dtype=torch.uint8)
            self.register_buffer("codes", (codes + UNSIGNED_OFFSET).to(torch.uint8))
            self.register_buffer("codes_zero_point", zero)
        else:
            self.register_buffer("codes", codes.to(torch.int8))
        self.register_buffer("weight_scale", layer.weight_quant.scale.detach().clone())
        self.input_range: tuple[int, int] | None = None
        self.float_bias = None if bias is None else nn.Parameter(bias.detach().clone())
        if layer.input_quant.enabled:
            check_bits(layer.input_quant.bits, f"{layer.precision.name}'s input")
            self.input_range = (layer.input_quant.qmin, layer.input_quant.qmax)
            self.register_buffer("input_scale", layer.input_quant.scale.detach().clone())
            if bias is not None:
                step = layer.bias_step()
                self.register_buffer("bias_codes", torch.round(bias / step).to(torch.int32))
                self.register_buffer("bias_scale", step.clone())
                self.float_bias = None

    def quantized_input(self, x: Tensor) -> Tensor:
        if self.input_range is None:
            return x
        return quantize_dequantize(x, self.input_scale, *self.input_range)

    def weight(self) -> Tensor:
        zero = getattr(self, "codes_zero_point", None)
        return dequantize_weight(self.codes, self.weight_scale, self.weight_bits, zero)

    def bias(self) -> Tensor | None:
        if self.float_bias is not None or not hasattr(self, "bias_codes"):
            return self.float_bias
        return dequantize_weight(self.bias_codes, self.bias_scale, 32)


class QDQConv2d(QDQLayer):
    def __init__(self, layer: QuantConv2d) -> None:
        super().__init__(layer)
        self.stride, self.padding = layer.stride, layer.padding
        self.dilation, self.groups = layer.dilation, layer.groups

    def forward(self, x: Tensor) -> Tensor:
        x = self.quantized_input(x)
        return F.conv2d(
            x, self.weight(), self.bias(), self.stride, self.padding, self.dilation, self.groups
        )


class QDQLinear(QDQLayer):
    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.quantized_input(x), self.weight(), self.bias())


def _integer_layer(layer: QuantLayer) -> QDQLayer:
    return QDQConv2d(layer) if isinstance(layer, QuantConv2d) else QDQLinear(layer)


def quantized_layers(model: nn.Module) -> list[QuantLayer]:
    return [m for m in model.modules() if isinstance(m, QuantLayer)]


def integer_form(model: nn.Module) -> nn.Module:
    """The integer form of a prepared (PTQ or QAT) model, in eval mode: its deploy model
    (:func:`repq.qat.to_deploy`) with every quantized layer a :class:`QDQLayer`. The
    model itself is left as it is."""
    layers = quantized_layers(model)
    if not layers:
        raise CheckpointError("the model has no quantized layer: only PTQ and QAT models export")
    off = [layer.precision.name for layer in layers if not layer.weight_quant.enabled]
    if off:
        raise CheckpointError(f"weight quantizers are disabled in {off}: nothing to export")
    deploy = to_deploy(model)  # every quantized layer is now a QuantConv2d or QuantLinear
    replace_modules(deploy, lambda _, m: _integer_layer(m) if isinstance(m, QuantLayer) else None)
    return deploy.eval()


def float_form(model: nn.Module) -> nn.Module:
    """The same deploy model in float: each quantized layer a plain conv or linear with
    its (on-grid) float weight and no input quantizer: the FP32 reference export."""
    deploy = to_deploy(model)

    def plain(layer: QuantLayer) -> nn.Module:
        shell = layer.deploy_shell().to(layer.weight.dtype)
        with torch.no_grad():
            shell.weight.copy_(layer.weight)
            if layer.bias is not None:
                shell.bias.copy_(layer.bias)
        return shell

    replace_modules(deploy, lambda _, m: plain(m) if isinstance(m, QuantLayer) else None)
    return deploy.eval()
