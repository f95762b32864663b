"""Planning of the workflow's jobs from its config (used by the Snakefile; torch-free).

An *experiment* is one architecture at one setting (``ecbsr_x2``, ``repvgg_a0``...): a
Table S1 recipe plus overrides. Its stages come from :func:`repq.vocab.stages`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path

import yaml

from repq import vocab
from repq.config import coerce_scalars
from repq.tracking.mlflow_tracker import sqlite_uri


@cache
def _read_recipe(path: str) -> dict:
    return yaml.safe_load(Path(path).read_text())


def _recipe(experiment: dict) -> dict:
    """An experiment's recipe, read once per process (the Snakefile asks per job)."""
    return _read_recipe(experiment["recipe"])


def task_of(experiment: dict) -> str:
    """The task of an experiment (``classification``, ``superres``), from its recipe."""
    return _recipe(experiment)["task"]


def coerce_config(config: dict, schema_path: str) -> dict:
    """The workflow config with YAML 1.2 numbers and booleans where its schema wants them (Snakemake
    reads ``--config bits=[4]`` as the string ``'4'``)."""
    return coerce_scalars(config, yaml.safe_load(Path(schema_path).read_text()))


def tasks(config: dict) -> list[str]:
    """The tasks of the configured experiments (the report writes one table each)."""
    return list(dict.fromkeys(task_of(e) for e in config["experiments"].values()))


def stages(config: dict, name: str) -> list[str]:
    """Every stage of an experiment, FP stages first (PTQ unless ``ptq: false``)."""
    architecture = _recipe(config["experiments"][name])["model"]["name"]
    chosen = vocab.stages(architecture, config["methods"], config["bits"], config["ptq"])
    return [str(s) for s in chosen]


def quantized_stages(config: dict, name: str) -> list[str]:
    """The PTQ and QAT stages of an experiment (what ``repq export`` exports)."""
    return [s for s in stages(config, name) if vocab.Stage.parse(s).quantized]


def all_runs(config: dict) -> list[tuple[str, int, str]]:
    """``(experiment, seed, stage)`` of every training (or calibration) job."""
    return [
        (name, seed, stage)
        for name in config["experiments"]
        for seed in config["seeds"]
        for stage in stages(config, name)
    ]


def init_stage(stage: str) -> str | None:
    """The FP stage a quantized stage starts from; ``None`` for an FP stage."""
    init = vocab.Stage.parse(stage).init
    return None if init is None else str(init)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def overrides(config: dict, name: str) -> dict:
    """Dotted-key overrides of an experiment: its task's shared overrides, then its own."""
    experiment = config["experiments"][name]
    shared = config.get(f"{task_of(experiment)}_overrides", {})
    return {**shared, **experiment.get("overrides", {})}


def set_args(config: dict, name: str, seed: int | None = None) -> str:
    """Shell-quoted ``--set key=value`` arguments of an experiment's jobs (at one seed,
    if given; JSON values, which YAML reads back)."""
    values = overrides(config, name)
    if seed is not None:
        values = {**values, "train.seed": seed}
    return " ".join(f"--set {_quote(f'{k}={json.dumps(v)}')}" for k, v in values.items())


def mini_args(mini: Mapping) -> str:
    """``repq prepare-data --mini`` options for the ``mini:`` keys that are set (the
    others keep the defaults of :class:`repq.data.mini.MiniSpec`)."""
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in mini.items() if k != "out")


def tracking_env(config: dict, environ: Mapping[str, str], results: str) -> dict[str, str]:
    """The MLflow environment of every job: the config's ``tracking`` keys, else the
    caller's environment, else a SQLite store in the ``results`` folder, and how jobs
    deliver (``tracking.delivery``). Jobs inherit it (also under SLURM), so where and
    how they log is not a parameter that reruns them."""
    tracking = config.get("tracking", {})
    default_store = sqlite_uri(Path(results, "mlflow.db"))
    uri = tracking.get("uri") or environ.get("MLFLOW_TRACKING_URI") or default_store
    env = {"MLFLOW_TRACKING_URI": uri}
    if tracking.get("experiment"):
        env["MLFLOW_EXPERIMENT_NAME"] = tracking["experiment"]
    if tracking.get("delivery"):
        env["REPQ_TRACKING_DELIVERY"] = tracking["delivery"]
    return env


def artifacts_arg(config: dict) -> str:
    """``--artifacts`` of ``repq tracking-init`` when the config names a folder."""
    folder = config.get("tracking", {}).get("artifacts")
    return f"--artifacts {_quote(os.fspath(folder))}" if folder else ""
