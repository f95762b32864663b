"""Conv followed by BatchNorm: the simplest re-parametrized block (one branch)."""

from __future__ import annotations

from torch import Tensor, nn

from repq.reparam.base import Branch, ReparamBlock


class ConvBN(ReparamBlock):
    """``BN(conv(x))`` with a bias-free conv; deploys as one conv with bias."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | None = None,
        groups: int = 1,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups)
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels)

    @classmethod
    def from_modules(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> ConvBN:
        """Adopt an existing ``nn.Conv2d`` (without bias) and ``nn.BatchNorm2d`` pair."""
        if conv.bias is not None or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
            raise ValueError(f"cannot adopt {conv}: only bias-free, undilated, zero-padded convs")
        block = cls.__new__(cls)
        ReparamBlock.__init__(
            block,
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.groups,
        )
        block.conv, block.bn = conv, bn
        return block

    def branches(self) -> list[Branch]:
        return [Branch(self.conv.weight, None, self.bn)]

    def forward_branches(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))
