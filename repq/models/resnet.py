"""ResNet-18 with plain, ACNet or OREPA convolutions.

Every 3x3 conv+BN of the basic blocks becomes the chosen block (16 of them); the
7x7 stem stays conv+BN except for OREPA, whose stem is the large-kernel generator;
the 1x1 projection shortcuts and the classifier stay plain.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from repq.quant.policy import PrecisionPolicy
from repq.reparam.acnet import ACBlock
from repq.reparam.base import ReparamBlock
from repq.reparam.convbn import ConvBN
from repq.reparam.orepa import OREPABlock, OREPALargeConv

ConvFactory = Callable[[int, int, int], ReparamBlock]


class BasicBlock(nn.Module):
    """``relu(conv2(relu(conv1(x))) + shortcut(x))``."""

    def __init__(self, conv: ConvFactory, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv(in_channels, out_channels, stride)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv(out_channels, out_channels, 1)
        self.shortcut = (
            ConvBN(in_channels, out_channels, 1, stride, 0)
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.relu(self.conv1(x)))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 (``[2, 2, 2, 2]`` basic blocks, widths 64-512)."""

    bnest_keep_bn = 2

    def __init__(
        self,
        conv: ConvFactory,
        stem: Callable[[int, int], ReparamBlock],
        policy: PrecisionPolicy,
        num_classes: int = 1000,
        width_mult: float = 1.0,
    ) -> None:
        super().__init__()
        self.precision_policy = policy
        widths = [max(8, round(w * width_mult)) for w in (64, 128, 256, 512)]
        self.stem = nn.Sequential(stem(3, widths[0]), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        in_channels = widths[0]
        layers = []
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(
                nn.Sequential(
                    BasicBlock(conv, in_channels, width, stride),
                    BasicBlock(conv, width, width, 1),
                )
            )
            in_channels = width
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.layers(self.stem(x))).flatten(1)
        return self.classifier(x)


def _plain_stem(in_channels: int, out_channels: int) -> ReparamBlock:
    return ConvBN(in_channels, out_channels, 7, 2, 3)


def resnet18(num_classes: int = 1000, width_mult: float = 1.0) -> ResNet18:
    """The plain reference ResNet-18 (every conv+BN a :class:`ConvBN`)."""
    return ResNet18(
        lambda i, o, s: ConvBN(i, o, 3, s, 1),
        _plain_stem,
        PrecisionPolicy(first="full"),
        num_classes,
        width_mult,
    )


def ac_resnet18(num_classes: int = 1000, width_mult: float = 1.0) -> ResNet18:
    """AC-ResNet-18: ACBlocks; at 4 bits only the first layer stays 8-bit (S1)."""
    return ResNet18(
        lambda i, o, s: ACBlock(i, o, 3, s, 1),
        _plain_stem,
        PrecisionPolicy(first="full"),
        num_classes,
        width_mult,
    )


def orepa_resnet18(num_classes: int = 1000, width_mult: float = 1.0) -> ResNet18:
    """OREPA-ResNet-18: OREPA blocks and the 7x7 OREPA stem; at 4 bits the first and
    last layers stay fully 8-bit (S1)."""
    return ResNet18(
        lambda i, o, s: OREPABlock(i, o, 3, s, 1),
        lambda i, o: OREPALargeConv(i, o, 7, 2, 3),
        PrecisionPolicy(first="full", last="full"),
        num_classes,
        width_mult,
    )
