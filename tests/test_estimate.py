"""RepQ-BNest's one-node merge of a block (repq/reparam/estimate.py) and the input's
channel moments, on the CPU kernels and as torch ops, against the per-branch fold
(``ReparamBlock.merge_branches`` with ``EstimatedStats``: the reference)."""

from __future__ import annotations

import copy

import pytest
import torch
from blocks import FACTORIES, IDS
from conftest import randomize, rel_err
from torch import nn
from torch.profiler import ProfilerActivity, profile

from repq import cpu_kernel
from repq.reparam import BranchSum, EstimatedStats, Term
from repq.reparam.estimate import EstimatedMerge, estimated_kernel_bias
from repq.reparam.stats import channel_moments

PATHS = {"kernel": True, "torch-ops": False}
NEEDS_KERNELS = pytest.mark.skipif(cpu_kernel.kernel() is None, reason="the kernels did not build")
NORM_CASES = [(i, f) for i, f in zip(IDS, FACTORIES, strict=True) if f().has_norm]


def _branch_sum(groups: int) -> BranchSum:
    """Every kind of branch in one block: a 3x3 conv with bias and BN, a 1x1 conv with a
    BN without affine parameters, a 1x3 conv with BN and the layer scale, a 3x3 conv
    with bias and no BN under the layer scale, and a subtracted identity BN."""
    c = 4

    def conv(k, p, bias=False):
        return nn.Conv2d(c, c, k, 1, p, groups=groups, bias=bias)

    terms = [
        Term(conv(3, 1, bias=True), nn.BatchNorm2d(c)),
        Term(conv(1, 0), nn.BatchNorm2d(c, affine=False)),
        Term(conv((1, 3), (0, 1)), nn.BatchNorm2d(c), scaled=True),
        Term(conv(3, 1, bias=True), None, scaled=True),
        Term(None, nn.BatchNorm2d(c), sign=-1.0),
    ]
    geometry = {"in_channels": c, "out_channels": c, "kernel_size": 3, "groups": groups}
    return BranchSum("sum", terms, geometry, nn.Parameter(torch.rand(c) + 0.5))


CASES = [
    *NORM_CASES,
    ("branch-sum-g1", lambda: _branch_sum(1)),
    ("branch-sum-g2", lambda: _branch_sum(2)),
]


def _train_step(block: nn.Module, x: torch.Tensor, merge) -> dict[str, torch.Tensor]:
    """The kernel, bias, every gradient and the running statistics after one step that
    merges with ``merge(block, stats)``."""
    x = x.clone().requires_grad_()
    kernel, bias = merge(block.train(), EstimatedStats(x))
    gen = torch.Generator().manual_seed(1)
    weights = torch.randn(kernel.shape, generator=gen, dtype=kernel.dtype)
    ((kernel * weights).sum() + (bias * bias).sum()).backward()
    out = {"kernel": kernel.detach(), "bias": bias.detach(), "x.grad": x.grad}
    out |= {f"{n}.grad": p.grad for n, p in block.named_parameters()}
    return out | {n: b.clone() for n, b in block.named_buffers() if b.is_floating_point()}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("name", "factory"), CASES, ids=[c[0] for c in CASES])
def test_the_one_node_merge_equals_the_per_branch_fold(name, factory, path):
    """Kernel, bias, the gradients of every parameter and of the input, and the running
    statistics, in float64 (measured at most 1.2e-15 relative on the kernel, 1.6e-15 as
    torch ops)."""
    torch.manual_seed(0)
    block = randomize(factory()).double()
    reference = copy.deepcopy(block)
    x = torch.randn(4, block.in_channels, 10, 9, dtype=torch.float64) + 0.5
    with cpu_kernel.enabled(PATHS[path]):
        got = _train_step(block, x, lambda b, s: b.kernel_bias(s))
    expected = _train_step(reference, x, lambda b, s: b.merge_branches(s))
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if value is None:
            assert got[key] is None, key
            continue
        scale = value.abs().max().clamp_min(1e-300)
        assert (got[key] - value).abs().max() / scale <= 1e-13, key


def _gradcheck_inputs(groups: int) -> tuple:
    """EstimatedMerge's arguments for a block with a BN branch with bias and scale, a
    1x1 BN branch without affine parameters, an identity kernel (no gradient) with BN,
    and a 1x3 branch without BN, with bias and scale; float64."""
    gen = torch.Generator().manual_seed(groups)
    out, per_group = 4, 4 // groups

    def rand(*shape, grad=True, low=0.0):
        t = torch.rand(*shape, generator=gen, dtype=torch.float64) + low
        return t.requires_grad_(grad)

    identity = torch.zeros(out, per_group, 1, 1, dtype=torch.float64)
    identity[torch.arange(out), torch.arange(out) % per_group] = 1.0
    flat = (
        *(
            rand(out, per_group, 3, 3, low=-0.5),
            rand(out),
            rand(out, low=0.5),
            rand(out),
            rand(out),
        ),
        *(rand(out, per_group, 1, 1, low=-0.5), None, None, None, None),
        *(identity, None, rand(out, low=0.5), rand(out), None),
        *(rand(out, per_group, 1, 3, low=-0.5), rand(out), None, None, rand(out, low=0.5)),
    )
    eps = (1e-5, 1e-3, 1e-5, None)
    moments = (rand(4, low=-0.5), rand(4, low=0.2))
    return eps, moments, flat


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("groups", [1, 2])
def test_the_merge_passes_gradcheck(path, groups):
    eps, (mean_x, var_x), flat = _gradcheck_inputs(groups)

    def merge(m, v, *tensors):
        kernel, bias, _ = EstimatedMerge.apply((3, 3), groups, eps, m, v, *tensors)
        return kernel, bias

    inputs = (mean_x, var_x, *flat)
    with cpu_kernel.enabled(PATHS[path]):
        assert torch.autograd.gradcheck(merge, inputs, fast_mode=True)


