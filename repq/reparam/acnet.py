"""The Asymmetric Convolution Block (Ding et al., ICCV 2019): k x k, k x 1 and 1 x k."""

from __future__ import annotations

from torch import Tensor

from repq.reparam.base import Branch, ReparamBlock
from repq.reparam.convbn import ConvBN


class ACBlock(ReparamBlock):
    """Sum of a square ``k x k`` conv+BN, a vertical ``k x 1`` conv+BN and a horizontal
    ``1 x k`` conv+BN, with no BN after the sum. The asymmetric kernels land on the
    centre column and row of the square kernel."""

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
        k = self.kernel_size[0]
        p = self.padding[0]
        if self.kernel_size[0] != self.kernel_size[1] or self.padding[0] != self.padding[1]:
            raise ValueError("ACBlock needs a square kernel and symmetric padding")
        if p < k // 2:  # the 1xk and kx1 branches would need negative padding
            raise ValueError(f"ACBlock needs padding >= kernel_size // 2 = {k // 2}, got {p}")
        self.square = ConvBN(in_channels, out_channels, k, stride, p, groups)
        self.ver = ConvBN(in_channels, out_channels, (k, 1), stride, (p, p - k // 2), groups)
        self.hor = ConvBN(in_channels, out_channels, (1, k), stride, (p - k // 2, p), groups)

    def branches(self) -> list[Branch]:
        return self.square.branches() + self.ver.branches() + self.hor.branches()

    def forward_branches(self, x: Tensor) -> Tensor:
        return (
            self.square.forward_branches(x)
            + self.ver.forward_branches(x)
            + self.hor.forward_branches(x)
        )
