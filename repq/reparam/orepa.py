"""Online convolutional re-parametrization (OREPA, Hu et al., CVPR 2022).

OREPA generates one ``k x k`` kernel from six linear branches, each scaled per output
channel by a learnable vector, and applies a single BN after the conv. The branches
and the scale initialisation follow the official ``OREPA`` module.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repq.reparam.base import Branch, ReparamBlock, identity_kernel, pad_kernel

# Initial per-branch scales: origin, avg, prior, 1x1-kxk, 1x1, dw-pw.
BRANCH_SCALES = (0.25, 0.25, 0.0, 0.5, 1.0, 0.5)
DW_EXPANSION = 8


def frequency_prior(channels: int, k: int) -> Tensor:
    """The fixed DCT-like prior ``[C, k, k]``: cosines along rows for the first half of
    the channels and along columns for the second half (as in the official code)."""
    half = channels / 2
    h = torch.arange(k, dtype=torch.float64).reshape(k, 1)
    w = torch.arange(k, dtype=torch.float64).reshape(1, k)
    prior = torch.empty(channels, k, k, dtype=torch.float64)
    for i in range(channels):
        if i < half:
            prior[i] = torch.cos(math.pi * (h + 0.5) * (i + 1) / k).expand(k, k)
        else:
            prior[i] = torch.cos(math.pi * (w + 0.5) * (i + 1 - half) / k).expand(k, k)
    return prior.float()


def _kaiming(*shape: int) -> nn.Parameter:
    weight = torch.empty(*shape)
    nn.init.kaiming_uniform_(weight, a=0.0)
    return nn.Parameter(weight)


class OREPAKernel(nn.Module):
    """The six-branch kernel generator of OREPA (no BN): ``forward()`` is the kernel."""

    def __init__(self, in_channels: int, out_channels: int, k: int = 3, groups: int = 1) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.k, self.groups = (
            in_channels,
            out_channels,
            k,
            groups,
        )
        cin = in_channels // groups
        internal = in_channels if groups <= 4 else 2 * in_channels
        self.origin = _kaiming(out_channels, cin, k, k)
        self.avg = _kaiming(out_channels, cin, 1, 1)
        self.prior = _kaiming(out_channels, cin, 1, 1)
        self.register_buffer("prior_basis", frequency_prior(out_channels, k), persistent=False)
        self.pw_kxk_1 = nn.Parameter(torch.zeros(internal, cin, 1, 1))
        self.register_buffer("pw_kxk_id", identity_kernel(internal, groups), persistent=False)
        self.pw_kxk_2 = _kaiming(out_channels, internal // groups, k, k)
        self.one = _kaiming(out_channels, cin, 1, 1)
        self.dw = _kaiming(in_channels * DW_EXPANSION, 1, k, k)
        self.dw_pw = _kaiming(out_channels, in_channels * DW_EXPANSION // groups, 1, 1)
        self.scales = nn.Parameter(
            torch.tensor(BRANCH_SCALES).reshape(-1, 1).repeat(1, out_channels)
        )

    def _grouped(self, first: Tensor, second: Tensor) -> Tensor:
        """Kernel of a grouped 1x1 ``first`` ``[t, i/g]`` followed by grouped ``second``
        ``[o, t/g, k, k]``: ``K[o, i] = sum_t second[o, t] first[t, i]`` within groups."""
        g = self.groups
        t, cin = first.shape
        o, tg, kh, kw = second.shape
        first = first.reshape(g, t // g, cin)
        second = second.reshape(g, o // g, tg, kh, kw)
        return torch.einsum("gti,gothw->goihw", first, second).reshape(o, cin, kh, kw)

    def branch_kernels(self) -> list[Tensor]:
        """The six unscaled branch kernels, each ``[out, in / groups, k, k]``."""
        k, g = self.k, self.groups
        avg = self.avg.expand(-1, -1, k, k) / (k * k)
        prior = self.prior * self.prior_basis.to(self.prior.dtype).unsqueeze(1)
        pw_kxk = self._grouped(
            (self.pw_kxk_1 + self.pw_kxk_id.to(self.pw_kxk_1.dtype))[:, :, 0, 0], self.pw_kxk_2
        )
        one = pad_kernel(self.one, (k, k))
        cin = self.in_channels // g
        dw = self.dw.reshape(g, cin, DW_EXPANSION, k, k)
        pw = self.dw_pw.reshape(g, self.out_channels // g, cin, DW_EXPANSION)
        dw_pw = torch.einsum("giehw,goie->goihw", dw, pw).reshape(self.out_channels, cin, k, k)
        return [self.origin, avg, prior, pw_kxk, one, dw_pw]

    def forward(self) -> Tensor:
        kernels = torch.stack(self.branch_kernels())
        return torch.einsum("boihw,bo->oihw", kernels, self.scales)


class OREPABlock(ReparamBlock):
    """OREPA conv: the generated kernel, one conv, then BN."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups)
        self.generator = OREPAKernel(in_channels, out_channels, self.kernel_size[0], groups)
        self.bn = nn.BatchNorm2d(out_channels)

    def branches(self) -> list[Branch]:
        return [Branch(self.generator(), None, self.bn)]

    def forward_branches(self, x: Tensor) -> Tensor:
        return self.bn(self.apply_kernel(x, self.generator()))


def compose_kernels(first: Tensor, second: Tensor) -> Tensor:
    """The kernel of ``second`` applied after ``first`` (stride 1, no groups):
    ``K[o, i](c) = sum_m sum_b second[o, m](b) first[m, i](c - b)``, of size
    ``k1 + k2 - 1``."""
    k2 = second.shape[-1]
    composed = F.conv2d(first.transpose(0, 1), second.flip(-1, -2), padding=k2 - 1)
    return composed.transpose(0, 1)


class OREPALargeConv(ReparamBlock):
    """OREPA's large-kernel stem: ``(k - 1) / 2`` stacked 3x3 generators composed into
    one ``k x k`` kernel (three for the 7x7 stem of ResNet-18), then one BN."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 7,
        stride: int = 1,
        padding: int | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, 1)
        layers = (self.kernel_size[0] - 1) // 2
        self.generators = nn.ModuleList(
            OREPAKernel(in_channels if i == 0 else out_channels, out_channels, 3)
            for i in range(layers)
        )
        self.bn = nn.BatchNorm2d(out_channels)

    def generate(self) -> Tensor:
        kernel = self.generators[0]()
        for generator in self.generators[1:]:
            kernel = compose_kernels(kernel, generator())
        return kernel

    def branches(self) -> list[Branch]:
        return [Branch(self.generate(), None, self.bn)]

    def forward_branches(self, x: Tensor) -> Tensor:
        return self.bn(self.apply_kernel(x, self.generate()))
