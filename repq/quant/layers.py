"""Quantized conv and linear layers: LSQ on the input (per tensor) and on the weight
(per output channel), and, in eval mode and deployed, the bias on the grid of the
integer accumulator.

An integer engine computes ``sum(codes_x * codes_w)`` in int32 and adds the bias there,
so the deployed bias is an int32 code with step ``s_x * s_w[c]`` (onnxruntime rounds a
float bias so before it fuses ``QLinearConv``). At 4 bits that rounding changes the
predictions of a trained network, so evaluation and deployment use it; training keeps
the float bias unless ``train_bias`` is ``int32`` (the recipe's ``quant.train_bias``;
the ablations measure both, ``config/ablations.yaml``)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repq.quant.fused import Conv2dOp, LinearOp, quantized_op
from repq.quant.init import QuantInit
from repq.quant.lsq import LSQQuantizer
from repq.quant.policy import LayerPrecision

INT32_RANGE = (-(2**31), 2**31 - 1)
TRAIN_BIASES = ("float", "int32")
"""The bias of a quantized layer in training (``quant.train_bias``): float, or on the
accumulator's int32 grid as deployed (straight-through)."""
RECOMPUTE = True
"""Whether quantized convs and linears recompute ``Q_a(x)`` and ``Q_w(W)`` in backward
by default (``train.recompute_quantized``): less peak memory than storing them at about
the same step time (``benchmarks/train_step.py``, variants ``merged`` and
``merged_stored``; docs/performance.md)."""


class QuantLayer(nn.Module, ABC):
    """Common part of every quantized layer: its precision and its two quantizers."""

    def __init__(
        self, precision: LayerPrecision, out_channels: int, init: QuantInit | None = None
    ) -> None:
        super().__init__()
        init = init or QuantInit()
        self.precision = precision
        self.input_quant = LSQQuantizer(
            precision.input_bits, precision.input_signed, init=init.activation
        )
        self.weight_quant = LSQQuantizer(precision.weight_bits, True, out_channels, init.weight)
        self.recompute = RECOMPUTE
        self.train_bias = TRAIN_BIASES[0]

    def bias_step(self) -> Tensor:
        """The accumulator's step per output channel: ``s_x * s_w``."""
        return (self.input_quant.scale * self.weight_quant.scale).detach()

    def deploy_bias(self, bias: Tensor | None) -> Tensor | None:
        """``bias`` on the accumulator's int32 grid (straight-through) while both
        quantizers quantize; unchanged otherwise (float, calibrating, or a deploy layer,
        whose bias is on the grid already)."""
        if bias is None or not (self.input_quant.active and self.weight_quant.active):
            return bias
        codes = torch.round(bias / self.bias_step()).clamp_(*INT32_RANGE)
        return bias + (codes * self.bias_step() - bias).detach()

    def forward_bias(self, bias: Tensor | None) -> Tensor | None:
        """The bias of a forward pass: as deployed in eval mode; in training float, or
        as deployed where ``train_bias`` is ``int32``."""
        if self.training and self.train_bias == "float":
            return bias
        return self.deploy_bias(bias)

    def quantized_forward(
        self, x: Tensor, weight: Tensor, bias: Tensor | None, op: Conv2dOp | LinearOp | None
    ) -> Tensor:
        """``op(Q_a(x), Q_w(weight), bias)`` (the bias as :meth:`forward_bias` gives it):
        with ``recompute`` set, one fused function that recomputes ``Q_a(x)`` and
        ``Q_w(W)`` in backward (:mod:`repq.quant.fused`) where both quantizers quantize in
        eager mode; else each quantizer, then :meth:`apply_op` (also while calibrating,
        with a quantizer off, in a compiled graph, or without a fused ``op``)."""
        fusable = self.recompute and op is not None and not torch.compiler.is_compiling()
        w_args = self.weight_quant.lsq_args(weight) if fusable else None
        x_args = self.input_quant.lsq_args(x) if w_args is not None else None
        if x_args is None:
            weight, x = self.weight_quant(weight), self.input_quant(x)
            return self.apply_op(x, weight, self.forward_bias(bias))
        return quantized_op(x, weight, self.forward_bias(bias), x_args, w_args, op)

    @abstractmethod
    def apply_op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """The layer's conv or linear of (quantized) ``x`` and ``weight``."""

    @abstractmethod
    def float_weight(self) -> tuple[Tensor, Tensor | None]:
        """The float deploy weight and bias (eval-mode statistics)."""

    @abstractmethod
    def deploy_shell(self) -> nn.Conv2d | nn.Linear:
        """A plain layer with the deploy geometry (its values are overwritten)."""

    @torch.no_grad()
    def to_deploy(self) -> QuantLayer:
        """The deployable layer: a plain conv or linear holding the fake-quantized weight,
        with this layer's steps. Its weight quantizer is disabled since the weight is
        already on the grid (``weight_quant.integers(weight)`` gives the codes)."""
        weight, bias = self.float_weight()
        shell = self.deploy_shell().to(device=weight.device, dtype=weight.dtype)
        shell.weight.copy_(self.weight_quant(weight))
        if bias is not None:
            shell.bias.copy_(self.deploy_bias(bias))
        layer = wrap_quantized(
            shell, self.precision, QuantInit(self.weight_quant.init, self.input_quant.init)
        )
        layer.input_quant.load_state_dict(self.input_quant.state_dict())
        layer.weight_quant.load_state_dict(self.weight_quant.state_dict())
        layer.input_quant.enabled = self.input_quant.enabled
        layer.weight_quant.enabled = False
        return layer.eval()


