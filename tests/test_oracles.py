"""Independent oracles: the BN fold and RepQ-BNest's estimated statistics (S3, S8)
written out in the test, with plain tensor operations, against the package's kernel
function, for outputs, gradients and running statistics."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize, rel_err
from torch import Tensor, nn

from repq.qat import RepQConv, set_quantizers
from repq.quant.policy import LayerPrecision
from repq.reparam import Branch, ConvBN, ReparamBlock, RepVGGBlock

MOMENTUM = 0.1


def _estimate(kernel: Tensor, mean_x: Tensor, var_x: Tensor, bias: Tensor | None):
    """S3 and S8 with loops over output channels, input channels and taps."""
    out_channels, in_channels, kh, kw = kernel.shape
    means, variances = [], []
    for o in range(out_channels):
        mean = kernel.new_zeros(())
        var = kernel.new_zeros(())
        for i in range(in_channels):
            for a in range(kh):
                for b in range(kw):
                    mean = mean + kernel[o, i, a, b] * mean_x[i]
                    var = var + kernel[o, i, a, b] ** 2 * var_x[i]
        means.append(mean + (bias[o] if bias is not None else 0))
        variances.append(var)
    return torch.stack(means), torch.stack(variances)


def _fold(kernel, bias, bn: nn.BatchNorm2d, mean, var):
    """``BN(x * K + b)`` as one kernel and bias, channel by channel."""
    kernels, biases = [], []
    for o in range(kernel.shape[0]):
        scale = bn.weight[o] / torch.sqrt(var[o] + bn.eps)
        kernels.append(kernel[o] * scale)
        shift = (bias[o] if bias is not None else 0) - mean[o]
        biases.append(bn.bias[o] + shift * scale)
    return torch.stack(kernels), torch.stack(biases)


def _centre(kernel: Tensor) -> Tensor:
    """A 1x1 kernel at the centre of a 3x3 one."""
    full = kernel.new_zeros(*kernel.shape[:2], 3, 3)
    full[:, :, 1, 1] = kernel[:, :, 0, 0]
    return full


def _running(bn: nn.BatchNorm2d, mean: Tensor, var: Tensor, count: int):
    """The running statistics after one BN update with these batch statistics."""
    unbiased = var * count / (count - 1)
    return (
        (1 - MOMENTUM) * bn.running_mean + MOMENTUM * mean.detach(),
        (1 - MOMENTUM) * bn.running_var + MOMENTUM * unbiased.detach(),
    )


def repvgg_bnest_oracle(block: RepVGGBlock, x: Tensor):
    """RepQ-BNest's training forward of a RepVGG block (stride 1, in == out, groups 1):
    input moments, S3/S8 per branch, BN folded, kernels merged, one conv; and the three
    BNs' running statistics after the step."""
    mean_x = x.mean(dim=(0, 2, 3))
    var_x = ((x - mean_x[None, :, None, None]) ** 2).mean(dim=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    channels = x.shape[1]
    identity = torch.zeros(channels, channels, 1, 1, dtype=x.dtype)
    for c in range(channels):
        identity[c, c, 0, 0] = 1.0
    parts = [
        (block.dense.conv.weight, block.dense.bn, False),
        (block.one.conv.weight, block.one.bn, True),
        (identity, block.identity, True),
    ]
    kernel, bias, running = 0, 0, []
    for weight, bn, small in parts:
        mean, var = _estimate(weight, mean_x, var_x, None)
        k, b = _fold(weight, None, bn, mean, var)
        kernel = kernel + (_centre(k) if small else k)
        bias = bias + b
        running.append(_running(bn, mean, var, count))
    return F.conv2d(x, kernel, bias, 1, 1), running


def _grads(module: nn.Module, x: Tensor, forward) -> tuple[Tensor, dict[str, Tensor]]:
    x = x.clone().requires_grad_()
    y = forward(module, x)
    y.square().sum().backward()
    return x.grad, {n: p.grad.clone() for n, p in module.named_parameters()}


def test_repq_bnest_matches_the_written_out_estimate():
    torch.manual_seed(0)
    block = randomize(RepVGGBlock(4, 4, 3)).double()
    block.norm_mode = "estimate"
    x = torch.randn(3, 4, 9, 9, dtype=torch.float64) + torch.linspace(-1, 2, 4)[:, None, None]
    layer = set_quantizers(RepQConv(copy.deepcopy(block), LayerPrecision("b", 8, 8, True)), False)
    layer.train()

    reference = copy.deepcopy(block).train()
    expected, running = repvgg_bnest_oracle(reference, x)
    assert rel_err(layer(x), expected) < 3e-14  # measured at most 2.5e-15 here

    x_grad, grads = _grads(layer.block, x, lambda _, v: layer(v))
    x_ref, ref = _grads(reference, x, lambda m, v: repvgg_bnest_oracle(m, v)[0])
    assert rel_err(x_grad, x_ref) < 3e-14  # the input moments carry gradient
    for name, grad in ref.items():
        assert rel_err(grads[name], grad) < 3e-14, name

    fresh = set_quantizers(RepQConv(copy.deepcopy(block), LayerPrecision("b", 8, 8, True)), False)
    fresh.train()(x)
    for bn, (mean, var) in zip(_bns(fresh.block), running, strict=True):
        assert rel_err(bn.running_mean, mean) < 3e-14 and rel_err(bn.running_var, var) < 3e-14


def _bns(block: RepVGGBlock) -> list[nn.BatchNorm2d]:
    return [block.dense.bn, block.one.bn, block.identity]


class BiasThenBN(ReparamBlock):
    """A conv with a bias followed by BN, beside a bias-free 1x1 conv with BN: the branch
    kind (bias and BN) that no block of the zoo has."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, 3)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(channels)
        self.point = ConvBN(channels, channels, 1, 1, 0)

    def branches(self) -> list[Branch]:
        return [Branch(self.conv.weight, self.conv.bias, self.bn), *self.point.branches()]

    def forward_branches(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x)) + self.point.forward_branches(x)


def test_a_branch_with_bias_and_bn_folds_and_estimates_with_its_bias():
    torch.manual_seed(1)
    block = randomize(BiasThenBN(3)).double()
    with torch.no_grad():
        block.conv.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64) + 1.0
    with torch.no_grad():
        assert rel_err(block.to_conv()(x), block.eval()(x)) < 5e-15  # measured 3.3e-16

    from repq.reparam import EstimatedStats

    mean_x = x.mean(dim=(0, 2, 3))
    var_x = x.var(dim=(0, 2, 3), unbiased=False)
    branch = block.branches()[0]
    mean, var = EstimatedStats(x)(branch, block.eval())
    expected_mean, expected_var = _estimate(block.conv.weight, mean_x, var_x, block.conv.bias)
    assert rel_err(mean, expected_mean) < 5e-15 and rel_err(var, expected_var) < 5e-15
    kernel, bias = block.kernel_bias()
    conv, point = block.conv, block.point.conv
    k, b = _fold(conv.weight, conv.bias, block.bn, *_running_stats(block.bn))
    point_k, point_b = _fold(point.weight, None, block.point.bn, *_running_stats(block.point.bn))
    assert rel_err(kernel, k + _centre(point_k)) < 5e-15 and rel_err(bias, b + point_b) < 5e-15


def _running_stats(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    return bn.running_mean, bn.running_var


@pytest.mark.parametrize("variance", [1e-4, 1e-3])
def test_the_fold_keeps_bn_epsilon_in_float32(variance):
    """With running variances near BN's eps (1e-5), dropping eps changes the folded kernel
    by 5% (1e-4) or 0.5% (1e-3): far above float32 rounding (measured 1.2e-7)."""
    torch.manual_seed(2)
    block = randomize(ConvBN(4, 6, 3)).eval()
    with torch.no_grad():
        block.bn.running_var.uniform_(variance, 2 * variance)
    x = torch.randn(2, 4, 10, 10)
    with torch.no_grad():
        expected = block(x)
        assert rel_err(block.to_conv()(x), expected) < 1e-6


def test_the_estimate_gives_the_kernel_its_gradient_when_the_input_needs_none():
    """The stem's input (the image) needs no gradient; the kernel's gradient through the
    estimated statistics must flow all the same."""
    torch.manual_seed(3)
    block = randomize(RepVGGBlock(4, 4, 3)).double()
    block.norm_mode = "estimate"
    x = torch.randn(3, 4, 9, 9, dtype=torch.float64) + 0.5
    layer = set_quantizers(RepQConv(copy.deepcopy(block), LayerPrecision("b", 8, 8, True)), False)
    layer.train()(x).square().sum().backward()
    reference = copy.deepcopy(block).train()
    repvgg_bnest_oracle(reference, x)[0].square().sum().backward()
    grads = dict(layer.block.named_parameters())
    for name, param in reference.named_parameters():
        assert rel_err(grads[name].grad, param.grad) < 3e-14, name  # measured 2.5e-15 above


class IdentityWithBias(ReparamBlock):
    """An identity branch carrying a bias, then BN (no block of the zoo has one)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, 1)
        self.bias = nn.Parameter(torch.linspace(-1.0, 1.0, channels))
        self.bn = nn.BatchNorm2d(channels)
        self.register_buffer("eye", torch.eye(channels).reshape(channels, channels, 1, 1))

    def branches(self) -> list[Branch]:
        return [Branch(self.eye, self.bias, self.bn, identity=True)]

    def forward_branches(self, x: Tensor) -> Tensor:
        return self.bn(x + self.bias.reshape(1, -1, 1, 1))


