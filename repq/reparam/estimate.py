"""RepQ-BNest's ``M(params)`` for a whole block in one autograd node.

Every branch of a block is folded with its S3/S8 statistics and summed into the deploy
kernel and bias (``EstimatedStats(x).merge(block)``, what :meth:`ReparamBlock.kernel_bias`
returns for those statistics): per
BN branch ``c = sum_{i,t} W_oit E[X_i]``, ``V = sum_{i,t} W_oit^2 V[X_i]``,
``a = gamma s / sqrt(V + eps)`` (``s`` a layer scale or sign), kernel ``a W`` and bias
``beta s - a c``; a branch without BN adds ``s W`` and ``s b``. Written out per branch
with autograd, this is about thirty ops and as many backward nodes a branch, most of
them over the kernel. Here it is one node, on the branch list alone, so every block gets
it: on the CPU a C++ kernel that reads each branch kernel once forward and once backward
(``csrc/merge_cpu.cpp``), elsewhere (CUDA) three kernel-sized torch ops a branch forward
and four backward. The per-branch path (:meth:`ReparamBlock.merge_branches`) is the
reference both are tested against (``tests/test_estimate.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from repq import cpu_kernel
from repq.reparam.stats import (
    channel_moments,
    kernel_moments,
    per_input,
    per_output,
    tap_sums,
    update_running_stats,
)

if TYPE_CHECKING:
    from repq.reparam.base import Branch, ReparamBlock

SLOTS = 5
"""Tensors a branch passes: kernel, bias, BN weight, BN bias, scale (None where absent)."""


def _centred(full: Tensor, kernel: Tensor) -> Tensor:
    """The view of ``full`` (``[out, in, KH, KW]``) where ``kernel`` sits when centred."""
    top = (full.shape[2] - kernel.shape[2]) // 2
    left = (full.shape[3] - kernel.shape[3]) // 2
    return full[:, :, top : top + kernel.shape[2], left : left + kernel.shape[3]]


def _times(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    """``a * b`` where None stands for 1."""
    if a is None or b is None:
        return b if a is None else a
    return a * b


def _column(v: Tensor) -> Tensor:
    return v.reshape(-1, 1, 1, 1)


def _absent_as_none(flat: list[Tensor]) -> list[Tensor | None]:
    """The ops' branch tensors with an empty tensor for an absent one (a list of tensors,
    so that autograd reaches each) as the kernel takes them: None where absent."""
    return [None if t.numel() == 0 else t for t in flat]


@torch.library.custom_op("repq::estimated_merge", mutates_args=())
def estimated_merge_op(
    flat: list[Tensor],
    eps: list[float],
    mean_x: Tensor,
    var_x: Tensor,
    groups: int,
    kh: int,
    kw: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The C++ merge (``torch.ops.repq.estimated_merge``): ``(kernel, bias, stats,
    factors)``; ``stats`` (``[BN branches, 2, out]``) are each BN branch's estimated mean
    (with its bias) and variance, ``factors`` (``[branches, 3, out]``) what backward
    reads. ``eps`` is negative for a branch without BN, an empty tensor of ``flat``
    stands for an absent one."""
    kernel, bias, stats, factors = cpu_kernel.kernel().estimated_merge_forward(
        _absent_as_none(flat), eps, mean_x, var_x, groups, kh, kw
    )
    return kernel, bias, stats, factors


@estimated_merge_op.register_fake
def _merge_fake(flat, eps, mean_x, var_x, groups, kh, kw):
    out, in_per_group = flat[0].shape[:2]
    norms = sum(e >= 0 for e in eps)
    return (
        mean_x.new_empty(out, in_per_group, kh, kw),
        mean_x.new_empty(out),
        mean_x.new_empty(norms, 2, out),
        mean_x.new_empty(len(eps), 3, out),
    )


