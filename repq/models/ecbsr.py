"""ECBSR-MmCc (Zhang et al., ACM MM 2021): ECB blocks on the Y channel, pixel shuffle."""

from __future__ import annotations

from torch import Tensor, nn

from repq.quant.policy import PrecisionPolicy
from repq.reparam.ecb import ECB


class ECBSR(nn.Module):
    """``ECB(1 -> c)``, ``m x ECB(c -> c)``, ``ECB(c -> s*s)``, PReLU after all but the
    last, the input added to the output (broadcast over the ``s*s`` sub-pixels), then
    pixel shuffle by ``s``."""

    precision_policy = PrecisionPolicy(
        first="full", last="full", signed_input=False, signed_hidden=True
    )
    bnest_keep_bn = 0

    def __init__(
        self, m: int = 4, c: int = 16, scale: int = 2, colors: int = 1, with_idt: bool = False
    ) -> None:
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [ECB(colors, c, 2.0, with_idt), nn.PReLU(c)]
        for _ in range(m):
            layers += [ECB(c, c, 2.0, with_idt), nn.PReLU(c)]
        layers.append(ECB(c, colors * scale * scale, 2.0, with_idt))
        self.body = nn.Sequential(*layers)
        self.upsample = nn.PixelShuffle(scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.upsample(self.body(x) + x)
