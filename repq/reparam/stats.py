"""Sources of the BatchNorm statistics folded into a block's kernel.

Each source (:class:`NormStats`) is a callable ``(branch, block) -> (mean, var)`` giving
the mean and the biased variance of a BN branch's pre-norm output ``x * K + b`` per
output channel, and merges a block with them (``merge``: what
:meth:`ReparamBlock.kernel_bias` returns):

* :data:`running_stats`: the BN's running statistics (eval mode, deploy);
* :class:`BatchStats`: the statistics of the current batch, measured by running the
  branch's float conv once (RepQ-BN, the paper's Algorithm 1);
* :class:`repq.reparam.estimate.EstimatedStats`: estimated from the input's per-channel
  moments and the kernel, with no extra conv (RepQ-BNest, supplementary eqs. S3 and
  S8), merged in one autograd node.

The last two update the BN's running statistics as ``nn.BatchNorm2d`` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor, nn

from repq import cpu_kernel

if TYPE_CHECKING:
    from repq.reparam.base import Branch, ReparamBlock


class NormStats(Protocol):
    def __call__(self, branch: Branch, block: ReparamBlock) -> tuple[Tensor, Tensor]:
        """A BN branch's ``(mean, var)``."""

    def merge(self, block: ReparamBlock) -> tuple[Tensor, Tensor]:
        """The block's kernel and bias with every BN branch folded with these statistics."""


class PerBranch:
    """A source that merges branch by branch (:meth:`ReparamBlock.merge_branches`)."""

    def merge(self, block: ReparamBlock) -> tuple[Tensor, Tensor]:
        return block.merge_branches(self)


class RunningStats(PerBranch):
    """The BN's running mean and variance: the deploy statistics."""

    def __call__(self, branch: Branch, block: ReparamBlock) -> tuple[Tensor, Tensor]:
        return branch.norm.running_mean, branch.norm.running_var


running_stats = RunningStats()


@torch.no_grad()
def update_running_stats(norm: nn.BatchNorm2d, mean: Tensor, var: Tensor, count: int) -> None:
    """Update running statistics from a batch's mean and biased variance, as BN does."""
    if not (norm.training and norm.track_running_stats):
        return
    norm.num_batches_tracked.add_(1)
    momentum = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
    unbiased = var.detach() * (count / max(count - 1, 1))
    norm.running_mean.lerp_(mean.detach().to(norm.running_mean.dtype), momentum)
    norm.running_var.lerp_(unbiased.to(norm.running_var.dtype), momentum)


def _kernel_takes(*tensors: Tensor) -> bool:
    """Whether the C++ moments kernels take these (``y`` first: ``[N, C, H, W]``)."""
    y = tensors[0]
    return y.dim() == 4 and y.numel() > 0 and cpu_kernel.usable(*tensors, family="bnest")