def test_the_kernel_and_the_torch_ops_agree_in_float32():
    """Float32 on both paths (sums in another order): measured at most 2.0e-7 relative."""
    eps, (mean_x, var_x), flat = _gradcheck_inputs(1)
    flat = tuple(
        None if t is None else t.detach().float().requires_grad_(t.requires_grad) for t in flat
    )
    results = []
    for on in (True, False):
        with cpu_kernel.enabled(on):
            m, v = mean_x.detach().float().requires_grad_(), var_x.detach().float().requires_grad_()
            kernel, bias, stats = EstimatedMerge.apply((3, 3), 1, eps, m, v, *flat)
            (kernel.square().sum() + bias.sum()).backward()
            grads = [t.grad.clone() for t in (m, v, *flat) if t is not None and t.requires_grad]
            results.append([kernel.detach(), bias.detach(), stats, *grads])
            for t in flat:
                if t is not None:
                    t.grad = None
    for got, expected in zip(*results, strict=True):
        assert rel_err(got, expected) <= 2e-6


@NEEDS_KERNELS
def test_a_bnest_step_runs_the_block_merge_as_one_kernel_call():
    """One ``repq::estimated_merge`` (and its backward) per block and step: the per-branch
    fold would not show it, and the torch ops not as a kernel."""
    block = randomize(_branch_sum(1))
    x = torch.randn(2, 4, 6, 6)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        kernel, bias = estimated_kernel_bias(block.train(), *channel_moments(x), x.numel() // 4)
        (kernel.sum() + bias.sum()).backward()
    names = [e.name for e in prof.events()]
    assert names.count("repq::estimated_merge") == 1
    assert names.count("repq::estimated_merge_backward") == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_channel_moments_kernel_equals_its_torch_ops(dtype):
    """Mean, variance and input gradient of a shifted input (mean 10, sd 3), where a
    one-pass variance without the shift would cancel: measured 1.6e-7 (float32) and 4.9e-16
    (float64) relative."""
    y = torch.randn(8, 5, 7, 9, dtype=dtype, generator=torch.Generator().manual_seed(0)) * 3 + 10
    weights = torch.arange(5, dtype=dtype)
    results = []
    for on in (True, False):
        with cpu_kernel.enabled(on):
            leaf = y.clone().requires_grad_()
            mean, var = channel_moments(leaf)
            ((mean * weights).sum() + (var * weights.cos()).sum()).backward()
            results.append((mean.detach(), var.detach(), leaf.grad))
    tolerance = 1e-6 if dtype == torch.float32 else 1e-14
    for got, expected in zip(*results, strict=True):
        assert rel_err(got, expected) <= tolerance


def test_the_channel_moments_kernel_passes_gradcheck():
    y = torch.randn(3, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    with cpu_kernel.enabled(True):
        assert torch.autograd.gradcheck(channel_moments, (y,), fast_mode=True)


@NEEDS_KERNELS
def test_the_merge_kernel_does_not_depend_on_the_number_of_threads():
    """The input moments' gradient is summed over blocks of 16 output channels in a fixed
    order, whatever the threads: bit-equal results on one thread and on several (40
    output channels: three blocks, the last one partial)."""
    gen = torch.Generator().manual_seed(0)
    flat = (torch.randn(40, 4, 3, 3, generator=gen, requires_grad=True), None, None, None, None)
    flat += (torch.randn(40, 4, 1, 1, generator=gen, requires_grad=True), None, None, None, None)
    moments = (torch.randn(4, requires_grad=True), torch.rand(4).requires_grad_())

    def run() -> list[torch.Tensor]:
        kernel, bias, _ = EstimatedMerge.apply((3, 3), 1, (1e-5, 1e-5), *moments, *flat)
        grads = torch.autograd.grad((kernel.square().sum() + bias.sum()), [*moments, flat[0]])
        return [kernel, bias, *grads]

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(max(2, threads))
        many = run()
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, many, strict=True))


@NEEDS_KERNELS
def test_the_merge_kernel_refuses_a_branch_kernel_larger_than_the_block():
    """A 5x5 branch in a 3x3 block would write outside the merged kernel's rows."""
    flat = [torch.randn(4, 4, 5, 5), None, None, None, None]
    moments = (torch.randn(4), torch.rand(4))
    with pytest.raises(RuntimeError, match="centre in the block's"):
        cpu_kernel.kernel().estimated_merge_forward(flat, [-1.0], *moments, 1, 3, 3)
