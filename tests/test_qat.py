"""The invariants of the Merged, RepQ (Algorithm 1) and RepQ-BNest (supplementary S2)
methods."""

from __future__ import annotations

import copy

import pytest
import torch
from blocks import DEAD, FACTORIES, IDS
from conftest import randomize, rel_err
from torch import nn

from repq.models import available, create
from repq.qat import (
    QatOptions,
    RepQConv,
    bnest_fp,
    calibrate,
    norm_blocks,
    prepare,
    set_quantizers,
    to_deploy,
)
from repq.qat.repq_conv import FOLD_STATISTICS
from repq.quant.layers import QuantLayer
from repq.quant.policy import LayerPrecision
from repq.reparam import ConvBN, EstimatedStats, RepVGGBlock
from repq.reparam.stats import BatchStats, running_stats

PRECISION = LayerPrecision("block", 8, 8, True)


def _bn_state(module: nn.Module) -> list[torch.Tensor]:
    return [
        t.clone()
        for m in module.modules()
        if isinstance(m, nn.BatchNorm2d)
        for t in (m.running_mean, m.running_var)
    ]


def _train_step(module: nn.Module, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    module.train()
    y = module(x)
    (y * r).sum().backward()
    return y.detach()


def _compare_with_float(block: nn.Module, mode: str) -> None:
    block.norm_mode = mode
    reference = copy.deepcopy(block)
    repq = set_quantizers(RepQConv(block, PRECISION), enabled=False)
    x = torch.randn(4, block.in_channels, 10, 9)
    with torch.no_grad():
        r = torch.randn_like(reference.eval()(x))
    expected = _train_step(reference, x, r)
    got = _train_step(repq, x, r)
    # every tolerance here: about 10x the largest error measured over the block cases
    # (outputs 3.1e-7, gradients 1.1e-6, running statistics 1.5e-7; RepQ-BNest: 0)
    assert rel_err(got, expected) <= 1e-5
    grads = dict(reference.named_parameters())
    scale = max(p.grad.abs().max() for p in reference.parameters())
    for name, p in repq.block.named_parameters():
        assert p.grad is not None, name
        if name.endswith(DEAD):  # zero up to rounding in both forms
            assert p.grad.abs().max() <= 1e-5 * scale, name
            continue
        assert rel_err(p.grad, grads[name].grad) <= 1e-5, name
    for a, b in zip(_bn_state(repq.block), _bn_state(reference), strict=True):
        assert rel_err(a, b) <= 1e-5


@pytest.mark.parametrize("factory", FACTORIES, ids=IDS)
def test_repq_without_quantizers_equals_the_float_block_in_training(factory):
    _compare_with_float(randomize(factory()), "batch")


@pytest.mark.parametrize("factory", FACTORIES, ids=IDS)
def test_bnest_without_quantizers_equals_the_float_bn_estimation_block(factory):
    _compare_with_float(randomize(factory()), "estimate")


def test_bn_estimation_block_uses_the_estimated_statistics():
    block = randomize(ConvBN(4, 6, 3, 1, 0))
    block.norm_mode = "estimate"
    x = torch.randn(8, 4, 32, 32) + 1.0
    kernel, bias = block.kernel_bias(EstimatedStats(x))
    measured = block.train().forward_branches(x)
    assert not torch.allclose(kernel, block.kernel_bias()[0])
    assert rel_err(block.train()(x), block.apply_kernel(x, kernel, bias)) < 1e-6
    assert rel_err(block(x), measured) < 0.05


def _inputs(name: str) -> torch.Tensor:
    if name == "ecbsr":
        return torch.rand(2, 1, 16, 16) * 219 + 16
    return torch.randn(2, 3, 32, 32)


@pytest.mark.parametrize("name", available())
@pytest.mark.parametrize("method", ["merged", "repq", "bnest"])
@pytest.mark.parametrize("bits", [8, 4])
def test_eval_mode_equals_the_deployed_model(name, method, bits):
    model = create(name)
    qat = prepare(model, method, bits)
    x = _inputs(name)
    with torch.no_grad():
        qat.train()(x)
        expected = qat.eval()(x)
        got = to_deploy(qat)(x)
    assert rel_err(got, expected) <= 1e-7  # measured 0: the same computation


def _bnest_case(size: int, padding: int = 0) -> tuple[float, float]:
    """Relative errors of the estimated mean and variance of a conv output on inputs
    with independent channels and ``size x size`` maps."""
    gen = torch.Generator().manual_seed(size)
    block = ConvBN(8, 8, 3, 1, padding)
    with torch.no_grad():
        block.conv.weight.copy_(torch.rand(8, 8, 3, 3, generator=gen) - 0.3)
    means = torch.linspace(0.5, 2.0, 8).reshape(1, 8, 1, 1)
    x = torch.randn(16, 8, size, size, generator=gen) * torch.linspace(0.5, 1.5, 8).reshape(
        1, 8, 1, 1
    )
    x = x + means
    branch = block.branches()[0]
    with torch.no_grad():
        y = block.branch_conv(x, branch)
        var, mean = torch.var_mean(y, dim=(0, 2, 3), correction=0)
        est_mean, est_var = EstimatedStats(x)(branch, block.eval())
    return rel_err(est_mean, mean), rel_err(est_var, var)


def test_bn_estimate_is_within_2_percent_on_64x64_maps():
    mean_err, var_err = _bnest_case(64)
    assert mean_err < 0.02 and var_err < 0.02


def test_bn_estimate_degrades_as_maps_shrink():
    """Documents the edge effect of S2: the estimate worsens on small maps (with zero
    padding the border pixels are what breaks the estimate)."""
    errors = {size: _bnest_case(size, padding=1) for size in (64, 16, 7, 4)}
    mean_errors = [errors[s][0] for s in (64, 16, 7, 4)]
    assert mean_errors == sorted(mean_errors)
    assert mean_errors[0] < 0.05 < mean_errors[-1]


def test_bnest_keeps_ordinary_bn_in_the_last_two_resnet_layers():
    model = bnest_fp(create("ac_resnet18", num_classes=10, width_mult=0.25))
    modes = [b.norm_mode for b in norm_blocks(model)]
    assert modes[-2:] == ["batch", "batch"] and set(modes[:-2]) == {"estimate"}
    repvgg = bnest_fp(create("repvgg_a0", num_classes=10, width_mult=0.25))
    assert {b.norm_mode for b in norm_blocks(repvgg)} == {"estimate"}


def _small(name: str) -> nn.Module:
    if name == "ecbsr":
        return create(name, m=1, c=8, scale=2)
    return create(name, num_classes=5, width_mult=0.25)


def _loss(name: str, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if name == "ecbsr":
        return (out - target).abs().mean()
    return nn.functional.cross_entropy(out, target)


def _data(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "ecbsr":
        x = torch.rand(4, 1, 12, 12) * 219 + 16
        return x, nn.functional.interpolate(x, scale_factor=2, mode="bicubic")
    return torch.randn(8, 3, 32, 32), torch.arange(8) % 5


# OREPA's frequency-prior branch starts with a zero scale (official init), which gates
# its 1x1 weight's gradient: that weight can only move from the second step on.
GATED = ("generator.prior", "generators.0.prior", "generators.1.prior", "generators.2.prior")


@pytest.mark.parametrize("name", ["repvgg_a0", "ac_resnet18", "orepa_resnet18", "ecbsr"])
@pytest.mark.parametrize("method", ["merged", "repq", "bnest"])
def test_training_steps_move_every_parameter_and_lower_the_loss(name, method):
    x, target = _data(name)
    model = _small(name).train()
    with torch.no_grad():  # settle the BN running statistics, as FP training would
        for _ in range(20):
            model(x)
    qat = prepare(model, method, 4).train()
    optimizer = torch.optim.Adam(qat.parameters(), lr=1e-3)
    before = {n: p.detach().clone() for n, p in qat.named_parameters()}
    losses = []
    for step in range(6):
        optimizer.zero_grad()
        loss = _loss(name, qat, x, target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step == 0:
            for n, p in qat.named_parameters():
                moved = not torch.equal(p, before[n])
                assert moved or n.endswith(GATED + DEAD), n
        if step == 1:
            for n, p in qat.named_parameters():
                assert not torch.equal(p, before[n]) or n.endswith(DEAD), n
    assert losses[-1] < losses[0]


def test_channel_moments_match_var_mean_and_pass_gradcheck():
    from repq.reparam.stats import channel_moments

    y = (torch.randn(3, 4, 5, 6, dtype=torch.float64) * 3 + 100).requires_grad_()
    mean, var = channel_moments(y)
    ref_var, ref_mean = torch.var_mean(y, dim=(0, 2, 3), correction=0)
    assert rel_err(mean, ref_mean) < 1e-14 and rel_err(var, ref_var) < 1e-12
    assert torch.autograd.gradcheck(channel_moments, (y,), fast_mode=True)


def _kernel_moments_by_formula(kernel, mean_x, var_x, groups):
    """S3 and S8 written out with loops over output channels (the test's oracle)."""
    out_channels, per_group = kernel.shape[:2]
    means, variances = [], []
    for o in range(out_channels):
        g = o // (out_channels // groups)
        inputs = slice(g * per_group, (g + 1) * per_group)
        taps = kernel[o].flatten(1)
        means.append((taps.sum(1) * mean_x[inputs]).sum())
        variances.append((taps.square().sum(1) * var_x[inputs]).sum())
    return torch.stack(means), torch.stack(variances)


KERNEL_CASES = [((6, 4, 3, 3), 1), ((6, 2, 3, 3), 2), ((5, 4, 1, 3), 1), ((6, 1, 1, 1), 6)]


@pytest.mark.parametrize(("shape", "groups"), KERNEL_CASES)
def test_kernel_moments_match_s3_s8_and_pass_gradcheck(shape, groups):
    from repq.reparam.stats import kernel_moments

    gen = torch.Generator().manual_seed(sum(shape))
    kernel = torch.randn(shape, dtype=torch.float64, generator=gen).requires_grad_()
    channels = shape[1] * groups
    mean_x = torch.randn(channels, dtype=torch.float64, generator=gen).requires_grad_()
    var_x = torch.rand(channels, dtype=torch.float64, generator=gen).requires_grad_()

    def moments(k, m, v):
        return kernel_moments(k, m, v, groups)

    got = moments(kernel, mean_x, var_x)
    expected = _kernel_moments_by_formula(kernel, mean_x, var_x, groups)
    assert all(rel_err(a, b) < 1e-12 for a, b in zip(got, expected, strict=True))
    assert torch.autograd.gradcheck(moments, (kernel, mean_x, var_x), fast_mode=True)


def _dead_channel_case(mode: str, bn_stats: str = "float_input") -> tuple[float, float]:
    """Max |input gradient| of a 4-bit RepQ RepVGG block and of its float block, for an
    input whose channel 0 (values in [0, 0.9]) rounds to 0 under the input step 2."""
    torch.manual_seed(0)
    block = RepVGGBlock(4, 4)
    block.norm_mode = mode
    reference = copy.deepcopy(block).train()
    repq = RepQConv(block, LayerPrecision("block", 4, 4, False))
    repq.bn_stats = bn_stats
    x = torch.rand(8, 4, 10, 10) * torch.tensor([0.9, 30.0, 3.0, 3.0]).view(1, -1, 1, 1)
    calibrate(repq, [x])
    repq.input_quant.step.data.fill_(2.0)
    grads = []
    for module in (repq.train(), reference):
        xin = x.clone().requires_grad_(True)
        module(xin).square().sum().backward()
        grads.append(xin.grad.abs().max().item())
    return grads[0], grads[1]


@pytest.mark.parametrize("mode", ["batch", "estimate"])
def test_a_channel_the_input_quantizer_zeroes_does_not_blow_up_the_gradient(mode):
    """The BN statistics come from the float input: a channel that quantizes to 0 keeps
    its FP variance, not 0 (which scaled its identity BN by gamma / sqrt(eps)). Measured:
    ratio 0.69 (batch) and 0.72 (estimate) to the float block with float-input statistics,
    17.0 and 17.5 with statistics of the quantized input (per block: it compounds)."""
    quantized, reference = _dead_channel_case(mode)
    assert quantized <= 5 * reference
    # quant.bn_stats: quantized_input brings the blow-up back (the ablations' switch)
    quantized, reference = _dead_channel_case(mode, "quantized_input")
    assert quantized > 10 * reference


def _options_case(options: QatOptions) -> tuple[nn.Module, torch.Tensor]:
    """A calibrated 4-bit RepQ RepVGG-A0 (width 1/4) with ``options``, and an input."""
    torch.manual_seed(0)
    model = create("repvgg_a0", num_classes=4, width_mult=0.25)
    randomize(model)
    x = torch.randn(8, 3, 32, 32)
    qat = prepare(model, "repq", 4, options=options)
    return calibrate(qat, [x]), x


@pytest.mark.parametrize("bn_stats", FOLD_STATISTICS)
def test_bn_stats_chooses_what_repq_folds_bn_with_in_training(bn_stats):
    qat, x = _options_case(QatOptions(bn_stats=bn_stats))
    layer = next(m for m in qat.modules() if isinstance(m, RepQConv))
    assert {m.bn_stats for m in qat.modules() if isinstance(m, RepQConv)} == {bn_stats}
    source = {"float_input": x, "quantized_input": layer.input_quant(x)}.get(bn_stats)
    stats = layer.train().fold_stats(x)
    before = _bn_state(layer)
    kernel, _ = layer.block.kernel_bias(stats)
    if source is None:  # running statistics: the deploy kernel, BN frozen
        assert stats is running_stats
        assert torch.equal(kernel, layer.block.kernel_bias()[0])
        assert all(torch.equal(a, b) for a, b in zip(before, _bn_state(layer), strict=True))
    else:
        expected, _ = copy.deepcopy(layer.block).kernel_bias(BatchStats(source))
        assert torch.equal(kernel, expected)
    assert layer.eval().fold_stats(x) is running_stats  # eval: always running


def test_running_stats_and_the_int32_bias_train_what_is_deployed():
    """With BN frozen and the bias on the int32 grid, a training-mode forward is the
    eval-mode (deployed) forward exactly; with the defaults it is not."""
    for options, equal in ((QatOptions("running", "int32"), True), (QatOptions(), False)):
        qat, x = _options_case(options)
        with torch.no_grad():
            trained, deployed = qat.train()(x), qat.eval()(x)
        assert torch.equal(trained, deployed) == equal


def test_the_int32_bias_trains_straight_through():
    """``train_bias: int32`` adds the deployed bias in training; its gradient is the
    float bias's (straight-through)."""
    qat, _ = _options_case(QatOptions(train_bias="int32"))
    float_qat, _ = _options_case(QatOptions())
    layers = [
        next(m for m in model.modules() if isinstance(m, QuantLayer)) for model in (qat, float_qat)
    ]
    bias = layers[0].float_weight()[1]
    assert torch.equal(layers[0].train().forward_bias(bias), layers[0].deploy_bias(bias))
    assert torch.equal(layers[1].train().forward_bias(bias), bias)
    assert not torch.equal(layers[0].deploy_bias(bias), bias)
    grads = []
    for layer in layers:
        b = bias.detach().requires_grad_()
        layer.forward_bias(b).square().sum().backward()
        grads.append(b.grad)
    assert torch.equal(grads[0], 2 * layers[0].deploy_bias(bias).detach())
    assert torch.equal(grads[1], 2 * bias.detach())


def test_the_plain_fp_stage_keeps_the_model_and_bnests_estimates():
    from repq.qat.methods import fp_form
    from repq.vocab import FP, METHODS

    model = create("repvgg_a0", num_classes=4, width_mult=0.25)
    assert fp_form(model, FP) is model
    assert {block.norm_mode for block in norm_blocks(model)} == {"batch"}
    fp_form(model, METHODS["bnest"].fp_stage)
    assert "estimate" in {block.norm_mode for block in norm_blocks(model)}


def test_quantizers_disabled_and_enabled_again_quantize_again():
    model = prepare(create("repvgg_a0", num_classes=4, width_mult=0.25), "merged", 4).eval()
    x = torch.randn(2, 3, 32, 32)
    calibrate(model, [x])
    with torch.no_grad():
        quantized = model(x)
        float_out = set_quantizers(model, False)(x)
        again = set_quantizers(model, True)(x)
    assert not torch.equal(float_out, quantized)
    assert torch.equal(again, quantized)