@torch.library.custom_op("repq::channel_moments", mutates_args=())
def channel_moments_op(y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance over ``(N, H, W)`` of an ``[N, C, H, W]``
    tensor, one op of torch's library (``torch.ops.repq.channel_moments``); backward
    ``dy = dm / n + 2 dv (y - m) / n`` saves only ``y`` and ``m``. On the CPU one pass
    each in C++ (:mod:`repq.cpu_kernel`), else :func:`moments_ops`."""
    if _kernel_takes(y):
        mean, var = cpu_kernel.kernel().channel_moments(y)
        return mean, var
    return moments_ops(y)


@channel_moments_op.register_fake
def _moments_fake(y: Tensor) -> tuple[Tensor, Tensor]:
    return y.new_empty(y.shape[1]), y.new_empty(y.shape[1])


@torch.library.custom_op("repq::channel_moments_backward", mutates_args=())
def channel_moments_backward_op(
    y: Tensor, mean: Tensor, grad_mean: Tensor, grad_var: Tensor
) -> Tensor:
    """``d L / d y`` of :func:`channel_moments_op` (``torch.ops.repq.channel_moments_backward``)."""
    if _kernel_takes(y, mean, grad_mean, grad_var):
        return cpu_kernel.kernel().channel_moments_backward(y, mean, grad_mean, grad_var)
    n = y.numel() // y.shape[1]
    shape = (1, -1, 1, 1)
    centred = y - mean.reshape(shape)
    return centred.mul_(grad_var.reshape(shape) * (2.0 / n)).add_(grad_mean.reshape(shape) / n)


@channel_moments_backward_op.register_fake
def _moments_backward_fake(y: Tensor, mean: Tensor, grad_mean: Tensor, grad_var: Tensor) -> Tensor:
    return torch.empty_like(y)


def _moments_setup(ctx, inputs: tuple, output: tuple) -> None:
    ctx.save_for_backward(inputs[0], output[0])


def _moments_grad(ctx, grad_mean: Tensor | None, grad_var: Tensor | None) -> Tensor:
    y, mean = ctx.saved_tensors
    grad_mean = torch.zeros_like(mean) if grad_mean is None else grad_mean
    grad_var = torch.zeros_like(mean) if grad_var is None else grad_var
    return channel_moments_backward_op(y, mean, grad_mean, grad_var)


channel_moments_op.register_autograd(_moments_grad, setup_context=_moments_setup)


def moments_ops(y: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`channel_moments_op`'s forward as torch ops: two passes (stable like Welford,
    faster than ``torch.var_mean`` on the CPU)."""
    mean = y.mean((0, 2, 3), keepdim=True)
    var = (y - mean).square_().mean((0, 2, 3))
    return mean.reshape(-1), var


def channel_moments(y: Tensor) -> tuple[Tensor, Tensor]:
    """``(mean, var)`` per channel of an ``[N, C, H, W]`` tensor (see
    :func:`channel_moments_op`)."""
    return channel_moments_op(y)


class BatchStats(PerBranch):
    """RepQ-BN: statistics of each BN branch's float output on the current batch.

    Gradients flow through the mean and variance exactly as through ``nn.BatchNorm2d``.
    """

    def __init__(self, x: Tensor) -> None:
        self.x = x

    def __call__(self, branch: Branch, block: ReparamBlock) -> tuple[Tensor, Tensor]:
        y = block.branch_conv(self.x, branch)
        mean, var = channel_moments(y)
        update_running_stats(branch.norm, mean, var, y.numel() // y.shape[1])
        return mean, var


def per_output(moments: Tensor, groups: int, out_channels: int) -> Tensor:
    """Input-channel moments ``[C_in]`` laid out as ``[out, in / groups]``: each output
    channel sees the input channels of its group."""
    per_group = moments.reshape(groups, 1, -1)
    return per_group.expand(groups, out_channels // groups, -1).reshape(out_channels, -1)


def per_input(values: Tensor, groups: int) -> Tensor:
    """The adjoint of :func:`per_output`: ``[out, in / groups]`` summed to ``[C_in]``."""
    out_channels = values.shape[0]
    return values.reshape(groups, out_channels // groups, -1).sum(1).reshape(-1)


def tap_sums(kernel: Tensor) -> tuple[Tensor, Tensor]:
    """``sum_t W_oit`` and ``sum_t W_oit^2`` per ``(out, in)`` pair."""
    taps = kernel.flatten(2)
    return taps.sum(-1), torch.linalg.vector_norm(taps, dim=-1).square()


def kernel_moments(
    kernel: Tensor, mean_x: Tensor, var_x: Tensor, groups: int
) -> tuple[Tensor, Tensor]:
    """S3 and S8 for one kernel ``W [out, in / groups, kh, kw]``: ``mean_o = sum_{i,t}
    W_oit E[X_i]`` and ``var_o = sum_{i,t} W_oit^2 V[X_i]``."""
    ksum, energy = tap_sums(kernel)
    out_channels = kernel.shape[0]
    mean = (ksum * per_output(mean_x, groups, out_channels)).sum(-1)
    var = (energy * per_output(var_x, groups, out_channels)).sum(-1)
    return mean, var
