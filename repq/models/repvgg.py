"""RepVGG-A0 and RepVGG-B0 (Ding et al., CVPR 2021), as the official code builds them."""

from __future__ import annotations

from torch import Tensor, nn

from repq.quant.policy import PrecisionPolicy
from repq.reparam.repvgg import RepVGGBlock

STAGE_WIDTHS = (64, 128, 256, 512)


def _scaled(channels: float, width_mult: float) -> int:
    return max(8, round(channels * width_mult))


class RepVGG(nn.Module):
    """Stem block, four stages (the first block of each has stride 2), global average
    pooling and a linear classifier. Every block is followed by a ReLU."""

    precision_policy = PrecisionPolicy(first="input")
    bnest_keep_bn = 0

    def __init__(
        self,
        num_blocks: tuple[int, ...],
        width_multipliers: tuple[float, ...],
        num_classes: int = 1000,
        width_mult: float = 1.0,
    ) -> None:
        super().__init__()
        stem = _scaled(min(64, 64 * width_multipliers[0]), width_mult)
        self.stem = nn.Sequential(RepVGGBlock(3, stem, 3, stride=2), nn.ReLU(inplace=True))
        in_channels = stem
        stages = []
        for blocks, base, mult in zip(num_blocks, STAGE_WIDTHS, width_multipliers, strict=True):
            out_channels = _scaled(base * mult, width_mult)
            layers: list[nn.Module] = []
            for i in range(blocks):
                layers += [
                    RepVGGBlock(in_channels, out_channels, 3, stride=2 if i == 0 else 1),
                    nn.ReLU(inplace=True),
                ]
                in_channels = out_channels
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.stages(self.stem(x))).flatten(1)
        return self.classifier(x)


def repvgg_a0(num_classes: int = 1000, width_mult: float = 1.0) -> RepVGG:
    """RepVGG-A0: blocks ``[2, 4, 14, 1]``, widths ``[0.75, 0.75, 0.75, 2.5]``."""
    return RepVGG((2, 4, 14, 1), (0.75, 0.75, 0.75, 2.5), num_classes, width_mult)


def repvgg_b0(num_classes: int = 1000, width_mult: float = 1.0) -> RepVGG:
    """RepVGG-B0: blocks ``[4, 6, 16, 1]``, widths ``[1, 1, 1, 2.5]``."""
    return RepVGG((4, 6, 16, 1), (1.0, 1.0, 1.0, 2.5), num_classes, width_mult)
