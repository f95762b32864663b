"""A sum of conv (+BN) and identity (+BN) branches, each optionally scaled per output
channel: the generic block that adapters of other libraries' blocks build
(:mod:`repq.reparam.timm_blocks`)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from repq.errors import UnsupportedBlock
from repq.reparam.base import Branch, ReparamBlock, identity_kernel


@dataclass(frozen=True)
class Term:
    """One branch of a :class:`BranchSum`: ``sign * gamma? * norm(conv(x))``; ``conv``
    None is the identity, ``norm`` None no BN, ``scaled`` multiplies by the block's
    ``gamma`` (a layer scale)."""

    conv: nn.Conv2d | None
    norm: nn.BatchNorm2d | None = None
    sign: float = 1.0
    scaled: bool = False


class BranchSum(ReparamBlock):
    """A sum of conv (+BN) and identity (+BN) branches, each optionally scaled per output
    channel: the linear part of every timm block :mod:`repq.reparam.timm_blocks` adapts.
    ``name`` (the module path) is what an :class:`UnsupportedBlock` error names."""

    def __init__(
        self,
        name: str,
        terms: list[Term],
        geometry: dict,
        gamma: nn.Parameter | None = None,
    ) -> None:
        super().__init__(**geometry)
        for term in terms:
            if term.conv is not None:
                self._check_conv(name, term.conv)
        if any(t.conv is None for t in terms) and self.in_channels != self.out_channels:
            raise UnsupportedBlock(f"{name}: an identity branch needs in == out channels")
        self.convs = nn.ModuleList(t.conv if t.conv is not None else nn.Identity() for t in terms)
        self.norms = nn.ModuleList(t.norm if t.norm is not None else nn.Identity() for t in terms)
        self.signs = tuple(t.sign for t in terms)
        self.scaled = tuple(t.scaled for t in terms)
        self.gamma = gamma
        self.register_buffer(
            "id_kernel", identity_kernel(self.in_channels, self.groups), persistent=False
        )

    def _check_conv(self, name: str, conv: nn.Conv2d) -> None:
        """Refuse a conv that is not an exact centred tap set of this block's kernel."""
        k, p = conv.kernel_size, conv.padding
        centred = all(
            k[i] <= self.kernel_size[i]
            and (self.kernel_size[i] - k[i]) % 2 == 0
            and p[i] == self.padding[i] - (self.kernel_size[i] - k[i]) // 2
            for i in range(2)
        )
        plain = type(conv) is nn.Conv2d and conv.padding_mode == "zeros"
        same = (conv.in_channels, conv.out_channels, conv.stride, conv.groups) == (
            self.in_channels,
            self.out_channels,
            self.stride,
            self.groups,
        )
        if not (plain and same and centred and conv.dilation == (1, 1)):
            raise UnsupportedBlock(
                f"{name}: {conv} cannot be merged into a {self.kernel_size} kernel "
                f"(padding {self.padding}, stride {self.stride}, groups {self.groups})"
            )

    def _scale(self, sign: float, scaled: bool) -> Tensor | None:
        if scaled and self.gamma is not None:
            gamma = self.gamma.reshape(-1)
            return gamma if sign == 1.0 else gamma * sign
        if sign == 1.0:
            return None
        return self.id_kernel.new_full((self.out_channels,), sign)

    def _terms(self):
        return zip(self.convs, self.norms, self.signs, self.scaled, strict=True)

    def branches(self) -> list[Branch]:
        dtype = next(self.parameters()).dtype
        branches = []
        for conv, norm, sign, scaled in self._terms():
            identity = isinstance(conv, nn.Identity)
            kernel = self.id_kernel.to(dtype) if identity else conv.weight
            bias = None if identity else conv.bias
            bn = norm if isinstance(norm, nn.BatchNorm2d) else None
            branches.append(Branch(kernel, bias, bn, identity, self._scale(sign, scaled)))
        return branches

    def forward_branches(self, x: Tensor) -> Tensor:
        total = None
        for conv, norm, sign, scaled in self._terms():
            y = norm(conv(x))
            scale = self._scale(sign, scaled)
            if scale is not None:
                y = y * scale.to(y.dtype).reshape(1, -1, 1, 1)
            total = y if total is None else total + y
        return total


def plain_norm(bn: nn.BatchNorm2d) -> nn.BatchNorm2d:
    """An ``nn.BatchNorm2d`` holding ``bn``'s own parameters and buffers (timm's
    ``BatchNormAct2d`` adds a drop and an activation to BN's forward)."""
    if type(bn) is nn.BatchNorm2d:
        return bn
    norm = nn.BatchNorm2d(
        bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats
    ).to(device=bn.running_mean.device)
    norm.weight, norm.bias = bn.weight, bn.bias
    norm.running_mean, norm.running_var = bn.running_mean, bn.running_var
    norm.num_batches_tracked = bn.num_batches_tracked
    return norm
