"""The model zoo: ``create(name, **kwargs)`` and ``available()``."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from repq.errors import ConfigError
from repq.models.ecbsr import ECBSR
from repq.models.repvgg import RepVGG, repvgg_a0, repvgg_b0
from repq.models.resnet import ResNet18, ac_resnet18, orepa_resnet18, resnet18
from repq.vocab import TIMM_PREFIX

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "repvgg_a0": repvgg_a0,
    "repvgg_b0": repvgg_b0,
    "ac_resnet18": ac_resnet18,
    "orepa_resnet18": orepa_resnet18,
    "resnet18": resnet18,
    "ecbsr": ECBSR,
}

NORM_FREE = frozenset({"ecbsr"})  # architectures without BatchNorm (no RepQ-BNest)


def available() -> list[str]:
    """Names accepted by :func:`create`."""
    return sorted(_REGISTRY)


def create(name: str, **kwargs) -> nn.Module:
    """Build a model by name, e.g. ``create("ecbsr", m=4, c=16, scale=4)``; a name
    ``timm/<name>`` is timm's model (``repq[timm]``), e.g. ``timm/mobileone_s0``."""
    if name.startswith(TIMM_PREFIX):
        from repq.models.timm_models import create_timm

        return create_timm(name.removeprefix(TIMM_PREFIX), **kwargs)
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(available())}") from None
    _check_kwargs(name, factory, kwargs)
    return factory(**kwargs)


def _check_kwargs(name: str, factory, kwargs: dict) -> None:
    """Refuse ``model.kwargs`` the factory does not take, naming those it does."""
    parameters = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(set(kwargs) - set(parameters))
    if unknown:
        raise ConfigError(
            f"model.kwargs.{unknown[0]}: {name} takes no argument {unknown[0]!r} "
            f"(it takes {', '.join(parameters)})"
        )


__all__ = ["ECBSR", "NORM_FREE", "RepVGG", "ResNet18", "available", "create"]
