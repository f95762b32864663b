"""timm models by name (``timm/<name>``): built by timm, adopted by
:mod:`repq.reparam.timm_blocks` when they are merged or prepared for QAT."""

from __future__ import annotations

from torch import nn

from repq.errors import ConfigError
from repq.quant.policy import PrecisionPolicy
from repq.reparam.adapters import is_identity

UNSIGNED_ACTIVATIONS = (nn.ReLU, nn.ReLU6)


def timm_policy(model: nn.Module) -> PrecisionPolicy:
    """RepVGG's rule (the first layer's input at 8 bits, S1); hidden inputs unsigned only
    when every activation is a ReLU and nothing (SE, attention) sits between a block's
    sum and its ReLU."""
    activations = [m for m in model.modules() if _is_activation(m)]
    relu_only = all(isinstance(m, UNSIGNED_ACTIVATIONS) for m in activations)
    attention = any(not is_identity(getattr(m, "attn", None)) for m in model.modules())
    return PrecisionPolicy(first="input", signed_hidden=not relu_only or attention)


ACTIVATION_MODULES = ("torch.nn.modules.activation", "timm.layers.activations")


def _is_activation(module: nn.Module) -> bool:
    return type(module).__module__.startswith(ACTIVATION_MODULES)


def create_timm(name: str, **kwargs) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` (``pretrained=True`` loads timm's weights
    where the machine reaches them), with the model's precision policy set; a None
    value drops its key (an experiment that unsets a shared override)."""
    try:
        import timm
    except ImportError:
        raise ConfigError(f"model timm/{name} needs timm: pip install 'repq[timm]'") from None
    if not timm.is_model(name):
        raise ConfigError(f"timm has no model {name!r} (timm.list_models() lists them)")
    model = timm.create_model(name, **{k: v for k, v in kwargs.items() if v is not None})
    model.precision_policy = timm_policy(model)
    return model
