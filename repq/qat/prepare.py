"""``prepare(model, method, bits)``: the three QAT methods of the paper.

* ``merged``: re-parameterize, then LSQ on every conv and linear layer (the Merged
  LSQ baseline);
* ``repq``: every re-parametrized block (conv+BN pairs included) becomes one
  :class:`RepQConv` folding BN with batch statistics;
* ``bnest``: as ``repq`` with BN statistics estimated (S3, S8) in every block but the
  last ``keep_bn`` ones (the FP stage must have trained the same BN-estimation model,
  see :func:`bnest_fp`).
"""

from __future__ import annotations

import copy

from torch import nn

from repq.qat.repq_conv import RepQConv
from repq.quant.layers import QuantLayer, wrap_quantized
from repq.quant.policy import LayerPrecision, PrecisionPolicy
from repq.reparam.base import ReparamBlock
from repq.reparam.surgery import adopt_conv_bn, outermost, reparameterize, replace_modules

METHODS = ("merged", "repq", "bnest")


def default_policy(model: nn.Module) -> PrecisionPolicy:
    """The model's own precision policy (class attribute), else the uniform one."""
    return getattr(model, "precision_policy", PrecisionPolicy())


def norm_blocks(model: nn.Module) -> list[ReparamBlock]:
    """Outermost blocks that carry BatchNorm, in forward (registration) order."""
    return [m for _, m in outermost(model, lambda m: isinstance(m, ReparamBlock)) if m.has_norm]


def bnest_fp(model: nn.Module, keep_bn: int | None = None) -> nn.Module:
    """Turn the BN of every block except the last ``keep_bn`` ones into BN-estimation
    layers (in place). ``keep_bn`` defaults to the model's ``bnest_keep_bn`` (2 for the
    ResNet-18 models, where small maps make the estimate poor; S1, S2)."""
    keep_bn = getattr(model, "bnest_keep_bn", 0) if keep_bn is None else keep_bn
    blocks = norm_blocks(adopt_conv_bn(model))
    for i, block in enumerate(blocks):
        block.norm_mode = "estimate" if i < len(blocks) - keep_bn else "batch"
    return model


def quantizable_layers(model: nn.Module, method: str) -> list[str]:
    """Names of the layers ``prepare`` quantizes, in forward (registration) order."""
    kinds = (nn.Conv2d, nn.Linear) if method == "merged" else (nn.Conv2d, nn.Linear, ReparamBlock)
    return [name for name, _ in outermost(model, lambda m: isinstance(m, kinds))]


def prepare(
    model: nn.Module,
    method: str,
    bits: int,
    policy: PrecisionPolicy | None = None,
    keep_bn: int | None = None,
) -> nn.Module:
    """A QAT copy of a float model for ``method`` at ``bits`` (the original is kept)."""
    if method not in METHODS:
        raise ValueError(f"unknown QAT method {method!r}; choose one of {METHODS}")
    policy = default_policy(model) if policy is None else policy
    if method == "merged":
        qat = reparameterize(model)  # a copy
    elif method == "bnest":
        qat = bnest_fp(copy.deepcopy(model), keep_bn)
    else:
        qat = copy.deepcopy(model)
        for block in norm_blocks(adopt_conv_bn(qat)):
            block.norm_mode = "batch"
    names = quantizable_layers(qat, method)
    index = {name: i for i, name in enumerate(names)}

    def quantize(name: str, module: nn.Module) -> nn.Module | None:
        if name not in index:
            return None
        precision = policy.layer(name, index[name], len(names), bits)
        if isinstance(module, ReparamBlock):
            return RepQConv(module, precision)
        return wrap_quantized(module, precision)

    replace_modules(qat, quantize)
    qat.precision_policy = policy
    return qat


def precision_table(model: nn.Module) -> list[LayerPrecision]:
    """The precision of every quantized layer of a prepared model, in forward order."""
    return [m.precision for _, m in outermost(model, lambda m: isinstance(m, QuantLayer))]


def to_deploy(model: nn.Module) -> nn.Module:
    """The deployable quantized model: every quantized layer becomes a plain conv or
    linear with its fake-quantized weight and its input quantizer. Eval mode."""
    deploy = copy.deepcopy(model)
    replace_modules(deploy, lambda _, m: m.to_deploy() if isinstance(m, QuantLayer) else None)
    return deploy.eval()


def set_quantizers(model: nn.Module, enabled: bool) -> nn.Module:
    """Enable or disable (identity) every LSQ quantizer of a model, in place."""
    for module in model.modules():
        if isinstance(module, QuantLayer):
            module.input_quant.enabled = enabled
            module.weight_quant.enabled = enabled
    return model
