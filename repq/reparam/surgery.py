"""Module surgery shared by deployment and QAT preparation."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable

from torch import nn

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


def _to_conv(name: str, module: nn.Module) -> nn.Module | None:
    return module.to_conv() if isinstance(module, ReparamBlock) else None


def merge_blocks(model: nn.Module) -> nn.Module:
    """Turn every block (and every conv+BN pair) of ``model`` into one ``nn.Conv2d`` with
    bias, in place."""
    return replace_modules(adopt_conv_bn(model), _to_conv)


def reparameterize(model: nn.Module) -> nn.Module:
    """A deploy copy of ``model`` (see :func:`merge_blocks`); the original is untouched."""
    return merge_blocks(copy.deepcopy(model)).train(model.training)
