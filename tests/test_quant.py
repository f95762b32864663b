"""LSQ against torch's learnable fake-quant ops, the integer grid and the policy."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from repq.models import create
from repq.qat import precision_table, prepare, to_deploy
from repq.quant import LSQQuantizer, QuantConv2d, lsq
from repq.quant.policy import LayerPrecision


def _oracle(x, step, qmin, qmax, grad_factor, per_channel):
    zero = torch.zeros_like(step)
    if per_channel:
        return torch._fake_quantize_learnable_per_channel_affine(
            x, step, zero, 0, qmin, qmax, grad_factor
        )
    return torch._fake_quantize_learnable_per_tensor_affine(x, step, zero, qmin, qmax, grad_factor)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("per_channel", [False, True], ids=["tensor", "channel"])
@pytest.mark.parametrize(
    ("layout", "chunk"),
    [
        (torch.contiguous_format, None),
        (torch.contiguous_format, 7),
        (torch.channels_last, None),
        ("mixed", 7),
    ],
    ids=["whole", "chunks-of-7", "channels-last", "channels-last-gradient"],
)
def test_lsq_matches_torch_learnable_fake_quant(
    bits, signed, per_channel, layout, chunk, monkeypatch
):
    if chunk:  # several chunks, rows (per channel) and columns (per tensor) alike
        monkeypatch.setattr(lsq, "CHUNK_ELEMENTS", chunk)
    x = torch.randn(6, 5, 4, 4) * 3
    if layout != "mixed":
        x = x.contiguous(memory_format=layout)
    quantizer = LSQQuantizer(bits, signed, 6 if per_channel else None, init="lsq")
    quantizer.initialize(x)
    with torch.no_grad():
        quantizer.step.mul_(torch.rand_like(quantizer.step) + 0.5)
    n = x.numel() // quantizer.step.numel()
    grad_factor = 1.0 / math.sqrt(n * quantizer.qmax)
    dy = torch.randn_like(x)
    if layout == "mixed":  # a contiguous input with a channels-last gradient
        dy = dy.contiguous(memory_format=torch.channels_last)

    xa = x.clone().requires_grad_()
    ours = quantizer(xa)
    ours.backward(dy)

    xb = x.clone().requires_grad_()
    step = quantizer.step.detach().clone().requires_grad_()
    ref = _oracle(xb, step, quantizer.qmin, quantizer.qmax, grad_factor, per_channel)
    ref.backward(dy)

    assert torch.allclose(ours, ref, rtol=1e-6, atol=1e-6)
    assert torch.allclose(xa.grad, xb.grad)
    assert torch.allclose(quantizer.step.grad, step.grad, rtol=1e-5, atol=1e-7)


def test_an_empty_batch_passes_through_with_a_zero_step_gradient():
    quantizer = LSQQuantizer(8, False)
    quantizer(torch.rand(0, 3, 2, 2))  # no statistics: the step waits for real data
    assert not bool(quantizer.initialized)
    quantizer(torch.rand(4, 3, 2, 2))
    x = torch.rand(0, 3, 2, 2, requires_grad=True)
    out = quantizer(x)
    out.sum().backward()
    assert out.shape == x.shape and x.grad.shape == x.shape
    assert quantizer.step.grad is not None and float(quantizer.step.grad.abs().sum()) == 0.0


def test_step_initialisation_follows_lsq():
    w = torch.randn(8, 4, 3, 3)
    q = LSQQuantizer(4, True, 8, init="lsq")
    q(w)
    expected = 2 * w.abs().mean(dim=(1, 2, 3)) / math.sqrt(7)
    assert torch.allclose(q.step, expected)
    a = LSQQuantizer(8, False, init="lsq")
    x = torch.rand(2, 3, 5, 5)
    a(x)
    assert torch.allclose(a.step, 2 * x.abs().mean().reshape(1) / math.sqrt(255))


def test_disabled_is_identity_and_frozen_step_does_not_learn():
    q = LSQQuantizer(4, True)
    x = torch.randn(10)
    q.enabled = False
    assert torch.equal(q(x), x)
    q.enabled = True
    q.freeze()
    q(x.requires_grad_()).sum().backward()
    assert q.step.grad is None


def test_step_survives_a_state_dict_round_trip():
    q = LSQQuantizer(4, True, 3)
    q(torch.randn(3, 2))
    fresh = LSQQuantizer(4, True, 3)
    fresh.load_state_dict(q.state_dict())
    x = torch.randn(3, 2) * 10
    assert torch.equal(fresh(x), q(x))


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("method", ["merged", "repq", "bnest"])
def test_deployed_weights_lie_on_the_integer_grid(bits, method):
    model = create("repvgg_a0", num_classes=10, width_mult=0.25)
    qat = prepare(model, method, bits)
    qat.train()(torch.randn(4, 3, 32, 32))
    deploy = to_deploy(qat)
    layers = [
        m for m in deploy.modules() if isinstance(m, nn.Module) and hasattr(m, "weight_quant")
    ]
    assert layers
    for layer in layers:
        codes = layer.weight / layer.weight_quant.step.reshape(-1, *[1] * (layer.weight.dim() - 1))
        wb = layer.precision.weight_bits
        assert torch.allclose(codes, codes.round(), atol=1e-3)
        assert codes.round().min() >= -(2 ** (wb - 1)) and codes.round().max() <= 2 ** (wb - 1) - 1


def test_quantized_conv_runs_under_bf16_autocast():
    conv = QuantConv2d(nn.Conv2d(4, 8, 3, padding=1), LayerPrecision("c", 4, 4, True))
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16
    assert torch.isfinite(conv.weight_quant.step.grad).all() and torch.isfinite(x.grad).all()


def _rows(model_name, bits, **kwargs):
    table = precision_table(prepare(create(model_name, **kwargs), "repq", bits))
    return [(p.weight_bits, p.input_bits, p.input_signed) for p in table]


def test_precision_follows_s1_at_4_bits():
    small = {"num_classes": 10, "width_mult": 0.25}
    repvgg = _rows("repvgg_a0", 4, **small)
    assert repvgg[0] == (4, 8, True) and set(repvgg[1:]) == {(4, 4, False)}
    ac = _rows("ac_resnet18", 4, **small)
    assert ac[0] == (8, 8, True) and set(ac[1:]) == {(4, 4, False)}
    orepa = _rows("orepa_resnet18", 4, **small)
    assert orepa[0] == (8, 8, True) and orepa[-1] == (8, 8, False)
    assert set(orepa[1:-1]) == {(4, 4, False)}
    ecbsr = _rows("ecbsr", 4, m=2, c=8)
    assert ecbsr[0] == ecbsr[-1] == (8, 8, True) and set(ecbsr[1:-1]) == {(4, 4, True)}


@pytest.mark.parametrize("name", ["repvgg_a0", "ac_resnet18", "orepa_resnet18", "ecbsr"])
def test_everything_is_8_bit_at_8_bits(name):
    kwargs = {"m": 2, "c": 8} if name == "ecbsr" else {"num_classes": 10, "width_mult": 0.25}
    assert {r[:2] for r in _rows(name, 8, **kwargs)} == {(8, 8)}


def test_precision_table_names_every_layer_in_order():
    table = precision_table(
        prepare(create("ac_resnet18", num_classes=10, width_mult=0.25), "repq", 4)
    )
    names = [p.name for p in table]
    assert names[0] == "stem.0" and names[-1] == "classifier"
    assert len(names) == 1 + 16 + 3 + 1
    assert "layers.1.0.shortcut" in names
