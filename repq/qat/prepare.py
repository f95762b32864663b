"""``prepare(model, method, bits)``: a QAT copy of a float model for any registered
method (:mod:`repq.qat.methods`), with LSQ on every layer the method exposes, at the
precision the model's policy gives each layer (S1)."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from repq.qat.methods import HANDLERS
from repq.qat.repq_conv import FOLD_STATISTICS, RepQConv
from repq.quant.init import QuantInit
from repq.quant.layers import TRAIN_BIASES, QuantLayer, wrap_quantized
from repq.quant.lsq import LSQQuantizer
from repq.quant.policy import LayerPrecision, PrecisionPolicy
from repq.reparam.base import ReparamBlock
from repq.reparam.surgery import adopt_blocks, outermost, replace_modules
from repq.vocab import method as registered_method

QUANTIZABLE = (nn.Conv2d, nn.Linear, ReparamBlock)


@dataclass(frozen=True)
class QatOptions:
    """How a prepared model's quantized layers train (the recipe's ``quant`` section;
    these are the defaults): the statistics RepQ blocks fold BN with (``bn_stats``,
    :data:`repq.qat.repq_conv.FOLD_STATISTICS`) and the bias in training
    (``train_bias``, :data:`repq.quant.layers.TRAIN_BIASES`)."""

    bn_stats: str = FOLD_STATISTICS[0]
    train_bias: str = TRAIN_BIASES[0]

    @classmethod
    def from_config(cls, config: dict) -> QatOptions:
        section = config.get("quant", {})
        return cls(**{k: section[k] for k in ("bn_stats", "train_bias") if k in section})

    def apply(self, model: nn.Module) -> nn.Module:
        """Set the options on every quantized layer of ``model`` (in place)."""
        for module in model.modules():
            if isinstance(module, QuantLayer):
                module.train_bias = self.train_bias
            if isinstance(module, RepQConv):
                module.bn_stats = self.bn_stats
        return model


def default_policy(model: nn.Module) -> PrecisionPolicy:
    """The model's own precision policy (class attribute), else the uniform one."""
    return getattr(model, "precision_policy", PrecisionPolicy())


def quantizable_layers(model: nn.Module) -> list[str]:
    """Names of the outermost convs, linears and re-parametrized blocks, in forward
    (registration) order: the layers :func:`prepare` quantizes."""
    return [name for name, _ in outermost(model, lambda m: isinstance(m, QUANTIZABLE))]


def prepare(
    model: nn.Module,
    method: str,
    bits: int,
    policy: PrecisionPolicy | None = None,
    keep_bn: int | None = None,
    init: QuantInit | None = None,
    allow_per_branch: bool = False,
    options: QatOptions | None = None,
) -> nn.Module:
    """A QAT copy of a float model for ``method`` at ``bits`` (the original is kept).

    Blocks are adopted first (:func:`repq.reparam.adopt_blocks`: timm's re-parametrizable
    blocks and conv+BN pairs); a module that looks re-parametrizable and has no adapter
    is refused, or quantized per branch with a warning when ``allow_per_branch``. A
    re-parametrized block becomes one :class:`RepQConv` (LSQ on its merged kernel); a
    plain conv or linear a quantized layer; ``init`` chooses the step initialisation
    (see :func:`repq.qat.calibrate`) and ``options`` how the layers train."""
    registered_method(method)
    policy = default_policy(model) if policy is None else policy
    adopted = adopt_blocks(copy.deepcopy(model), allow_per_branch)
    qat = HANDLERS[method].qat_form(adopted, keep_bn)
    names = quantizable_layers(qat)
    index = {name: i for i, name in enumerate(names)}

    def quantize(name: str, module: nn.Module) -> nn.Module | None:
        if name not in index:
            return None
        precision = policy.layer(name, index[name], len(names), bits)
        if isinstance(module, ReparamBlock):
            return RepQConv(module, precision, init)
        return wrap_quantized(module, precision, init)

    replace_modules(qat, quantize)
    (options or QatOptions()).apply(qat)
    qat.precision_policy = policy
    return qat


def precision_table(model: nn.Module) -> list[LayerPrecision]:
    """The precision of every quantized layer of a prepared model, in forward order."""
    return [m.precision for _, m in outermost(model, lambda m: isinstance(m, QuantLayer))]


def precision_tsv(model: nn.Module) -> str:
    """:func:`precision_table` as tab-separated text (a header only for a float model)."""
    rows = ["layer\tweight_bits\tinput_bits\tinput_signed"]
    for p in precision_table(model):
        rows.append(f"{p.name}\t{p.weight_bits}\t{p.input_bits}\t{str(p.input_signed).lower()}")
    return "\n".join(rows) + "\n"


def to_deploy(model: nn.Module) -> nn.Module:
    """The deployable quantized model: every quantized layer becomes a plain conv or
    linear with its fake-quantized weight and its input quantizer. Eval mode."""
    deploy = copy.deepcopy(model)
    replace_modules(deploy, lambda _, m: m.to_deploy() if isinstance(m, QuantLayer) else None)
    return deploy.eval()


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Tensor]) -> nn.Module:
    """Initialise every LSQ step of a prepared model from calibration ``batches``: float
    forward passes in eval mode (RepQ blocks fold with running statistics, so weight
    quantizers see the deploy kernels), each quantizer collecting its rule's estimate;
    then every step is set. The model's BN statistics do not change."""
    quantizers = [m for m in model.modules() if isinstance(m, LSQQuantizer)]
    training = model.training
    model.eval()
    for quantizer in quantizers:
        quantizer.start_calibration()
    try:
        for batch in batches:
            model(batch)
    finally:
        for quantizer in quantizers:
            quantizer.finish_calibration()
        model.train(training)
    return model


def set_quantizers(model: nn.Module, enabled: bool) -> nn.Module:
    """Enable or disable (identity) every LSQ quantizer of a model, in place."""
    for module in model.modules():
        if isinstance(module, QuantLayer):
            module.input_quant.enabled = enabled
            module.weight_quant.enabled = enabled
    return model
