"""Foreign re-parametrizable blocks, presented through :class:`ReparamBlock`.

An adapter turns one module of another library into modules of this package: its
linear multi-branch part becomes a :class:`ReparamBlock` (so merging, RepQ and
RepQ-BNest reach it through ``branches()``), what is not linear (activations, SE) stays
after it. Adapters are registered per class (:func:`register_adapter`); timm's are
registered the first time a model holds a timm module (:mod:`repq.reparam.timm_blocks`).

A module that is not adapted but looks re-parametrizable, because it has one of
:data:`LOOKALIKE_METHODS` (timm's ``reparameterize_model`` calls them), would be
quantized branch by branch, the option the paper rejects: :func:`lookalike_method`
names what gives it away.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from torch import nn

from repq.reparam.base import ReparamBlock

Adapter = Callable[[str, nn.Module], nn.Module]
"""``(path, module) -> replacement``; raises :class:`repq.errors.UnsupportedBlock` for a
module of its class that it cannot merge (the message names ``path``)."""

ADAPTERS: dict[type[nn.Module], Adapter] = {}
LOOKALIKE_METHODS = ("reparameterize", "switch_to_deploy", "fuse")


def register_adapter(cls: type[nn.Module], adapter: Adapter) -> None:
    """Adopt every module of exactly ``cls`` with ``adapter``."""
    ADAPTERS[cls] = adapter


def load_library_adapters() -> None:
    """Register the adapters of the libraries whose modules a model can hold (a timm
    module exists only once timm is imported); call once before :func:`adapt_foreign`."""
    if "timm" in sys.modules:
        import repq.reparam.timm_blocks  # noqa: F401  (registers on import)


def adapt_foreign(name: str, module: nn.Module) -> nn.Module | None:
    """The adopted form of ``module``, or None when no adapter is registered for it."""
    adapter = ADAPTERS.get(type(module))
    return adapter(name, module) if adapter is not None else None


def lookalike_method(module: nn.Module) -> str | None:
    """The first of :data:`LOOKALIKE_METHODS` that a module other than a
    :class:`ReparamBlock` has: the sign that it re-parametrizes itself; else None."""
    if isinstance(module, ReparamBlock):
        return None
    kind = type(module)
    return next((name for name in LOOKALIKE_METHODS if callable(getattr(kind, name, None))), None)


def looks_reparametrizable(module: nn.Module) -> bool:
    return lookalike_method(module) is not None


def is_identity(module: nn.Module | None) -> bool:
    """Whether an optional part of a block does nothing (absent or ``nn.Identity``)."""
    return module is None or isinstance(module, nn.Identity)
