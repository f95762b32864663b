"""LSQ against torch's learnable fake-quant ops, the integer grid and the policy."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import rel_err
from torch import nn

from repq.models import create
from repq.qat import precision_table, prepare, to_deploy
from repq.quant import LSQQuantizer, QuantConv2d, QuantLinear, lsq
from repq.quant.init import QuantInit
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
    n = (x.numel() if per_channel else x[0].numel()) // quantizer.step.numel()
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
    # the step gradient is a float32 sum of 80 to 480 terms that largely cancel: against
    # a float64 reference ours errs by up to 5.4e-5 relative (per tensor, channels last,
    # 40 seeds), so it is checked against that reference rather than torch's op
    exact = _step_gradient_float64(x, quantizer, dy, grad_factor)
    assert torch.allclose(quantizer.step.grad.double(), exact, rtol=1e-4, atol=1e-7)


def _step_gradient_float64(x, quantizer, dy, grad_factor) -> torch.Tensor:
    """LSQ's step gradient in float64: ``g * sum dy * (round(v) - v)`` inside the range,
    ``g * sum dy * clamp(round(v))`` outside (``v = x / s``)."""
    step = quantizer.step.detach().double()
    shape = (-1, *([1] * (x.dim() - 1))) if quantizer.per_channel else (1,)
    v = x.double() / step.reshape(shape)
    r = torch.round(v)
    inside = (r >= quantizer.qmin) & (r <= quantizer.qmax)
    terms = dy.double() * torch.where(inside, r - v, r.clamp(quantizer.qmin, quantizer.qmax))
    dims = tuple(range(1, x.dim())) if quantizer.per_channel else tuple(range(x.dim()))
    return grad_factor * terms.sum(dims).reshape(-1)


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
        codes = layer.weight / layer.weight_quant.scale.reshape(-1, *[1] * (layer.weight.dim() - 1))
        wb = layer.precision.weight_bits
        assert torch.allclose(codes, codes.round(), rtol=0, atol=1e-4)  # measured 7.6e-6
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
    # ECBSR's first input is the 0-255 luma (unsigned); the others follow a PReLU
    assert ecbsr[0] == (8, 8, False) and ecbsr[-1] == (8, 8, True)
    assert set(ecbsr[1:-1]) == {(4, 4, True)}


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


def _identity_dominated_kernel() -> torch.Tensor:
    """The merged kernel of a RepVGG block whose identity tap is 13-25x the mean weight
    (as in trained RepVGG models: the identity branch adds a 1 to the centre tap)."""
    from conftest import randomize

    from repq.reparam import RepVGGBlock

    block = randomize(RepVGGBlock(16, 16, 3), scale=0.02).eval()
    with torch.no_grad():
        block.identity.weight.fill_(1.0)
        block.identity.running_var.fill_(1.0)
        return block.kernel_bias()[0]


def _relative_error(rule: str, bits: int, kernel: torch.Tensor) -> tuple[float, float]:
    """Squared error of the fake-quantized kernel relative to its energy, and the
    largest relative error of an identity tap, with the step of ``rule``."""
    quantizer = LSQQuantizer(bits, True, 16, init=rule)
    quantizer.initialize(kernel)
    with torch.no_grad():
        quantized = quantizer(kernel)
    error = float((quantized - kernel).square().sum() / kernel.square().sum())
    taps = torch.arange(16)
    tap = kernel[taps, taps, 1, 1]
    tap_error = float(((quantized[taps, taps, 1, 1] - tap).abs() / tap.abs()).max())
    return error, tap_error


def test_the_mse_step_keeps_an_identity_dominated_kernel_that_the_lsq_rule_clips():
    kernel = _identity_dominated_kernel()
    lsq_8, lsq_tap_8 = _relative_error("lsq", 8, kernel)
    mse_8, mse_tap_8 = _relative_error("mse", 8, kernel)
    # measured: lsq 1.7e-3 with the identity tap clipped by 11%; mse 4.1e-4, tap exact
    assert mse_8 < lsq_8 / 3 and lsq_tap_8 > 0.1 and mse_tap_8 < 0.01
    lsq_4, _ = _relative_error("lsq", 4, kernel)
    mse_4, _ = _relative_error("mse", 4, kernel)
    minmax_4, minmax_tap_4 = _relative_error("minmax", 4, kernel)
    # measured: lsq 0.30, minmax 0.12 (no tap clipped), mse 0.10
    assert mse_4 < minmax_4 < lsq_4 / 2 and minmax_tap_4 < 1e-6


@pytest.mark.parametrize("signed", [True, False])
def test_the_mse_step_is_the_best_of_its_grid_and_minmax_clips_nothing(signed):
    from repq.quant.init import MSE_GRID, minmax_step, mse_step

    rows = torch.randn(5, 200) * torch.linspace(0.5, 3.0, 5)[:, None]
    rows = rows if signed else rows.abs()
    qmin, qmax = lsq.quant_range(4, signed)
    top = minmax_step(rows, qmin, qmax)
    assert torch.all(rows / top[:, None] <= qmax + 1e-5)
    assert torch.all(rows / top[:, None] >= qmin - 1e-5)
    best = mse_step(rows, qmin, qmax)
    for row, step, limit in zip(rows, best, top, strict=True):

        def error(s, row=row):
            return float((torch.clamp(torch.round(row / s), qmin, qmax) * s - row).square().sum())

        grid = [limit * k / MSE_GRID for k in range(1, MSE_GRID + 1)]
        assert error(step) <= min(error(s) for s in grid) + 1e-6


def test_calibration_passes_data_through_and_averages_batch_estimates():
    quantizer = LSQQuantizer(8, False, init="lsq")
    batches = [torch.rand(4, 3, 5, 5) * scale for scale in (1.0, 3.0)]
    quantizer.start_calibration()
    for batch in batches:
        assert torch.equal(quantizer(batch), batch)
    quantizer.finish_calibration()
    expected = sum(2 * b.abs().mean() / math.sqrt(255) for b in batches) / 2
    assert bool(quantizer.initialized) and torch.allclose(quantizer.step, expected.reshape(1))


def test_a_weight_is_estimated_once_during_calibration():
    quantizer = LSQQuantizer(4, True, 3, init="minmax")
    weight = torch.randn(3, 2, 3, 3)
    quantizer.start_calibration()
    for _ in range(3):
        quantizer(weight)
    assert len(quantizer._estimates) == 1
    quantizer.finish_calibration()
    rows = weight.reshape(3, -1)
    expected = torch.maximum(rows.amax(1) / 7, rows.amin(1) / -8)
    assert torch.allclose(quantizer.step, expected)


def test_a_quantizer_without_a_rule_takes_the_default_of_its_kind():
    """Per-channel (a weight): QuantInit's weight rule; per-tensor: the activation's."""
    assert LSQQuantizer(4, True, channels=3).init == QuantInit().weight == "minmax"
    assert LSQQuantizer(4, False).init == QuantInit().activation == "mse"
    assert QuantInit("lsq", "minmax").rule(weight=True) == "lsq"
    assert QuantInit("lsq", "minmax").rule(weight=False) == "minmax"


def test_the_recipes_quant_section_names_the_rules():
    config = {"quant": {"weight_init": "mse", "act_init": "lsq", "calibration_batches": 3}}
    assert QuantInit.from_config(config) == QuantInit("mse", "lsq", 3)
    assert QuantInit.from_config({}) == QuantInit()


@pytest.mark.slow
def test_step_gradients_do_not_depend_on_the_number_of_processes(tmp_path):
    """The same global batch on one process and on two (gloo): the activation steps'
    gradient scale counts the features of one example, not of the per-process batch."""
    script = Path(__file__).with_name("ddp_step_grads.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(tmp_path / "one.pt")], check=True, env=env)
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc_per_node=2", str(script)]
    subprocess.run([*command, str(tmp_path / "two.pt")], check=True, env=env, timeout=300)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one.keys() == two.keys() and any("input_quant" in k for k in one)
    for name, grad in one.items():
        assert rel_err(two[name], grad) < 1e-5, name


def test_a_first_layer_rule_of_same_gives_the_first_layer_the_models_bits():
    """``first="same"`` (no S1 recipe uses it) keeps the first layer at the network's
    bits, weight and input; ``"input"`` raises only its input to ``high_bits``."""
    from repq.quant.policy import PrecisionPolicy

    same = PrecisionPolicy(first="same").layer("stem", 0, 3, 4)
    assert (same.weight_bits, same.input_bits) == (4, 4)
    raised = PrecisionPolicy(first="input").layer("stem", 0, 3, 4)
    assert (raised.weight_bits, raised.input_bits) == (4, 8)


def test_the_precision_listing_names_its_columns():
    from repq.qat import precision_tsv

    model = prepare(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1)), "merged", 4)
    lines = precision_tsv(model).splitlines()
    assert lines[0].split("\t") == ["layer", "weight_bits", "input_bits", "input_signed"]
    assert len(lines) == 3


def test_prepare_leaves_the_float_model_as_it_was():
    """``prepare`` works on a copy: the FP model a user passes keeps its blocks."""
    model = create("repvgg_a0", num_classes=3, width_mult=0.25)
    before = {name: type(m) for name, m in model.named_modules()}
    prepare(model, "repq", 4)
    assert {name: type(m) for name, m in model.named_modules()} == before


def test_an_activation_above_the_sample_size_is_stepped_on_its_strided_sample_only():
    """A per-tensor (activation) step comes from every ``ceil(n / ACT_SAMPLE)``-th value;
    a per-channel (weight) step sees every value of its row, however long."""
    from repq.quant.init import ACT_SAMPLE, initial_step

    n = 2 * ACT_SAMPLE + 2  # stride 3
    values = torch.rand(n)
    values[1] = 100.0  # off the stride: the sample never sees it
    activation = initial_step(values.reshape(1, 1, -1), "minmax", 0, 255, per_channel=False)
    assert activation.item() == pytest.approx(values[::3].max().item() / 255)
    weights = torch.stack([values, values / 2])
    weight = initial_step(weights, "minmax", -127, 127, per_channel=True)
    assert weight.tolist() == pytest.approx([100.0 / 127, 50.0 / 127])


def test_a_linear_layer_without_bias_deploys_without_bias():
    layer = QuantLinear(nn.Linear(6, 4, bias=False), LayerPrecision("fc", 8, 8, True))
    x = torch.randn(5, 6)
    layer(x)  # the steps initialise from this batch
    deployed = layer.eval().to_deploy()
    assert deployed.bias is None
    with torch.no_grad():
        assert torch.equal(deployed(x), layer(x))


def test_prepare_gives_plain_layers_the_recipes_init_rules():
    model = create("repvgg_a0", num_classes=4, width_mult=0.25)
    init = QuantInit(weight="lsq", activation="minmax")
    qat = prepare(model, "merged", 8, init=init)
    layers = [m for m in qat.modules() if isinstance(m, QuantConv2d | QuantLinear)]
    assert layers and {(m.weight_quant.init, m.input_quant.init) for m in layers} == {
        ("lsq", "minmax")
    }


def test_a_conv_with_reflect_padding_is_refused_by_name():
    conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")
    with pytest.raises(ValueError, match=r"only zero padding is supported$") as caught:
        QuantConv2d(conv, LayerPrecision("c", 8, 8, False))
    assert str(caught.value).startswith("Conv2d(3, 4")


def test_a_quantizer_says_what_it_is():
    assert repr(LSQQuantizer(4, True, channels=3, init="mse")) == (
        "LSQQuantizer(bits=4, signed, per-channel, init=mse, enabled=True)"
    )
    assert "unsigned, per-tensor" in repr(LSQQuantizer(8, False))