def test_an_identity_branch_with_a_bias_runs_its_batch_statistics_with_the_bias():
    torch.manual_seed(4)
    block = randomize(IdentityWithBias(3)).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    (branch,) = block.branches()
    assert torch.equal(block.branch_conv(x, branch), x + block.bias.reshape(1, -1, 1, 1))
    layer = set_quantizers(RepQConv(copy.deepcopy(block), LayerPrecision("b", 8, 8, True)), False)
    expected = copy.deepcopy(block).train()(x)  # BN on x + b with the batch's statistics
    assert rel_err(layer.train()(x), expected) < 5e-15


def _dct_basis(channels: int, k: int) -> Tensor:
    """OREPA's frequency prior written out tap by tap: for the first half of the output
    channels ``cos(pi (h + 1/2) (i + 1) / k)`` along rows, for the second half
    ``cos(pi (w + 1/2) (i + 1 - C/2) / k)`` along columns."""
    basis = torch.empty(channels, k, k, dtype=torch.float64)
    half = channels / 2
    for i in range(channels):
        for h in range(k):
            for w in range(k):
                if i < half:
                    basis[i, h, w] = math.cos(math.pi * (h + 0.5) * (i + 1) / k)
                else:
                    basis[i, h, w] = math.cos(math.pi * (w + 0.5) * (i + 1 - half) / k)
    return basis


