"""Building the model of a job: an FP stage's float model, or QAT from an FP checkpoint."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from repq.engine.checkpoint import load_checkpoint, load_state
from repq.errors import CheckpointError
from repq.models import create
from repq.qat import QatOptions, fp_form, prepare, to_deploy
from repq.quant.init import QuantInit
from repq.reparam import reparameterize
from repq.vocab import Stage


def float_model(config: dict, fp_stage: str) -> nn.Module:
    """The float model of a config in the form of ``fp_stage`` (``fp``, ``fp-bnest``)."""
    model = create(config["model"]["name"], **config["model"].get("kwargs", {}))
    return fp_form(model, fp_stage, config["model"].get("bnest_keep_bn"))


def load_init(model: nn.Module, init: str | Path, stage: Stage) -> None:
    """Load the FP checkpoint a QAT stage starts from into its float model."""
    content = load_checkpoint(init, "model")
    expected = str(stage.init)
    if content["stage"] != expected:
        raise CheckpointError(
            f"{stage} starts from a {expected!r} checkpoint; {init} is {content['stage']!r}"
        )
    load_state(model, content["model"], str(init))


def build_model(config: dict, stage: Stage, init: str | Path | None = None) -> nn.Module:
    """The model of a job. A quantized stage loads ``init`` (if given) into its float
    model before :func:`repq.qat.prepare` (PTQ and the Merged baseline merge that model);
    its steps are initialised by the recipe's ``quant`` rules when it is calibrated, and
    its layers train as ``quant.bn_stats`` and ``quant.train_bias`` say."""
    if not stage.quantized:
        return float_model(config, stage.name)
    model = float_model(config, stage.init.name)
    if init is not None:
        load_init(model, init, stage)
    keep_bn = config["model"].get("bnest_keep_bn")
    quant, options = QuantInit.from_config(config), QatOptions.from_config(config)
    method = stage.quant_method
    return prepare(model, method, stage.bits, keep_bn=keep_bn, init=quant, options=options)


def deploy_form(model: nn.Module, stage: Stage) -> nn.Module:
    """What would be deployed: the quantized deploy model, or the merged float model."""
    return to_deploy(model) if stage.quantized else reparameterize(model).eval()


def model_from_file(path: str | Path) -> tuple[nn.Module, dict, Stage]:
    """Rebuild a trained model from a job's ``model.pt``; returns it, the file's content
    and its stage."""
    content = load_checkpoint(path, "model")
    stage = Stage.parse(content["stage"])
    model = build_model(content["config"], stage)
    load_state(model, content["model"], str(path))
    return model, content, stage