@torch.library.custom_op("repq::estimated_merge_backward", mutates_args=())
def estimated_merge_backward_op(
    flat: list[Tensor],
    eps: list[float],
    mean_x: Tensor,
    var_x: Tensor,
    groups: int,
    factors: Tensor,
    grad_kernel: Tensor,
    grad_bias: Tensor,
    wanted: list[bool],
) -> list[Tensor]:
    """The gradients of ``flat`` (empty where not ``wanted`` or absent), then of the
    input's mean and variance (``torch.ops.repq.estimated_merge_backward``)."""
    grads = cpu_kernel.kernel().estimated_merge_backward(
        _absent_as_none(flat), eps, mean_x, var_x, groups, factors, grad_kernel, grad_bias, wanted
    )
    return [mean_x.new_empty(0) if g is None else g for g in grads]


@estimated_merge_backward_op.register_fake
def _merge_backward_fake(flat, eps, mean_x, var_x, groups, factors, grad_kernel, grad_bias, wanted):
    grads = [
        t.new_empty(t.shape) if w else mean_x.new_empty(0)
        for t, w in zip(flat, wanted, strict=True)
    ]
    return [*grads, torch.empty_like(mean_x), torch.empty_like(var_x)]


def _merge_setup(ctx, inputs: tuple, output: tuple) -> None:
    flat, eps, mean_x, var_x, groups, *_ = inputs
    ctx.save_for_backward(mean_x, var_x, output[3], *flat)
    ctx.eps, ctx.groups = eps, groups
    ctx.wanted = [t.numel() > 0 and t.requires_grad for t in flat]


def _merge_grad(ctx, grad_kernel: Tensor, grad_bias: Tensor, *_) -> tuple:
    mean_x, var_x, factors, *flat = ctx.saved_tensors
    grad_kernel = torch.zeros_like(flat[0]) if grad_kernel is None else grad_kernel
    grad_bias = factors.new_zeros(factors.shape[2]) if grad_bias is None else grad_bias
    *grads, grad_mean_x, grad_var_x = estimated_merge_backward_op(
        flat, ctx.eps, mean_x, var_x, ctx.groups, factors, grad_kernel, grad_bias, ctx.wanted
    )
    grads = [g if w else None for g, w in zip(grads, ctx.wanted, strict=True)]
    return grads, None, grad_mean_x, grad_var_x, None, None, None


estimated_merge_op.register_autograd(_merge_grad, setup_context=_merge_setup)


class EstimatedMerge(torch.autograd.Function):
    """``(kernel, bias, stats)`` of a block under S3/S8 as torch ops (:func:`merge_ops`
    and :func:`merge_ops_backward`), where the C++ merge (:func:`estimated_merge_op`)
    does not take the tensors (CUDA)."""

    @staticmethod
    def forward(ctx, size, groups, eps, mean_x, var_x, *flat):
        ctx.save_for_backward(mean_x, var_x, *flat)
        ctx.groups, ctx.eps = groups, eps
        kernel, bias, stats, ctx.factors = merge_ops(size, groups, eps, mean_x, var_x, flat)
        ctx.mark_non_differentiable(stats)
        return kernel, bias, stats

    @staticmethod
    def backward(ctx, grad_kernel, grad_bias, _):
        mean_x, var_x, *flat = ctx.saved_tensors
        *grads, grad_mean_x, grad_var_x = merge_ops_backward(
            ctx.groups, ctx.eps, (mean_x, var_x), flat, ctx.factors, (grad_kernel, grad_bias),
            ctx.needs_input_grad[5:],
        )  # fmt: skip
        return None, None, None, grad_mean_x, grad_var_x, *grads


