"""One vocabulary: every place that names a method, stage, bit width, task or
architecture reads :mod:`repq.vocab`, and a new method needs only its entry and handler."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from runs import write_run
from torch import nn

from repq import vocab
from repq.cli import build_parser
from repq.data.mini import MiniSpec
from repq.engine.tasks import ENGINES
from repq.models import available, create
from repq.qat import HANDLERS, Handler, bnest_fp, precision_table, prepare
from repq.report.tables import collect, task_tables
from repq.tracking.mlflow_tracker import DELIVERY_MODES
from repq.vocab import METHODS, Method, Stage

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
RECIPE_SCHEMA = yaml.safe_load((ROOT / "repq/recipe.schema.yaml").read_text())


def test_workflow_schema_enums_are_the_vocabulary():
    properties = WORKFLOW_SCHEMA["properties"]
    assert properties["methods"]["items"]["enum"] == list(METHODS)
    assert properties["bits"]["items"]["enum"] == list(vocab.BITS)
    delivery = properties["tracking"]["properties"]["delivery"]["enum"]
    assert delivery == list(DELIVERY_MODES)
    assert RECIPE_SCHEMA["properties"]["tracking"]["properties"]["delivery"]["enum"] == delivery


def test_the_variants_schema_is_the_vocabulary():
    variants = WORKFLOW_SCHEMA["properties"]["variants"]
    assert variants["propertyNames"]["not"]["const"] == vocab.BASE_VARIANT
    spec = variants["additionalProperties"]["properties"]
    assert spec["stages"]["enum"] == list(vocab.VARIANT_SCOPES)
    assert spec["methods"]["items"]["enum"] == list(METHODS)
    assert spec["bits"]["items"]["enum"] == list(vocab.BITS)


def test_the_recipe_switches_are_the_implementations():
    from repq.qat.repq_conv import FOLD_STATISTICS
    from repq.quant.layers import TRAIN_BIASES

    quant = RECIPE_SCHEMA["properties"]["quant"]["properties"]
    assert quant["bn_stats"]["enum"] == list(FOLD_STATISTICS)
    assert quant["train_bias"]["enum"] == list(TRAIN_BIASES)
    lr_mult = RECIPE_SCHEMA["properties"]["train"]["properties"]["lr_mult"]["properties"]
    assert list(lr_mult) == list(METHODS)
    variant = RECIPE_SCHEMA["properties"]["tracking"]["properties"]["variant"]
    assert (
        variant["pattern"] == WORKFLOW_SCHEMA["properties"]["variants"]["propertyNames"]["pattern"]
    )


def test_workflow_mini_keys_are_the_mini_spec():
    keys = set(WORKFLOW_SCHEMA["properties"]["mini"]["properties"])
    assert keys == {f.name for f in dataclasses.fields(MiniSpec)} | {"out"}


def test_workflow_synthetic_keys_are_the_synthetic_spec():
    from repq.data.synthetic import SyntheticSpec

    keys = set(WORKFLOW_SCHEMA["properties"]["synthetic"]["properties"])
    assert keys == {f.name for f in dataclasses.fields(SyntheticSpec)} | {"out", "seed"}


def test_recipe_schema_follows_the_vocabulary():
    properties = RECIPE_SCHEMA["properties"]
    zoo, timm = properties["model"]["properties"]["name"]["anyOf"]
    assert zoo["enum"] == list(vocab.ARCHITECTURES)
    assert timm["pattern"].startswith(f"^{vocab.TIMM_PREFIX}")
    assert properties["task"]["enum"] == list(vocab.TASKS)
    train = properties["train"]["properties"]
    assert train["step_lr"]["required"] == [str(b) for b in vocab.BITS]
    lr_keys = {Stage.parse(name).lr_key for name in vocab.stage_names()}
    assert lr_keys == set(train["lr"]["required"])


def test_every_method_has_a_handler_and_every_task_an_engine():
    assert set(HANDLERS) == set(METHODS)
    assert set(ENGINES) == set(vocab.TASKS)


@pytest.mark.parametrize("name", available())
def test_architecture_facts_match_the_models(name):
    facts = vocab.ARCHITECTURES[name]
    kwargs = {"m": 1, "c": 8} if facts.task == "superres" else {"width_mult": 0.25}
    model = create(name, **kwargs)
    assert facts.has_norm == any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name", vocab.stage_names())
def test_stage_names_round_trip(name):
    stage = Stage.parse(name)
    assert str(stage) == name
    assert (stage.init is None) != stage.quantized


def test_stage_words():
    assert Stage.parse("qat-repq-4").display == "4-bit RepQ"
    assert Stage.parse("qat-bnest-8").init == Stage("fp-bnest")
    assert Stage.parse("fp-bnest").display == "FP-BNest"
    assert Stage.parse("qat-merged-8").lr_key == "merged_8bit"
    assert Stage.parse("qat-merged-4").lr_key == "quantized"
    assert Stage.parse("fp").lr_key == "fp" and Stage.parse("fp").bit_width == 32
    ptq = Stage.parse("ptq-8")
    assert ptq.display == "8-bit PTQ" and ptq.init == Stage("fp") and not ptq.trains
    assert ptq.quant_method == "merged" and ptq.bit_width == 8
    for bad in ("qat-repq-3", "qat-lsq-4", "fp-x", "qat-repq", "ptq-3", "ptq"):
        with pytest.raises(ValueError, match="unknown stage"):
            Stage.parse(bad)


def test_stages_of_an_experiment():
    names = [str(s) for s in vocab.stages("ecbsr", list(METHODS), [8, 4])]
    assert names == [
        *("fp", "ptq-8", "qat-merged-8", "qat-repq-8"),
        *("ptq-4", "qat-merged-4", "qat-repq-4"),
    ]
    names = [str(s) for s in vocab.stages("repvgg_a0", ["bnest"], [4], ptq=False)]
    assert names == ["fp", "fp-bnest", "qat-bnest-4"]


@pytest.fixture
def toy_method(monkeypatch) -> str:
    """A new QAT method, added through the registry alone: RepQ-BNest everywhere (no
    block keeps ordinary BN)."""
    monkeypatch.setitem(METHODS, "toy", Method("toy", "Toy"))
    monkeypatch.setitem(HANDLERS, "toy", Handler(lambda model, keep_bn: bnest_fp(model, 0)))
    return "toy"


def test_a_new_method_runs_through_prepare_the_cli_and_the_tables(toy_method, tmp_path):
    model = create("ac_resnet18", num_classes=5, width_mult=0.25)
    qat = prepare(model, toy_method, 4)
    modes = [m.block.norm_mode for m in qat.modules() if hasattr(m, "block")]
    assert modes and set(modes) == {"estimate"}
    assert [p.weight_bits for p in precision_table(qat)][:2] == [8, 4]

    args = build_parser().parse_args(["train", "r.yaml", "--stage", "qat-toy-4", "--out", "o"])
    assert Stage.parse(args.stage) == Stage.qat("toy", 4)
    assert re.fullmatch(vocab.stage_pattern(), "qat-toy-8")

    write_run(tmp_path, "ac", "fp", {"top1": 60.0}, model="ac_resnet18")
    write_run(tmp_path, "ac", "qat-toy-4", {"top1": 58.5}, model="ac_resnet18")
    table = task_tables(collect(tmp_path))["classification"]
    assert table.loc[0, "4-bit Toy"].mean == 58.5
    assert table.loc[0, "4-bit Toy Δ"].mean == pytest.approx(-1.5)
    assert "8-bit Toy" not in table.columns  # no row has a run: not configured


def test_a_task_the_report_does_not_know_gets_the_long_layout(tmp_path):
    write_run(tmp_path, "depth", "fp", {"rmse/nyu": 0.5}, model="depthnet", task="depth")
    write_run(tmp_path, "depth", "qat-repq-4", {"rmse/nyu": 0.6}, model="depthnet", task="depth")
    write_run(tmp_path, "a0", "fp", {"top1": 70.0})
    tables = task_tables(collect(tmp_path))
    assert list(tables) == ["classification", "depth"]
    depth = tables["depth"].set_index(["method", "bits"])
    assert depth.loc[("FP", 32), "nyu RMSE"].mean == 0.5
    assert depth.loc[("RepQ", 4), "nyu RMSE"].mean == 0.6
    assert ("Merged", 8) not in depth.index  # no row has a run: not configured


def test_the_workflow_is_planned_without_torch(tmp_path):
    """A ``torch`` that fails to import, first on the path: Snakemake still plans."""
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('the workflow imported torch')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop("MLFLOW_TRACKING_URI", None)
    snakemake = Path(sys.executable).with_name("snakemake")
    # --forceall: plan every job even where a local `make demo` left its outputs
    args = [str(snakemake), "-n", "--forceall", "--cores", "1", "--profile", "profiles/default"]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rule train" in done.stdout


def test_jobs_log_where_the_config_then_the_environment_then_the_results_folder_say():
    from repq.pipeline import tracking_env

    config = {"tracking": {"uri": None, "experiment": None}}
    env = tracking_env(config, {}, "out/paper")
    assert env == {"MLFLOW_TRACKING_URI": f"sqlite:///{Path('out/paper/mlflow.db').resolve()}"}
    env = tracking_env(config, {"MLFLOW_TRACKING_URI": "http://h:5000"}, "out")
    assert env["MLFLOW_TRACKING_URI"] == "http://h:5000"
    config = {"tracking": {"uri": "http://config:5000", "experiment": "paper"}}
    env = tracking_env(config, {"MLFLOW_TRACKING_URI": "http://h:5000"}, "out")
    assert env == {"MLFLOW_TRACKING_URI": "http://config:5000", "MLFLOW_EXPERIMENT_NAME": "paper"}


def test_mini_options_are_the_keys_a_config_sets():
    from repq.pipeline import data_spec_args

    assert data_spec_args({"out": "x", "seed": 3, "val_per_class": 100}) == (
        "--seed 3 --val-per-class 100"
    )
    options = build_parser().parse_args(["prepare-data", "--mini", "--seed", "3"])
    assert options.seed == 3 and options.val_per_class == MiniSpec().val_per_class