def _orepa_branches_applied(gen, x: Tensor) -> Tensor:
    """OREPA's six branches as the network they stand for, each applied to ``x`` with
    its own convolutions and pooling (stride 1, zero padding), scaled per output
    channel and summed; no kernel is composed."""
    k, g, pad = gen.k, gen.groups, gen.k // 2
    cin = gen.in_channels // g
    p = {n: t.double() for n, t in gen.named_parameters()}
    origin = F.conv2d(x, p["origin"], padding=pad, groups=g)
    # 1x1, then a k x k average over the zero-padded map
    avg = F.avg_pool2d(F.conv2d(x, p["avg"], groups=g), k, 1, pad, count_include_pad=True)
    # 1x1 times the fixed prior: every input channel filtered by its output's basis
    basis = _dct_basis(gen.out_channels, k)
    per_group = gen.out_channels // g
    prior = torch.stack(
        [
            sum(
                p["prior"][o, i, 0, 0]
                * F.conv2d(
                    x[:, (o // per_group) * cin + i][:, None], basis[o][None, None], padding=pad
                )[:, 0]
                for i in range(cin)
            )
            for o in range(gen.out_channels)
        ],
        dim=1,
    )
    # a learnable 1x1 plus the identity, then k x k
    internal = p["pw_kxk_1"].shape[0]
    identity = torch.zeros(internal, cin, 1, 1, dtype=torch.float64)
    for t in range(internal):
        identity[t, t % cin, 0, 0] = 1.0
    hidden = F.conv2d(x, p["pw_kxk_1"] + identity, groups=g)
    pw_kxk = F.conv2d(hidden, p["pw_kxk_2"], padding=pad, groups=g)
    one = F.conv2d(x, p["one"], groups=g)
    # depthwise k x k (8 filters per input channel), then a 1x1
    dw = F.conv2d(x, p["dw"], padding=pad, groups=gen.in_channels)
    dw_pw = F.conv2d(dw, p["dw_pw"], groups=g)
    outputs = [origin, avg, prior, pw_kxk, one, dw_pw]
    scales = p["scales"]
    return sum(scales[b][None, :, None, None] * out for b, out in enumerate(outputs))


@pytest.mark.parametrize(("cin", "cout", "groups"), [(4, 6, 1), (4, 8, 2)])
def test_orepas_generated_kernel_equals_its_six_branches_applied_one_by_one(cin, cout, groups):
    """The kernel OREPA generates, convolved once, equals the six branches of the
    official formulation applied one after another (each branch's own convolutions,
    the prior's basis written out in the test): a change of one branch's formula, such
    as the prior basis's absolute value, fails here."""
    from repq.reparam.orepa import OREPAKernel

    torch.manual_seed(0)
    gen = OREPAKernel(cin, cout, 3, groups)
    with torch.no_grad():
        for parameter in gen.parameters():
            parameter.normal_(0, 0.5)  # every branch and scale counts, the zero-init too
    x = torch.randn(2, cin, 7, 7, dtype=torch.float64)
    expected = _orepa_branches_applied(gen, x)
    kernel = gen().double()  # generated in float32: measured relative error 7e-8 to 1.4e-7
    assert rel_err(F.conv2d(x, kernel, padding=1, groups=groups), expected) < 1e-6


def test_orepas_large_kernel_equals_its_stacked_generators():
    """The 7x7 stem kernel, convolved once without padding, equals its three 3x3
    generators applied one after another (valid convolutions)."""
    from repq.reparam.orepa import OREPALargeConv

    torch.manual_seed(1)
    stem = OREPALargeConv(3, 4, 7)
    x = torch.randn(2, 3, 13, 13, dtype=torch.float64)
    stacked = x
    for generator in stem.generators:
        stacked = F.conv2d(stacked, generator().double())
    assert rel_err(F.conv2d(x, stem.generate().double()), stacked) < 1e-6  # float32 kernels
