"""Planning of the workflow's jobs from its config (used by the Snakefile).

An *experiment* is one architecture at one setting (``ecbsr_x2``, ``repvgg_a0``...): a
Table S1 recipe plus overrides. Its *stages* are ``fp``, ``fp-bnest`` (models with BN,
when ``bnest`` is a method) and ``qat-<method>-<bits>``.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import yaml

from repq.engine.build import fp_stage_for
from repq.models import NORM_FREE


@cache
def _read_recipe(path: str) -> dict:
    return yaml.safe_load(Path(path).read_text())


def _recipe(experiment: dict) -> dict:
    """An experiment's recipe, read once per process (the Snakefile asks per job)."""
    return _read_recipe(experiment["recipe"])


def task_of(experiment: dict) -> str:
    """``classification`` or ``superres``, from the experiment's recipe."""
    return _recipe(experiment)["task"]


def has_norm(experiment: dict) -> bool:
    """Whether the architecture has BN (RepQ-BNest applies only then)."""
    return _recipe(experiment)["model"]["name"] not in NORM_FREE


def stages(config: dict, name: str) -> list[str]:
    """Every training stage of an experiment, FP first."""
    experiment = config["experiments"][name]
    methods = [m for m in config["methods"] if m != "bnest" or has_norm(experiment)]
    result = ["fp"]
    if "bnest" in methods:
        result.append("fp-bnest")
    result += [f"qat-{m}-{b}" for b in config["bits"] for m in methods]
    return result


def all_stages(config: dict) -> list[tuple[str, str]]:
    """``(experiment, stage)`` of every training job."""
    return [(name, stage) for name in config["experiments"] for stage in stages(config, name)]


def stage_args(stage: str) -> str:
    """The ``repq train`` arguments of a stage (without ``--init``)."""
    if not stage.startswith("qat-"):
        return f"--stage {stage}"
    _, method, bits = stage.split("-")
    return f"--stage qat --method {method} --bits {bits}"


def init_stage(stage: str) -> str:
    """The FP stage a QAT stage (``qat-<method>-<bits>``) starts from."""
    return fp_stage_for(stage.split("-")[1])


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _tracking(config: dict) -> dict:
    return {f"tracking.{k}": v for k, v in config.get("tracking", {}).items() if v is not None}


def overrides(config: dict, name: str) -> dict:
    """Dotted-key overrides of an experiment: its task's shared overrides, then its own,
    then the tracking settings."""
    experiment = config["experiments"][name]
    shared = config.get(f"{task_of(experiment)}_overrides", {})
    return {**shared, **experiment.get("overrides", {}), **_tracking(config)}


def _set_args(values: dict) -> str:
    """Shell-quoted ``--set key=value`` arguments (JSON values, which YAML reads back)."""
    return " ".join(f"--set {_quote(f'{k}={json.dumps(v)}')}" for k, v in values.items())


def set_args(config: dict, name: str) -> str:
    """The ``--set`` arguments of an experiment's jobs."""
    return _set_args(overrides(config, name))


def tracking_args(config: dict) -> str:
    """The ``--set`` arguments of the tracking settings alone."""
    return _set_args(_tracking(config))