def merge_ops(
    size: tuple[int, int], groups: int, eps: tuple, mean_x: Tensor, var_x: Tensor, flat: tuple
) -> tuple[Tensor, Tensor, Tensor, list]:
    """:class:`EstimatedMerge`'s forward as torch ops; the last item holds what
    :func:`merge_ops_backward` reads."""
    out_channels = flat[0].shape[0]
    m_o, v_o = per_output(mean_x, groups, out_channels), per_output(var_x, groups, out_channels)
    kernel = flat[0].new_zeros(out_channels, flat[0].shape[1], *size)
    bias = flat[0].new_zeros(out_channels)
    saved, stats = [], []
    for j, e in enumerate(eps):
        k, b, gamma, beta, scale = flat[SLOTS * j : SLOTS * (j + 1)]
        if e is None:  # no BN: s W and s b
            a, folded, sums = scale, _times(scale, b), None
        else:
            ksum, energy = tap_sums(k)
            c, var = (ksum * m_o).sum(-1), (energy * v_o).sum(-1)
            r = torch.rsqrt(var + e)
            a = _times(_times(r, gamma), scale)
            shift = _times(beta, scale)
            folded = -c * a if shift is None else torch.addcmul(shift, c, a, value=-1)
            sums = (ksum, energy, c, r)
            stats.append(torch.stack((c if b is None else c + b, var)))
        target = _centred(kernel, k)
        if a is None:
            target.add_(k)
        else:
            target.addcmul_(k, _column(a))
        if folded is not None:
            bias.add_(folded)
        saved.append((a, sums))
    stats = torch.stack(stats) if stats else bias.new_zeros(0, 2, out_channels)
    return kernel, bias, stats, saved


def merge_ops_backward(
    groups: int,
    eps: tuple,
    moments: tuple[Tensor, Tensor],
    flat: list,
    saved: list,
    grads_out: tuple[Tensor, Tensor],
    wanted: tuple,
) -> list[Tensor | None]:
    """:class:`EstimatedMerge`'s backward as torch ops from the gradients of the kernel
    and bias: the gradients of ``flat``, then of the input's mean and variance."""
    (mean_x, var_x), (grad_kernel, grad_bias) = moments, grads_out
    out_channels = flat[0].shape[0]
    m_o, v_o = per_output(mean_x, groups, out_channels), per_output(var_x, groups, out_channels)
    grad_mean_x, grad_var_x = torch.zeros_like(mean_x), torch.zeros_like(var_x)
    grads = []
    for j, (e, (a, sums)) in enumerate(zip(eps, saved, strict=True)):
        tensors = flat[SLOTS * j : SLOTS * (j + 1)]
        wants = wanted[SLOTS * j : SLOTS * (j + 1)]
        g = _centred(grad_kernel, tensors[0])
        if e is None:
            grads += _plain_branch_grads(g, grad_bias, tensors, a, wants)
            continue
        ksum, energy, c, r = sums
        grad_a = (g * tensors[0]).sum((1, 2, 3)).sub_(grad_bias * c)
        grad_c = -grad_bias * a
        grad_var, branch = _norm_branch_grads(grad_a, grad_bias, tensors, r, wants)
        if wants[0]:
            by_mean = (grad_c[:, None] * m_o)[..., None, None]
            by_var = (2 * grad_var[:, None] * v_o)[..., None, None]
            grad_k = torch.addcmul(by_mean, tensors[0], by_var)
            branch[0] = grad_k.addcmul_(g, _column(a))
        grad_mean_x += per_input(grad_c[:, None] * ksum, groups)
        grad_var_x += per_input(grad_var[:, None] * energy, groups)
        grads += branch
    return [*grads, grad_mean_x, grad_var_x]


def _plain_branch_grads(
    g: Tensor, grad_bias: Tensor, tensors: tuple, a: Tensor | None, wants: tuple
) -> list[Tensor | None]:
    """Gradients of ``(W, b, -, -, s)`` of a branch without BN: kernel ``s W``, bias ``s b``."""
    k, b, _, _, scale = tensors
    grad_k = (g.clone() if a is None else g * _column(a)) if wants[0] else None
    grad_b = _times(grad_bias, scale) if wants[1] else None
    grad_s = None
    if wants[4]:
        grad_s = (g * k).sum((1, 2, 3))
        grad_s = grad_s if b is None else grad_s + grad_bias * b
    return [grad_k, grad_b, None, None, grad_s]


