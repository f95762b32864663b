"""The Edge-oriented Convolution Block of ECBSR (Zhang et al., ACM MM 2021).

No BN; every conv has a bias. Branches: a 3x3 conv; a 1x1 conv (to ``2 x out``
channels) followed by a 3x3 conv; and a 1x1 conv followed by a fixed Sobel-x,
Sobel-y or Laplacian depthwise mask with a learnable per-channel scale and bias.
The output of each 1x1 conv is padded with its *bias values* (not zeros), which makes
the merged 3x3 conv exact at the borders too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repq.reparam.base import Branch, ReparamBlock, identity_kernel

MASKS = {
    "sobel_x": [[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]],
    "sobel_y": [[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]],
    "laplacian": [[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]],
}


def _conv_params(in_channels: int, out_channels: int, k: int) -> tuple[nn.Parameter, nn.Parameter]:
    """Weight and bias initialised as ``nn.Conv2d`` initialises them."""
    conv = nn.Conv2d(in_channels, out_channels, k)
    return conv.weight, conv.bias


def pad_with_bias(y: Tensor, bias: Tensor) -> Tensor:
    """Pad a 1x1 conv's output by one pixel filled with that conv's bias values."""
    b = bias.reshape(1, -1, 1, 1)
    return F.pad(y - b, (1, 1, 1, 1)) + b


class ConvThenConv3x3(nn.Module):
    """1x1 conv to ``mid`` channels, bias padding, then a 3x3 conv (valid)."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int) -> None:
        super().__init__()
        self.k0, self.b0 = _conv_params(in_channels, mid_channels, 1)
        self.k1, self.b1 = _conv_params(mid_channels, out_channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = pad_with_bias(F.conv2d(x, self.k0, self.b0), self.b0)
        return F.conv2d(y, self.k1, self.b1)

    def branch(self) -> Branch:
        kernel = torch.einsum("omhw,mi->oihw", self.k1, self.k0[:, :, 0, 0])
        bias = self.b1 + torch.einsum("omhw,m->o", self.k1, self.b0)
        return Branch(kernel, bias)


class ConvThenMask(nn.Module):
    """1x1 conv, bias padding, then a fixed depthwise 3x3 mask scaled per channel."""

    def __init__(self, in_channels: int, out_channels: int, mask: str) -> None:
        super().__init__()
        self.k0, self.b0 = _conv_params(in_channels, out_channels, 1)
        self.scale = nn.Parameter(torch.randn(out_channels, 1, 1, 1) * 1e-3)
        self.bias = nn.Parameter(torch.randn(out_channels) * 1e-3)
        self.register_buffer(
            "mask",
            torch.tensor(MASKS[mask]).expand(out_channels, 1, 3, 3).clone(),
            persistent=False,
        )

    def depthwise(self) -> Tensor:
        return self.scale * self.mask.to(self.scale.dtype)

    def forward(self, x: Tensor) -> Tensor:
        y = pad_with_bias(F.conv2d(x, self.k0, self.b0), self.b0)
        return F.conv2d(y, self.depthwise(), self.bias, groups=y.shape[1])

    def branch(self) -> Branch:
        depthwise = self.depthwise()[:, 0]
        kernel = depthwise.unsqueeze(1) * self.k0
        bias = self.bias + depthwise.sum((1, 2)) * self.b0
        return Branch(kernel, bias)


class ECB(ReparamBlock):
    """Edge-oriented Convolution Block: five 3x3-equivalent branches (plus an
    identity when ``with_idt`` and ``in == out``), stride 1, no groups."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        depth_multiplier: float = 2.0,
        with_idt: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, 3, 1, 1, 1)
        self.conv3x3_weight, self.conv3x3_bias = _conv_params(in_channels, out_channels, 3)
        mid = int(out_channels * depth_multiplier)
        self.conv1x1_3x3 = ConvThenConv3x3(in_channels, out_channels, mid)
        self.sobel_x = ConvThenMask(in_channels, out_channels, "sobel_x")
        self.sobel_y = ConvThenMask(in_channels, out_channels, "sobel_y")
        self.laplacian = ConvThenMask(in_channels, out_channels, "laplacian")
        self.with_idt = with_idt and in_channels == out_channels
        if self.with_idt:
            self.register_buffer("id_kernel", identity_kernel(in_channels, 1), persistent=False)

    def _sequences(self) -> tuple[nn.Module, ...]:
        return (self.conv1x1_3x3, self.sobel_x, self.sobel_y, self.laplacian)

    def branches(self) -> list[Branch]:
        branches = [Branch(self.conv3x3_weight, self.conv3x3_bias)]
        branches += [seq.branch() for seq in self._sequences()]
        if self.with_idt:
            branches.append(Branch(self.id_kernel.to(self.conv3x3_weight.dtype), identity=True))
        return branches

    def forward_branches(self, x: Tensor) -> Tensor:
        out = self.apply_kernel(x, self.conv3x3_weight, self.conv3x3_bias)
        for seq in self._sequences():
            out = out + seq(x)
        if self.with_idt:
            out = out + x
        return out
