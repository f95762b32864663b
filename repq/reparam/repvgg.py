"""The RepVGG block (Ding et al., CVPR 2021): 3x3+BN, 1x1+BN and a BN identity."""

from __future__ import annotations

from torch import Tensor, nn

from repq.reparam.base import Branch, ReparamBlock, identity_kernel
from repq.reparam.convbn import ConvBN


class RepVGGBlock(ReparamBlock):
    """Sum of a ``k x k`` conv+BN, a 1x1 conv+BN (same stride) and, when the shapes
    allow it (``in == out``, stride 1), a BN-only identity branch. The non-linearity
    that follows in RepVGG is not part of the (linear) block."""

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
        self.dense = ConvBN(in_channels, out_channels, kernel_size, stride, self.padding, groups)
        pad_1x1 = (
            self.padding[0] - self.kernel_size[0] // 2,
            self.padding[1] - self.kernel_size[1] // 2,
        )
        self.one = ConvBN(in_channels, out_channels, 1, stride, pad_1x1, groups)
        self.identity = (
            nn.BatchNorm2d(in_channels)
            if in_channels == out_channels and self.stride == (1, 1)
            else None
        )
        if self.identity is not None:
            self.register_buffer(
                "id_kernel", identity_kernel(in_channels, groups), persistent=False
            )

    def branches(self) -> list[Branch]:
        branches = self.dense.branches() + self.one.branches()
        if self.identity is not None:
            kernel = self.id_kernel.to(self.dense.conv.weight.dtype)
            branches.append(Branch(kernel, None, self.identity, identity=True))
        return branches

    def forward_branches(self, x: Tensor) -> Tensor:
        out = self.dense.forward_branches(x) + self.one.forward_branches(x)
        if self.identity is not None:
            out = out + self.identity(x)
        return out