def _norm_branch_grads(
    grad_a: Tensor, grad_bias: Tensor, tensors: tuple, r: Tensor, wants: tuple
) -> tuple[Tensor, list[Tensor | None]]:
    """The gradient of ``V`` and those of ``(-, b, gamma, beta, s)`` of a BN branch from
    the gradient of its fold factor ``a = gamma s r`` (``r = 1 / sqrt(V + eps)``) and of
    the bias ``beta s - a c``. The conv bias ``b`` cancels in ``b - (c + b)``: its
    gradient is zero, as in the per-branch fold."""
    _, b, gamma, beta, scale = tensors
    grad_r = _times(_times(grad_a, gamma), scale)
    grad_var = grad_r * r.pow(3) * -0.5
    grad_b = torch.zeros_like(b) if wants[1] else None
    grad_gamma = _times(grad_a * r, scale) if wants[2] else None
    grad_beta = _times(grad_bias, scale) if wants[3] else None
    grad_s = None
    if wants[4]:
        grad_s = grad_a * _times(r, gamma)
        grad_s = grad_s if beta is None else grad_s + grad_bias * beta
    return grad_var, [None, grad_b, grad_gamma, grad_beta, grad_s]


def _branch_tensors(branch: Branch) -> tuple[Tensor | None, ...]:
    norm = branch.norm
    affine = norm is not None and norm.affine
    return (
        branch.kernel,
        branch.bias,
        norm.weight if affine else None,
        norm.bias if affine else None,
        branch.scale,
    )


def estimated_kernel_bias(
    block: ReparamBlock, mean_x: Tensor, var_x: Tensor, count: int
) -> tuple[Tensor, Tensor]:
    """The block's kernel and bias folded with S3/S8 statistics of an input with
    per-channel moments ``mean_x``, ``var_x`` over ``count`` values a channel; updates
    each BN's running statistics as ``nn.BatchNorm2d`` does."""
    branches = block.branches()
    dtype = branches[0].kernel.dtype
    eps = tuple(None if b.norm is None else b.norm.eps for b in branches)
    flat = [None if t is None else t.contiguous() for b in branches for t in _branch_tensors(b)]
    mean_x, var_x = mean_x.to(dtype), var_x.to(dtype)
    present = [t for t in flat if t is not None]
    if cpu_kernel.usable(mean_x, var_x, *present, family="bnest"):
        no_norm = [-1.0 if e is None else e for e in eps]  # the kernel's "no BN"
        tensors = [mean_x.new_empty(0) if t is None else t for t in flat]
        kernel, bias, stats, _ = estimated_merge_op(
            tensors, no_norm, mean_x, var_x, block.groups, *block.kernel_size
        )
    else:
        kernel, bias, stats = EstimatedMerge.apply(
            block.kernel_size, block.groups, eps, mean_x, var_x, *flat
        )
    norms = [b.norm for b in branches if b.norm is not None]
    for norm, (mean, var) in zip(norms, stats, strict=True):
        update_running_stats(norm, mean, var, count)
    return kernel, bias


class EstimatedStats:
    """RepQ-BNest: ``E[X*W] ~ E[X] . sum_ij W_ij`` (S3), ``V[X*W] ~ V[X] . sum_ij W_ij^2`` (S8).

    Border pixels are neglected and the input channels are taken as uncorrelated; the
    input moments are measured once per batch and shared by every branch of a block.
    ``merge`` folds and sums a whole block in one autograd node
    (:func:`estimated_kernel_bias`); called per branch, it is that node's reference
    (:meth:`ReparamBlock.merge_branches`).
    """

    def __init__(self, x: Tensor) -> None:
        self.mean_x, self.var_x = channel_moments(x)
        self.count = x.numel() // x.shape[1]

    def __call__(self, branch: Branch, block: ReparamBlock) -> tuple[Tensor, Tensor]:
        kernel = branch.kernel
        mean_x, var_x = self.mean_x.to(kernel.dtype), self.var_x.to(kernel.dtype)
        mean, var = kernel_moments(kernel, mean_x, var_x, block.groups)
        if branch.bias is not None:
            mean = mean + branch.bias
        update_running_stats(branch.norm, mean, var, self.count)
        return mean, var

    def merge(self, block: ReparamBlock) -> tuple[Tensor, Tensor]:
        return estimated_kernel_bias(block, self.mean_x, self.var_x, self.count)
