"""Shared test helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn


def layer_gradients(layer: nn.Module, x: torch.Tensor, forward=None) -> tuple[torch.Tensor, dict]:
    """The output of ``forward(layer, x)`` (default: ``layer(x)``) and, under the loss
    ``out.square().sum()``, the gradients of the input and of every parameter."""
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    out = forward(layer, x) if forward is not None else layer(x)
    out.float().square().sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
    return out.detach(), {"input": x.grad.clone(), **grads}


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
            if m.affine:
                m.weight.copy_(torch.rand(c, generator=gen) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.1)
    return model


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def _session_store(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('tracking') / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def _no_logging_into_the_checkout(_session_store, monkeypatch) -> None:
    """A job that names no store logs here, not into the checkout's results/mlflow.db."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _session_store)


RECIPES = Path(__file__).resolve().parents[1] / "config" / "recipes"


@pytest.fixture(scope="session")
def mini_data(tmp_path_factory) -> Path:
    """A small mini benchmark on disk (real PNG files), shared by the session."""
    from repq.data.mini import MiniSpec, write_mini

    root = tmp_path_factory.mktemp("data") / "mini"
    write_mini(root, MiniSpec(train_per_class=24, val_per_class=4, image_size=32))
    return root


def tracking_overrides(root: Path) -> list[str]:
    """Point a job at its own SQLite tracking store under ``root``."""
    return [
        f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
        f"tracking.artifacts={root / 'artifacts'}",
    ]


def cls_overrides(data: Path, epochs: int = 2) -> list[str]:
    """A tiny classification recipe on the mini data."""
    return [
        f"data.root={data / 'cls'}",
        "data.image_size=32",
        "data.resize=32",
        "data.workers=0",
        "model.kwargs.num_classes=12",
        "model.kwargs.width_mult=0.25",
        f"train.epochs={epochs}",
        "train.batch_size=32",
        "train.warmup_epochs=0",
        "train.lr.fp=0.02",
        "train.lr.quantized=0.002",
    ]


def sr_overrides(data: Path, epochs: int = 2) -> list[str]:
    """A tiny ECBSR recipe on the mini data."""
    tests = data / "sr" / "test"
    return [
        f"data.train={data / 'sr' / 'train'}",
        f"data.test={{mini_a: {tests / 'mini_a'}, mini_b: {tests / 'mini_b'}}}",
        "data.patch=16",
        "data.repeat=2",
        "data.workers=0",
        "model.kwargs.m=1",
        "model.kwargs.c=8",
        f"train.epochs={epochs}",
        "train.batch_size=8",
    ]


def as_args(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]
