"""Planning the workflow's jobs: variants (which stages each runs, which FP models it
starts from, its overrides), the config checks the schema cannot make, and the shipped
ablations config."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from repq import pipeline
from repq.errors import ConfigError
from repq.vocab import BASE_VARIANT

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "config/recipes/repvgg_a0.yaml")
CONFIG = {
    "results": "results",
    "experiments": {"a0": {"recipe": RECIPE, "overrides": {"train.epochs": 3}}},
    "classification_overrides": {"train.epochs": 2, "train.batch_size": 8},
    "methods": ["merged", "repq", "bnest"],
    "bits": [8, 4],
    "ptq": True,
    "seeds": [0, 1],
    "variants": {
        "lr_x3": {"stages": "quantized", "set": {"train.lr_mult": {"repq": 3.0}}, "bits": [4]},
        "wide": {"set": {"model.kwargs.width_mult": 1.0}, "methods": ["repq"], "ptq": False},
        "ptq_only": {"stages": "quantized", "set": {"quant.act_init": "lsq"}, "methods": []},
    },
}


def _config(**variants) -> dict:
    config = copy.deepcopy(CONFIG)
    config["variants"].update(variants)
    return config


def test_a_quantized_variant_runs_no_fp_stage_and_starts_from_the_base():
    assert pipeline.stages(CONFIG, "a0", "lr_x3") == [
        "ptq-4", "qat-merged-4", "qat-repq-4", "qat-bnest-4",
    ]  # fmt: skip
    assert pipeline.init_variant(CONFIG, "lr_x3") == BASE_VARIANT
    assert pipeline.stages(CONFIG, "a0", "ptq_only") == ["ptq-8", "ptq-4"]


def test_a_variant_of_every_stage_trains_its_own_fp_models():
    assert pipeline.stages(CONFIG, "a0", "wide") == ["fp", "qat-repq-8", "qat-repq-4"]
    assert pipeline.init_variant(CONFIG, "wide") == "wide"


def test_the_base_runs_the_configured_grid():
    stages = pipeline.stages(CONFIG, "a0")
    assert stages[:2] == ["fp", "fp-bnest"] and len(stages) == 2 + 2 * 4
    runs = pipeline.all_runs(CONFIG)
    fp_jobs = [(v, s) for _, v, s, stage in runs if stage.startswith("fp")]
    # two seeds: the base's fp and fp-bnest, and wide's fp; no FP job of lr_x3 or ptq_only
    assert sorted(fp_jobs) == [("base", 0)] * 2 + [("base", 1)] * 2 + [("wide", 0), ("wide", 1)]
    assert len(runs) == 2 * (10 + 4 + 3 + 2)
    assert pipeline.run_sets(CONFIG)[:2] == [("a0", "base", 0), ("a0", "base", 1)]


def test_a_variant_limited_to_experiments_plans_nothing_for_the_others():
    config = _config(only_b={"set": {"train.epochs": 4}, "experiments": ["b"]})
    config["experiments"]["b"] = {"recipe": RECIPE}
    assert pipeline.stages(config, "a0", "only_b") == []
    assert ("a0", "only_b", 0) not in pipeline.run_sets(config)
    assert ("b", "only_b", 0) in pipeline.run_sets(config)


def test_a_variants_overrides_come_last_and_name_it():
    values = pipeline.overrides(CONFIG, "a0", "lr_x3")
    assert list(values) == [
        "train.epochs", "train.batch_size", "train.lr_mult", "tracking.variant",
    ]  # fmt: skip
    assert values["train.epochs"] == 3 and values["tracking.variant"] == "lr_x3"
    assert "tracking.variant" not in pipeline.overrides(CONFIG, "a0")  # the base: as before
    args = pipeline.set_args(CONFIG, "a0", "lr_x3", seed=1)
    assert """--set 'train.lr_mult={"repq": 3.0}'""" in args
    assert args.endswith("--set 'tracking.variant=\"lr_x3\"' --set 'train.seed=1'")


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        (
            {"set": {"train.epoch": 4}},
            "variants.bad.set: 'train.epoch' is not a recipe key (repq/recipe.schema.yaml); "
            "did you mean train.epochs",
        ),
        (
            {"set": {"quant.bn_stat": "running"}},
            "'quant.bn_stat' is not a recipe key",
        ),
        (
            {"stages": "quantized", "set": {"model.kwargs.width_mult": 1.0}},
            "variants.bad.set: model.kwargs.width_mult changes the model, so the variant "
            "cannot start from the base's FP models: use stages: all",
        ),
        (
            {"set": {"train.epochs": 1}, "experiments": ["a0", "c9"]},
            "variants.bad.experiments: ['c9'] are not configured experiments",
        ),
    ],
)
def test_a_wrong_variant_is_one_line_naming_it(variant, message):
    config = _config(bad=variant)
    with pytest.raises(ConfigError) as error:
        pipeline.check_config(config)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_quantized_variant_runs_only_what_the_base_has_fp_models_for():
    bad = {"stages": "quantized", "set": {"train.epochs": 1}, "methods": ["merged", "repq"]}
    config = _config(bad={**bad, "bits": [8, 4]})
    config["bits"], config["methods"] = [8], ["merged"]
    config["variants"].pop("wide")
    config["variants"].pop("lr_x3")
    with pytest.raises(ConfigError, match=r"variants\.bad\.methods: \['repq'\] not run"):
        pipeline.check_config(config)
    config["variants"]["bad"]["methods"] = ["merged"]
    with pytest.raises(ConfigError, match=r"variants\.bad\.bits: \[4\] not run by the base"):
        pipeline.check_config(config)
    config["variants"]["bad"]["stages"] = "all"  # its own FP models: anything goes
    pipeline.check_config(config)


def test_every_override_mapping_is_checked():
    config = _config()
    config["experiments"]["a0"]["overrides"] = {"train.lr.quantised": 0.1}
    with pytest.raises(ConfigError, match=r"experiments\.a0\.overrides: 'train.lr.quantised'"):
        pipeline.check_config(config)
    config = _config()
    config["superres_overrides"] = {"data.patches": 8}
    with pytest.raises(ConfigError, match=r"superres_overrides: 'data\.patches'"):
        pipeline.check_config(config)
    pipeline.check_config(CONFIG)  # free-form sections: any key below model.kwargs


def _workflow_config(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text())


def test_the_ablations_repeat_the_mini_recipe_but_for_their_data():
    ablations, mini = _workflow_config("ablations.yaml"), _workflow_config("mini.yaml")
    ours = {k: v for k, v in ablations["classification_overrides"].items() if k != "data.root"}
    theirs = {k: v for k, v in mini["classification_overrides"].items() if k != "data.root"}
    assert ours == theirs
    assert ablations["mini"]["val_per_class"] == mini["mini"]["val_per_class"]


def test_the_ablations_plan_one_fp_model_per_seed_for_the_quantized_variants():
    config = _workflow_config("ablations.yaml")
    config["experiments"]["repvgg_a0"]["recipe"] = RECIPE
    pipeline.check_config(config)
    runs = pipeline.all_runs(config)
    seeds = len(config["seeds"])
    fp = {variant for _, variant, _, stage in runs if stage == "fp"}
    own_fp = {name for name, v in config["variants"].items() if v["stages"] == "all"}
    assert fp == {BASE_VARIANT} | own_fp
    # the base and each variant: 4-bit Merged and RepQ; own FP where stages: all
    assert len(runs) == seeds * (2 * (1 + len(config["variants"])) + len(fp))
