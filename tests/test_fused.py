"""The fused quantize-quantize-convolve path against the separate one (each quantizer's
lsq op, then the conv or linear): outputs, gradients of the input, weight, bias and
both steps, and what each path saves for backward."""

from __future__ import annotations

import pytest
import torch
from conftest import layer_gradients
from torch import nn

from repq.models import create
from repq.qat import calibrate, prepare
from repq.quant.layers import QuantConv2d, QuantLayer, QuantLinear, set_recompute
from repq.quant.policy import LayerPrecision

# gradients are compared for equality: the fused backward runs the same aten ops on the
# same tensors (measured: 0 difference in every case, linear and bf16 included)


def _conv(stride=1, groups=1, kernel=3, bias=True, **precision) -> QuantConv2d:
    conv = nn.Conv2d(8, 16, kernel, stride, kernel // 2, groups=groups, bias=bias)
    layer = QuantConv2d(conv, LayerPrecision("conv", **precision))
    return layer


def _linear(**precision) -> QuantLinear:
    layer = QuantLinear(nn.Linear(24, 10), LayerPrecision("fc", **precision))
    return layer


def _input(layer: QuantLayer, signed: bool) -> torch.Tensor:
    shape = (3, 8, 9, 11) if isinstance(layer, QuantConv2d) else (4, 5, 24)
    x = torch.randn(shape)
    return x if signed else x.relu()


def _separate(layer: QuantLayer, x: torch.Tensor) -> torch.Tensor:
    weight = layer.weight_quant(layer.weight)
    return layer.apply_op(layer.input_quant(x), weight, layer.forward_bias(layer.bias))


LAYERS = {
    "conv 3x3": lambda **p: _conv(**p),
    "conv stride 2 grouped": lambda **p: _conv(stride=2, groups=4, **p),
    "conv 1x1 without bias": lambda **p: _conv(kernel=1, bias=False, **p),
    "linear on 3-d input": lambda **p: _linear(**p),
}
PRECISIONS = [
    {"weight_bits": 8, "input_bits": 8, "input_signed": False},
    {"weight_bits": 4, "input_bits": 4, "input_signed": True},
]


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("precision", PRECISIONS, ids=["8-bit unsigned", "4-bit signed"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_the_fused_path_equals_the_separate_one(kind, precision, training):
    layer = LAYERS[kind](**precision)
    x = _input(layer, precision["input_signed"])
    calibrate(layer, [x])
    layer.train(training)
    fused_out, fused = layer_gradients(layer, x)
    separate_out, separate = layer_gradients(layer, x, _separate)
    assert torch.equal(fused_out, separate_out)
    assert fused.keys() == separate.keys() >= {"input", "weight", "input_quant.step"}
    for name, grad in separate.items():
        assert torch.equal(fused[name], grad), name


def test_the_fused_path_runs_and_saves_the_float_operands_only():
    layer = _conv(weight_bits=8, input_bits=8, input_signed=False)
    x = _input(layer, signed=False)
    calibrate(layer, [x])
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = x.requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x)
    assert type(out.grad_fn).__name__ == "QuantizedOpFunctionBackward"
    big = sorted(n for n in saved.values() if n > 64)  # the two steps are views of 64 bytes
    assert big == sorted([x.untyped_storage().nbytes(), layer.weight.untyped_storage().nbytes()])
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _separate(layer, x)
    # the separate path keeps Q_a(x) and Q_w(W) as well
    assert sum(saved.values()) >= sum(big) + x.numel() * 4 + layer.weight.numel() * 4


def test_a_calibrating_or_disabled_quantizer_takes_the_separate_path():
    layer = _conv(weight_bits=8, input_bits=8, input_signed=False)
    x = _input(layer, signed=False).requires_grad_(True)
    layer.input_quant.start_calibration()
    layer.weight_quant.start_calibration()
    assert torch.equal(layer(x), layer.apply_op(x, layer.weight, layer.bias))
    layer.input_quant.finish_calibration()
    layer.weight_quant.finish_calibration()
    layer.input_quant.enabled = False
    out = layer(x)
    assert type(out.grad_fn).__name__ != "QuantizedOpFunctionBackward"
    assert torch.equal(out, layer.apply_op(x, layer.weight_quant(layer.weight), layer.bias))


@pytest.mark.parametrize("kind", ["conv 3x3", "linear on 3-d input"])
def test_the_fused_path_under_bf16_autocast_equals_the_separate_one(kind):
    layer = LAYERS[kind](weight_bits=8, input_bits=8, input_signed=False)
    x = _input(layer, signed=False)
    calibrate(layer, [x])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused_out, fused = layer_gradients(layer, x)
        separate_out, separate = layer_gradients(layer, x, _separate)
    assert fused_out.dtype == torch.bfloat16 and torch.equal(fused_out, separate_out)
    for name, grad in separate.items():
        assert fused[name].dtype == grad.dtype and torch.equal(fused[name], grad), name


def test_recompute_is_on_by_default_and_set_recompute_turns_it_off_for_a_model():
    model = prepare(create("repvgg_a0", num_classes=12, width_mult=0.25), "merged", 8)
    x = torch.randn(2, 3, 32, 32)
    calibrate(model, [x])
    first = next(m for m in model.modules() if isinstance(m, QuantConv2d))
    fused = "QuantizedOpFunctionBackward"
    assert type(first(x).grad_fn).__name__ == fused
    reference = model(x)
    assert set_recompute(model, False) == 23  # 22 convs and the classifier
    assert type(first(x).grad_fn).__name__ != fused
    assert torch.equal(model(x), reference)
