"""Independent oracles: the BN fold and RepQ-BNest's estimated statistics (S3, S8)
written out in the test, with plain tensor operations, against the package's kernel
function, for outputs, gradients and running statistics."""

from __future__ import annotations

import copy

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
