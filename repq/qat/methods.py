"""The model transformation of each QAT method (supplementary S1): one handler per
entry of :data:`repq.vocab.METHODS`, registered in :data:`HANDLERS`.

* ``merged``: re-parameterize, so LSQ quantizes every merged conv and linear layer (the
  Merged LSQ baseline);
* ``repq``: every re-parametrized block (conv+BN pairs included) is quantized through
  its merged kernel, BN folded with batch statistics (Algorithm 1);
* ``bnest``: as ``repq`` with BN statistics estimated (S3, S8) in every block but the
  last ``keep_bn`` ones; its FP stage trains the same BN-estimation model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from repq.reparam.base import ReparamBlock
from repq.reparam.surgery import adopt_blocks, convert_blocks, outermost
from repq.vocab import METHODS

Transform = Callable[[nn.Module, int | None], nn.Module]


@dataclass(frozen=True)
class Handler:
    """How a method changes a float model (in place; ``keep_bn`` as in :func:`bnest_fp`).

    ``qat_form`` gives the model whose outermost convs, linears and re-parametrized
    blocks :func:`repq.qat.prepare` quantizes; it receives a model whose blocks are
    adopted (:func:`repq.reparam.adopt_blocks`). ``fp_form``, when the method trains a
    float model of its own (``Method.fp_variant``), gives that model from a plain one.
    """

    qat_form: Transform
    fp_form: Transform | None = None


def norm_blocks(model: nn.Module) -> list[ReparamBlock]:
    """Outermost blocks that carry BatchNorm, in forward (registration) order."""
    return [m for _, m in outermost(model, lambda m: isinstance(m, ReparamBlock)) if m.has_norm]


def _estimated_statistics(model: nn.Module, keep_bn: int | None) -> nn.Module:
    keep_bn = getattr(model, "bnest_keep_bn", 0) if keep_bn is None else keep_bn
    blocks = norm_blocks(model)
    for i, block in enumerate(blocks):
        block.norm_mode = "estimate" if i < len(blocks) - keep_bn else "batch"
    return model


def bnest_fp(model: nn.Module, keep_bn: int | None = None) -> nn.Module:
    """Turn the BN of every block except the last ``keep_bn`` ones into BN-estimation
    layers (in place; blocks adopted first). ``keep_bn`` defaults to the model's
    ``bnest_keep_bn`` (2 for the ResNet-18 models, where small maps make the estimate
    poor; S1, S2)."""
    return _estimated_statistics(adopt_blocks(model), keep_bn)


def _merged(model: nn.Module, keep_bn: int | None) -> nn.Module:
    return convert_blocks(model)


def _batch_statistics(model: nn.Module, keep_bn: int | None) -> nn.Module:
    for block in norm_blocks(model):
        block.norm_mode = "batch"
    return model


HANDLERS: dict[str, Handler] = {
    "merged": Handler(_merged),
    "repq": Handler(_batch_statistics),
    "bnest": Handler(_estimated_statistics, fp_form=bnest_fp),
}


def fp_form(model: nn.Module, fp_stage: str, keep_bn: int | None = None) -> nn.Module:
    """The float model of ``fp_stage`` (in place): the plain model for ``fp``, the
    owning method's ``fp_form`` for a method's own FP stage."""
    for name, method in METHODS.items():
        if method.fp_variant and method.fp_stage == fp_stage:
            return HANDLERS[name].fp_form(model, keep_bn)
    return model
