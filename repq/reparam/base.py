"""The one interface every re-parametrized block implements.

A block is a linear map equivalent to a single ``k x k`` convolution. It lists its
branches (:class:`Branch`): each branch is a pre-norm kernel (a differentiable
function of the block's parameters), an optional bias and an optional BatchNorm.
:meth:`ReparamBlock.kernel_bias` merges them into the deploy kernel and bias
``M(W_1..W_n)`` (the paper's eq. for RepQ), folding every BN with statistics taken
from a pluggable source (:mod:`repq.reparam.stats`). Merging, RepQ and RepQ-BNest
therefore work on every block through :meth:`branches` alone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from repq.reparam.estimate import EstimatedStats
from repq.reparam.stats import NormStats, running_stats

NORM_MODES = ("batch", "estimate")


@dataclass
class Branch:
    """One linear branch: ``scale * norm(x * kernel + bias)``.

    ``kernel`` has shape ``[out, in / groups, kh, kw]`` with ``kh, kw`` no larger than
    the block's kernel; it is centred in the block's kernel when merged. ``identity``
    marks a branch whose kernel is the identity, so that its output is ``x`` itself.
    ``scale`` (``[out]``) multiplies the normalised output per channel: a layer scale,
    or ``-1`` for a branch that is subtracted (FastViT's RepMixer).
    """

    kernel: Tensor
    bias: Tensor | None = None
    norm: nn.BatchNorm2d | None = None
    identity: bool = False
    scale: Tensor | None = None


def fold_norm(
    kernel: Tensor, bias: Tensor | None, norm: nn.BatchNorm2d, mean: Tensor, var: Tensor
) -> tuple[Tensor, Tensor]:
    """Fold ``BN(x * K + b)`` into one kernel and bias (the BN fusion of RepVGG, Ding et
    al. 2021, that RepQ's Algorithm 1 applies with batch statistics).

    ``K' = K * g / sqrt(V + eps)`` and ``b' = beta + (b - mu) * g / sqrt(V + eps)``,
    where ``mu`` is the mean of ``x * K + b`` (it includes ``b``).
    """
    scale = torch.rsqrt(var + norm.eps)
    if norm.affine:
        scale = scale * norm.weight
    shift = (bias - mean) * scale if bias is not None else -mean * scale
    if norm.affine:
        shift = shift + norm.bias
    return kernel * scale.reshape(-1, 1, 1, 1), shift


def pad_kernel(kernel: Tensor, size: tuple[int, int]) -> Tensor:
    """Zero-pad a kernel to ``size``, centred (a 1x1 goes to the middle of a 3x3)."""
    dh, dw = size[0] - kernel.shape[2], size[1] - kernel.shape[3]
    if dh == 0 and dw == 0:
        return kernel
    if dh < 0 or dw < 0 or dh % 2 or dw % 2:
        raise ValueError(f"cannot centre a {tuple(kernel.shape[2:])} kernel in {size}")
    return F.pad(kernel, (dw // 2, dw // 2, dh // 2, dh // 2))


def merge_centred(kernels: list[Tensor], size: tuple[int, int]) -> Tensor:
    """Sum kernels of different sizes, each centred in ``size``: kernels of one size are
    summed first, so each smaller size is zero-padded once (RepVGG's 1x1 and identity
    kernels share one pad)."""
    by_size: dict[tuple[int, int], Tensor] = {}
    for k in kernels:
        key = tuple(k.shape[2:])
        by_size[key] = k if key not in by_size else by_size[key] + k
    padded = [pad_kernel(k, size) for k in by_size.values()]
    return sum(padded[1:], padded[0])


def identity_kernel(channels: int, groups: int, dtype: torch.dtype | None = None) -> Tensor:
    """The 1x1 kernel ``[C, C / groups, 1, 1]`` with a 1 at ``[i, i % (C / groups)]``."""
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, 1, 1, dtype=dtype)
    index = torch.arange(channels)
    kernel[index, index % per_group, 0, 0] = 1.0
    return kernel


class ReparamBlock(nn.Module, ABC):
    """A multi-branch block that deploys as one convolution (with bias).

    Subclasses implement :meth:`branches` (the differentiable kernel function) and
    :meth:`forward_branches` (the training-time multi-branch forward of the official
    code). ``norm_mode`` chooses how a training forward normalises: ``"batch"`` runs
    the branches with ordinary BN; ``"estimate"`` is the BN-estimation layer of
    RepQ-BNest: one conv with the kernel folded from estimated statistics (S3, S8).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | None = None,
        groups: int = 1,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels {in_channels}->{out_channels} not divisible by {groups=}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = (
            (self.kernel_size[0] // 2, self.kernel_size[1] // 2)
            if padding is None
            else _pair(padding)
        )
        self.groups = groups
        self.norm_mode = "batch"

    @abstractmethod
    def branches(self) -> list[Branch]:
        """The block's branches, each a differentiable function of its parameters."""

    @abstractmethod
    def forward_branches(self, x: Tensor) -> Tensor:
        """The float multi-branch forward, as the official implementation computes it."""

    @property
    def has_norm(self) -> bool:
        """Whether any branch carries a BatchNorm (and so depends on statistics)."""
        return any(isinstance(m, nn.BatchNorm2d) for m in self.modules())

    def kernel_bias(self, stats: NormStats | None = None) -> tuple[Tensor, Tensor]:
        """``M(params)``: the kernel and bias of the equivalent single convolution.

        ``stats`` gives each BN branch its ``(mean, var)`` and merges the block with them
        (:mod:`repq.reparam.stats`); by default the running statistics, which makes the
        result the exact deploy kernel. Estimated statistics (RepQ-BNest) merge the whole
        block in one autograd node, equal to :meth:`merge_branches` up to rounding.
        """
        return (running_stats if stats is None else stats).merge(self)

    def merge_branches(self, stats: NormStats) -> tuple[Tensor, Tensor]:
        """Fold each BN branch with ``stats`` (eq. of the BN fusion), scale it, and sum
        the branches, centred, into one kernel and bias."""
        kernels, biases = [], []
        for branch in self.branches():
            k, b = branch.kernel, branch.bias
            if branch.norm is not None:
                mean, var = stats(branch, self)
                k, b = fold_norm(k, b, branch.norm, mean, var)
            if branch.scale is not None:
                k = k * branch.scale.reshape(-1, 1, 1, 1)
                b = b * branch.scale if b is not None else None
            kernels.append(k)
            if b is not None:
                biases.append(b)
        kernel = merge_centred(kernels, self.kernel_size)
        bias = sum(biases[1:], biases[0]) if biases else kernel.new_zeros(self.out_channels)
        return kernel, bias

    def apply_kernel(self, x: Tensor, kernel: Tensor, bias: Tensor | None = None) -> Tensor:
        """Apply a kernel with this block's geometry (stride, padding, groups)."""
        return F.conv2d(x, kernel, bias, self.stride, self.padding, 1, self.groups)

    def branch_conv(self, x: Tensor, branch: Branch) -> Tensor:
        """A branch's pre-norm output at its own kernel size (no zero padding of taps)."""
        if branch.identity:
            return x if branch.bias is None else x + branch.bias.reshape(1, -1, 1, 1)
        kh, kw = branch.kernel.shape[2:]
        padding = (
            self.padding[0] - (self.kernel_size[0] - kh) // 2,
            self.padding[1] - (self.kernel_size[1] - kw) // 2,
        )
        return F.conv2d(x, branch.kernel, branch.bias, self.stride, padding, 1, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.norm_mode == "estimate":
            return self.apply_kernel(x, *self.kernel_bias(EstimatedStats(x)))
        return self.forward_branches(x)

    def conv_shell(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` (with bias) of this block's geometry, values unset."""
        return nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            groups=self.groups,
            bias=True,
        )

    @torch.no_grad()
    def to_conv(self) -> nn.Conv2d:
        """The deploy form: one ``nn.Conv2d`` with bias and the merged kernel."""
        kernel, bias = self.kernel_bias()
        conv = self.conv_shell().to(device=kernel.device, dtype=kernel.dtype)
        conv.weight.copy_(kernel)
        conv.bias.copy_(bias)
        return conv

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, groups={self.groups}, "
            f"norm_mode={self.norm_mode}"
        )
