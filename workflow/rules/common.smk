import os
import sys
import uuid
from pathlib import Path

from snakemake.utils import min_version

from repq import pipeline, vocab
from repq.errors import ConfigError

min_version("9.0")

# No `configfile:` here: a config given on the command line would be merged into it.
# profiles/default names config/config.yaml (the demo); other runs pass --configfile.
# Numbers that `--config` or YAML 1.1 left as strings are read as YAML 1.2 numbers; the
# schema's defaults are filled in (ptq, seeds); every override key must be a recipe key
# and every variant fit the base. A problem stops the workflow in one line.
SCHEMA = workflow.source_path("../schemas/config.schema.yaml")
try:
    config.update(pipeline.checked_config(config, SCHEMA))
except ConfigError as err:
    sys.exit(f"config error: {err}")

RESULTS = config["results"]
RESOURCES = config.get("resources", {})
THREADS = RESOURCES.get("threads", 1)
GPUS = RESOURCES.get("gpus", 0)
MINI = config.get("mini")
MINI_OUT = (MINI or {}).get("out", f"{RESULTS}/mini")
SYNTHETIC = config.get("synthetic")
SYNTHETIC_OUT = (SYNTHETIC or {}).get("out", f"{RESULTS}/synthetic")
VARIANTS = pipeline.variants(config)
EXPERIMENTS, VARIANT_OF, SEEDS, STAGES = zip(*pipeline.all_runs(config))
RUN_SETS = pipeline.run_sets(config)  # (experiment, variant, seed): one evaluation each
TASKS = pipeline.tasks(config)
EXPORT = config["export"]
DEFERRED = config.get("tracking", {}).get("delivery") == "deferred"
SEEDED = f"{RESULTS}/runs/{{experiment}}/{{variant}}/seed{{seed}}"
RUN = f"{SEEDED}/{{stage}}"
TABLES = f"{RESULTS}/tables"
ENV = "../../environment.yml"

# Every job inherits these (also cluster jobs): where MLflow runs go, and one id per
# pipeline invocation that tags the runs of this invocation.
os.environ.update(pipeline.tracking_env(config, os.environ, RESULTS))
os.environ.setdefault("REPQ_PIPELINE", uuid.uuid4().hex[:12])


wildcard_constraints:
    experiment="|".join(config["experiments"]),
    variant="|".join(VARIANTS),
    seed=r"\d+",
    stage=vocab.stage_pattern(),


def repq_command(gpus):
    """`repq`, or torchrun over the job's GPUs when it has more than one."""
    if gpus > 1:
        return f"torchrun --standalone --nproc_per_node={gpus} -m repq"
    return "repq"


def recipe(wildcards):
    return config["experiments"][wildcards.experiment]["recipe"]


def set_args(wildcards):
    """The recipe overrides of a job of one variant (with its seed, for a job of one
    seed)."""
    seed = int(wildcards.seed) if "seed" in wildcards.keys() else None
    return pipeline.set_args(config, wildcards.experiment, wildcards.variant, seed)


def data_ready(wildcards):
    """The mini benchmark's manifest, or the marker of the data check of the
    experiment's variant."""
    if MINI:
        return f"{MINI_OUT}/manifest.json"
    return f"{RESULTS}/data/{wildcards.experiment}/{wildcards.variant}.checked"


def init_model(wildcards):
    """A quantized stage's FP (or FP-BNest) model of the same seed, of its own variant
    or, for a variant that shares them, of the base; nothing for FP."""
    stage = pipeline.init_stage(wildcards.stage)
    if stage is None:
        return []
    variant = pipeline.init_variant(config, wildcards.variant)
    return f"{RESULTS}/runs/{wildcards.experiment}/{variant}/seed{wildcards.seed}/{stage}/model.pt"


def init_arg(wildcards, input):
    return f"--init {input.init}" if input.init else ""


def parent(wildcards, output):
    return Path(output[0]).parent
