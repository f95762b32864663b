"""Shared test helpers."""

from __future__ import annotations

import pytest
import torch
from torch import nn


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error ``|a - b| / |b|`` (Frobenius norms)."""
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0, scale: float = 0.1) -> nn.Module:
    """Perturb every parameter (so no branch sits at a zero init) and give every BN
    random running statistics and affine parameters (never the defaults)."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=gen) * 0.5 + 0.75)
            m.weight.copy_(torch.rand(c, generator=gen) * 0.5 + 0.75)
            m.bias.copy_(torch.randn(c, generator=gen) * 0.1)
    return model


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