class QuantConv2d(QuantLayer):
    """``conv(Q_a(x), Q_w(W)) + b`` with the geometry of the conv it wraps."""

    def __init__(
        self, conv: nn.Conv2d, precision: LayerPrecision, init: QuantInit | None = None
    ) -> None:
        super().__init__(precision, conv.out_channels, init)
        if conv.padding_mode != "zeros":
            raise ValueError(f"{conv}: only zero padding is supported")
        self.weight, self.bias = conv.weight, conv.bias
        self.stride, self.padding = conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups

    def forward(self, x: Tensor) -> Tensor:
        return self.quantized_forward(x, self.weight, self.bias, self._op)

    @property
    def _op(self) -> Conv2dOp | None:
        if isinstance(self.padding, str):  # "same"/"valid": F.conv2d's own backward
            return None
        return Conv2dOp(self.stride, self.padding, self.dilation, self.groups)

    def apply_op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def float_weight(self) -> tuple[Tensor, Tensor | None]:
        return self.weight, self.bias

    def deploy_shell(self) -> nn.Conv2d:
        out_channels, in_per_group, kh, kw = self.weight.shape
        return nn.Conv2d(
            in_per_group * self.groups,
            out_channels,
            (kh, kw),
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            bias=self.bias is not None,
        )

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, stride={self.stride}, padding={self.padding}"


class QuantLinear(QuantLayer):
    """``Q_a(x) Q_w(W)^T + b``."""

    def __init__(
        self, linear: nn.Linear, precision: LayerPrecision, init: QuantInit | None = None
    ) -> None:
        super().__init__(precision, linear.out_features, init)
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: Tensor) -> Tensor:
        return self.quantized_forward(x, self.weight, self.bias, LinearOp())

    def apply_op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    def float_weight(self) -> tuple[Tensor, Tensor | None]:
        return self.weight, self.bias

    def deploy_shell(self) -> nn.Linear:
        out_features, in_features = self.weight.shape
        return nn.Linear(in_features, out_features, bias=self.bias is not None)


def set_recompute(model: nn.Module, enabled: bool = True) -> int:
    """Recompute the quantized operands of every quantized layer in backward
    instead of storing them (as timm's ``set_grad_checkpointing``, memory for time);
    returns how many layers it set."""
    layers = [m for m in model.modules() if isinstance(m, QuantLayer)]
    for layer in layers:
        layer.recompute = enabled
    return len(layers)


def wrap_quantized(
    layer: nn.Conv2d | nn.Linear, precision: LayerPrecision, init: QuantInit | None = None
) -> QuantLayer:
    """The quantized counterpart of a plain conv or linear layer (sharing its tensors)."""
    if isinstance(layer, nn.Conv2d):
        return QuantConv2d(layer, precision, init)
    if isinstance(layer, nn.Linear):
        return QuantLinear(layer, precision, init)
    raise TypeError(f"cannot quantize {type(layer).__name__}")
