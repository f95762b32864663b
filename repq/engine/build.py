"""Building the model of a job: FP, FP-BNest, or QAT from an FP checkpoint."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from repq.engine.checkpoint import CheckpointError, load_checkpoint, load_state
from repq.models import create
from repq.qat import bnest_fp, prepare, to_deploy
from repq.reparam import reparameterize

STAGES = ("fp", "fp-bnest", "qat")


def fp_stage_for(method: str) -> str:
    """The FP stage a QAT method starts from (RepQ-BNest has its own FP model)."""
    return "fp-bnest" if method == "bnest" else "fp"


def float_model(config: dict, bnest: bool) -> nn.Module:
    """The float model of a config, with BN-estimation layers if ``bnest``."""
    model = create(config["model"]["name"], **config["model"].get("kwargs", {}))
    if bnest:
        bnest_fp(model, config["model"].get("bnest_keep_bn"))
    return model


def load_init(model: nn.Module, init: str | Path, method: str) -> None:
    """Load an FP checkpoint into the float model a QAT job starts from."""
    content = load_checkpoint(init, "model")
    expected = fp_stage_for(method)
    if content["stage"] != expected:
        raise CheckpointError(
            f"QAT with {method!r} starts from a {expected!r} checkpoint; "
            f"{init} is {content['stage']!r}"
        )
    load_state(model, content["model"], str(init))


def build_model(
    config: dict,
    stage: str,
    method: str | None = None,
    bits: int | None = None,
    init: str | Path | None = None,
) -> nn.Module:
    """The trainable model of a job. A QAT job loads ``init`` (if given) into its float
    model before :func:`repq.qat.prepare` (the Merged baseline merges that model)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {STAGES}")
    bnest = stage == "fp-bnest" or method == "bnest"
    model = float_model(config, bnest)
    if stage != "qat":
        return model
    if init is not None:
        load_init(model, init, method)
    return prepare(model, method, bits, keep_bn=config["model"].get("bnest_keep_bn"))


def deploy_form(model: nn.Module, stage: str) -> nn.Module:
    """What would be deployed: the quantized deploy model, or the merged float model."""
    return to_deploy(model) if stage == "qat" else reparameterize(model).eval()


def model_from_file(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a trained model from a job's ``model.pt``; returns it and the file."""
    content = load_checkpoint(path, "model")
    model = build_model(content["config"], content["stage"], content["method"], content["bits"])
    load_state(model, content["model"], str(path))
    return model, content
