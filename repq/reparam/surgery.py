"""Module surgery shared by deployment and QAT preparation."""

from __future__ import annotations

import copy
import itertools
import warnings
from collections.abc import Callable

from torch import nn

from repq.errors import UnsupportedBlock
from repq.reparam.adapters import (
    adapt_foreign,
    load_library_adapters,
    lookalike_method,
    looks_reparametrizable,
)
from repq.reparam.base import ReparamBlock
from repq.reparam.convbn import ConvBN

Replacer = Callable[[str, nn.Module], nn.Module | None]


def replace_modules(module: nn.Module, replace: Replacer, prefix: str = "") -> nn.Module:
    """Walk ``module`` top-down and swap every child for which ``replace(name, child)``
    returns a module; children that were swapped are not descended into."""
    for name, child in module.named_children():
        path = f"{prefix}.{name}" if prefix else name
        new = replace(path, child)
        if new is None:
            replace_modules(child, replace, path)
        else:
            setattr(module, name, new)
    return module


def outermost(module: nn.Module, match: Callable[[nn.Module], bool]) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every submodule that matches, without looking inside matches;
    in registration order, which is forward order for the models of this package."""
    found: list[tuple[str, nn.Module]] = []

    def visit(name: str, child: nn.Module) -> nn.Module | None:
        if match(child):
            found.append((name, child))
            return child
        return None

    replace_modules(module, visit)
    return found


def adopt_conv_bn(module: nn.Module) -> nn.Module:
    """Turn every ``nn.Conv2d`` directly followed by ``nn.BatchNorm2d`` inside an
    ``nn.Sequential`` into a :class:`ConvBN` block (in place; same outputs)."""
    for child in module.children():
        adopt_conv_bn(child)
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for first, second in itertools.pairwise(names):
            conv, bn = module._modules[first], module._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and conv.bias is None:
                module._modules[first] = ConvBN.from_modules(conv, bn)
                module._modules[second] = nn.Identity()
    return module


class PerBranchWarning(UserWarning):
    """A module that looks re-parametrizable is quantized branch by branch, as asked."""


def refuse_lookalikes(model: nn.Module, allow_per_branch: bool = False) -> None:
    """Raise :class:`UnsupportedBlock` for the first module left that looks
    re-parametrizable (:func:`repq.reparam.adapters.looks_reparametrizable`); with
    ``allow_per_branch`` warn instead (its convs are then quantized one by one)."""
    found = outermost(model, looks_reparametrizable)
    if not found and looks_reparametrizable(model):
        found = [("the model", model)]
    if not found:
        return
    name, module = found[0]
    kind = f"{type(module).__module__}.{type(module).__qualname__}"
    text = (
        f"{name} ({kind}, with {lookalike_method(module)}()) looks re-parametrizable but has "
        f"no adapter, so its branches would be quantized separately"
        + (f" ({len(found) - 1} more such modules)" if len(found) > 1 else "")
    )
    if not allow_per_branch:
        raise UnsupportedBlock(
            f"{text}; register one (repq.reparam.register_adapter) or pass allow_per_branch=True"
        )
    warnings.warn(text, PerBranchWarning, stacklevel=3)


def adopt_blocks(model: nn.Module, allow_per_branch: bool = False) -> nn.Module:
    """Present every block of ``model`` through :class:`ReparamBlock`, in place: foreign
    blocks with a registered adapter (timm's), then conv+BN pairs; then refuse (or, with
    ``allow_per_branch``, warn about) any module left that looks re-parametrizable."""
    load_library_adapters()
    replace_modules(model, adapt_foreign)
    adopt_conv_bn(model)
    refuse_lookalikes(model, allow_per_branch)
    return model


def _to_conv(name: str, module: nn.Module) -> nn.Module | None:
    return module.to_conv() if isinstance(module, ReparamBlock) else None


def convert_blocks(model: nn.Module) -> nn.Module:
    """Replace every outermost block of an adopted model by its deploy conv, in place."""
    return replace_modules(model, _to_conv)


def merge_blocks(model: nn.Module, allow_per_branch: bool = False) -> nn.Module:
    """Turn every block (foreign blocks and conv+BN pairs included, see
    :func:`adopt_blocks`) of ``model`` into one ``nn.Conv2d`` with bias, in place."""
    return convert_blocks(adopt_blocks(model, allow_per_branch))


def reparameterize(model: nn.Module, allow_per_branch: bool = False) -> nn.Module:
    """A deploy copy of ``model`` (see :func:`merge_blocks`); the original is untouched."""
    return merge_blocks(copy.deepcopy(model), allow_per_branch).train(model.training)
