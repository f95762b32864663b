"""Planning of the workflow's jobs from its config (used by the Snakefile; torch-free).

An *experiment* is one architecture at one setting (``ecbsr_x2``, ``repvgg_a0``...): a
Table S1 recipe plus overrides. Its stages come from :func:`repq.vocab.stages`. A
*variant* (:class:`Variant`) is a named set of further overrides, run beside the base
experiments; its runs live in ``runs/<experiment>/<variant>/seed<k>/<stage>``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from repq import vocab
from repq.config import check_keys, coerce_scalars, schema_problems, with_defaults
from repq.errors import ConfigError
from repq.tracking.store import sqlite_uri


@cache
def _read_recipe(path: str) -> dict:
    return yaml.safe_load(Path(path).read_text())


def _recipe(experiment: dict) -> dict:
    """An experiment's recipe, read once per process (the Snakefile asks per job)."""
    return _read_recipe(experiment["recipe"])


def task_of(experiment: dict) -> str:
    """The task of an experiment (``classification``, ``superres``), from its recipe."""
    return _recipe(experiment)["task"]


def checked_config(config: dict, schema_path: str) -> dict:
    """The workflow config with YAML 1.2 numbers and booleans where its schema wants them
    (Snakemake reads ``--config bits=[4]`` as the string ``'4'``) and the schema's
    defaults filled in, checked against the schema and by :func:`check_config`; a
    ConfigError names the first problem in one line."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    config = coerce_scalars(config, schema)
    problems = schema_problems(config, schema)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(f"{problems[0]}{more}")
    config = with_defaults(config, schema)
    config = selected(config)
    check_config(config)
    return config


def selected(config: dict) -> dict:
    """The config with only the experiments ``only:`` names (all where it is absent);
    a ConfigError names one that is not configured."""
    only = config.get("only")
    if not only:
        return config
    unknown = [name for name in only if name not in config["experiments"]]
    if unknown:
        configured = ", ".join(config["experiments"])
        raise ConfigError(f"only: {unknown} are not configured experiments ({configured})")
    return {**config, "experiments": {n: config["experiments"][n] for n in only}}


def tasks(config: dict) -> list[str]:
    """The tasks of the configured experiments (the report writes one table each)."""
    return list(dict.fromkeys(task_of(e) for e in config["experiments"].values()))


@dataclass(frozen=True)
class Variant:
    """A named set of recipe overrides run beside the base experiments (``variants:`` of
    the workflow config; :data:`repq.vocab.BASE_VARIANT` is the experiments as
    configured). ``scope`` (:data:`repq.vocab.VARIANT_SCOPES`): ``all`` trains its own FP
    models, ``quantized`` starts its PTQ and QAT stages from the base's FP models;
    ``methods``, ``bits``, ``ptq`` and ``experiments`` choose the stages it runs (default:
    the config's)."""

    name: str
    scope: str
    overrides: dict
    methods: tuple[str, ...]
    bits: tuple[int, ...]
    ptq: bool
    experiments: tuple[str, ...]
    description: str = ""

    @property
    def shares_fp(self) -> bool:
        """Whether its quantized stages start from the base variant's FP models."""
        return self.scope == vocab.QUANTIZED_STAGES


def variants(config: dict) -> dict[str, Variant]:
    """The base variant, then every configured variant, by name."""
    base = Variant(
        vocab.BASE_VARIANT,
        vocab.ALL_STAGES,
        {},
        tuple(config["methods"]),
        tuple(config["bits"]),
        config.get("ptq", True),
        tuple(config["experiments"]),
        "the experiments as configured",
    )
    found = {base.name: base}
    for name, spec in config.get("variants", {}).items():
        found[name] = Variant(
            name,
            spec.get("stages", vocab.ALL_STAGES),
            dict(spec["set"]),
            tuple(spec.get("methods", base.methods)),
            tuple(spec.get("bits", base.bits)),
            spec.get("ptq", base.ptq),
            tuple(spec.get("experiments", base.experiments)),
            spec.get("description", ""),
        )
    return found


def check_config(config: dict) -> None:
    """What the workflow schema cannot say: every override key is a recipe key, and each
    variant names configured experiments and, when it shares the base's FP models,
    only methods and bit widths the base runs and no model key. A ConfigError names the
    first problem in one line."""
    check_keys(config.get("classification_overrides", {}), "classification_overrides")
    check_keys(config.get("superres_overrides", {}), "superres_overrides")
    for name, experiment in config["experiments"].items():
        check_keys(experiment.get("overrides", {}), f"experiments.{name}.overrides")
    base, *others = variants(config).values()
    for variant in others:
        _check_variant(variant, base)


def _check_variant(variant: Variant, base: Variant) -> None:
    where = f"variants.{variant.name}"
    check_keys(variant.overrides, f"{where}.set")
    unknown = sorted(set(variant.experiments) - set(base.experiments))
    if unknown:
        raise ConfigError(f"{where}.experiments: {unknown} are not configured experiments")
    if not variant.shares_fp:
        return
    for key, chosen, configured in (
        ("methods", variant.methods, base.methods),
        ("bits", variant.bits, base.bits),
    ):
        extra = [v for v in chosen if v not in configured]
        if extra:
            raise ConfigError(
                f"{where}.{key}: {extra} not run by the base, whose FP models this "
                f"quantized-only variant starts from; add them to {key} or use stages: all"
            )
    model_keys = [k for k in variant.overrides if k.split(".")[0] == "model"]
    if model_keys:
        raise ConfigError(
            f"{where}.set: {model_keys[0]} changes the model, so the variant cannot start "
            "from the base's FP models: use stages: all"
        )


def stages(config: dict, name: str, variant: str = vocab.BASE_VARIANT) -> list[str]:
    """The stages one variant runs for an experiment, FP stages first (none where the
    variant shares the base's FP models; PTQ unless ``ptq: false``)."""
    chosen = variants(config)[variant]
    if name not in chosen.experiments:
        return []
    architecture = _recipe(config["experiments"][name])["model"]["name"]
    planned = vocab.stages(architecture, list(chosen.methods), list(chosen.bits), chosen.ptq)
    return [str(s) for s in planned if not (chosen.shares_fp and not s.quantized)]


def quantized_stages(config: dict, name: str, variant: str = vocab.BASE_VARIANT) -> list[str]:
    """The PTQ and QAT stages of an experiment's variant (what ``repq export`` exports)."""
    return [s for s in stages(config, name, variant) if vocab.Stage.parse(s).quantized]


def run_sets(config: dict) -> list[tuple[str, str, int]]:
    """``(experiment, variant, seed)`` of every set of runs that is evaluated together."""
    return [
        (name, variant, seed)
        for variant in variants(config)
        for name in config["experiments"]
        for seed in config["seeds"]
        if stages(config, name, variant)
    ]


def all_runs(config: dict) -> list[tuple[str, str, int, str]]:
    """``(experiment, variant, seed, stage)`` of every training (or calibration) job."""
    return [
        (name, variant, seed, stage)
        for name, variant, seed in run_sets(config)
        for stage in stages(config, name, variant)
    ]


def init_stage(stage: str) -> str | None:
    """The FP stage a quantized stage starts from; ``None`` for an FP stage."""
    init = vocab.Stage.parse(stage).init
    return None if init is None else str(init)


def init_variant(config: dict, variant: str) -> str:
    """The variant whose FP models a variant's quantized stages start from."""
    return vocab.BASE_VARIANT if variants(config)[variant].shares_fp else variant


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def overrides(config: dict, name: str, variant: str = vocab.BASE_VARIANT) -> dict:
    """Dotted-key overrides of an experiment's variant: its task's shared overrides, its
    own, the variant's, and (for a variant other than the base) ``tracking.variant``."""
    experiment = config["experiments"][name]
    shared = config.get(f"{task_of(experiment)}_overrides", {})
    chosen = variants(config)[variant]
    tag = {} if variant == vocab.BASE_VARIANT else {"tracking.variant": variant}
    return {**shared, **experiment.get("overrides", {}), **chosen.overrides, **tag}


def set_args(
    config: dict, name: str, variant: str = vocab.BASE_VARIANT, seed: int | None = None
) -> str:
    """Shell-quoted ``--set key=value`` arguments of an experiment's jobs in one variant
    (at one seed, if given; JSON values, which YAML reads back)."""
    values = overrides(config, name, variant)
    if seed is not None:
        values = {**values, "train.seed": seed}
    return " ".join(f"--set {_quote(f'{k}={json.dumps(v)}')}" for k, v in values.items())


def data_spec_args(spec: Mapping) -> str:
    """``repq prepare-data --mini`` (``--synthetic``) options for the ``mini:``
    (``synthetic:``) keys that are set; the others keep the defaults of
    :class:`repq.data.mini.MiniSpec` (:class:`repq.data.synthetic.SyntheticSpec`)."""
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in spec.items() if k != "out")


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
