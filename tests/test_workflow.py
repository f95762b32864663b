"""The Snakemake workflow: planning, linting, an end-to-end micro run, reruns, schema."""

from __future__ import annotations

import html as html_module
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import slurm_cluster
import torch
import yaml
from browser import chromium, wait_for
from mlflow.tracking import MlflowClient
from servers import MlflowServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _copy_workflow(target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "workflow", "config", "profiles", "environment.yml"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name)
        else:
            shutil.copy(source, target / name)
    return target


@pytest.fixture
def workdir(tmp_path) -> Path:
    """A copy of the workflow (Snakefile, rules, schema, configs) to run in."""
    return _copy_workflow(tmp_path)


def workflow_env() -> dict[str, str]:
    """The environment a workflow run gets: this venv first on PATH, and no MLflow
    variables (where it logs comes from its config, else its results folder)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return {**env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(BIN / "snakemake"), *args],
        cwd=workdir,
        env=workflow_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check and result.returncode != 0:
        raise AssertionError(result.stdout[-3000:] + result.stderr[-3000:])
    return result


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run."""
    table = output.split("Job stats:")[1].split("\n\n")[0]
    rows = re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.MULTILINE)
    return {rule: int(count) for rule, count in rows if rule != "total"}


def test_dry_run_of_the_demo_plans_every_job(workdir):
    counts = job_counts(snakemake(workdir, "-n", "--cores", "2").stdout)
    # 4 classifiers x (fp, fp-bnest, (PTQ + 3 methods) x 2 bits)
    # + ECBSR x2 x (fp, (PTQ + 2 methods) x 2 bits); one evaluation and one export (of
    # every PTQ and QAT model) per experiment
    assert counts == {
        "prepare_mini": 1,
        "tracking_init": 1,
        "train": 4 * 10 + 7,
        "evaluate": 5,
        "export": 5,
        "tables": 1,
        "all": 1,
    }


def test_every_seed_repeats_every_stage(workdir):
    result = snakemake(workdir, "-n", "--cores", "2", "--config", "seeds=[0,1,2]", "ptq=false")
    counts = job_counts(result.stdout)
    # 3 seeds x (4 classifiers x (fp, fp-bnest, 3 methods x 2 bits) + ECBSR (fp, 2 x 2))
    assert counts["train"] == 3 * (4 * 8 + 5) and counts["evaluate"] == 3 * 5
    for seed in (0, 1, 2):
        assert f"results/runs/repvgg_a0/base/seed{seed}/qat-bnest-4/model.pt" in result.stdout
        assert f"--set 'train.seed={seed}'" in _plan(workdir, f"seeds=[{seed}]")


def _plan(workdir: Path, *config: str) -> str:
    return snakemake(workdir, "-n", "-p", "--cores", "2", "--config", *config).stdout


def test_deferred_tracking_is_delivered_by_the_tables_job(workdir):
    deferred = _plan(workdir, "tracking={delivery: deferred}")
    assert "repq tracking-sync results" in deferred and "REPQ_TRACKING_DELIVERY" not in deferred
    assert "repq tracking-sync" not in _plan(workdir, "tracking={delivery: live}")


PAPER_JOBS = {
    "check_data": 6,
    "tracking_init": 1,
    "train": 4 * 10 + 2 * 7,  # 4 classifiers x 10 stages, ECBSR at x2 and x4 x 7
    "evaluate": 6,
    "export": 6,
    "tables": 1,
    "all": 1,
}


def test_dry_run_of_the_paper_plans_every_job(workdir):
    result = snakemake(workdir, "-n", "--cores", "2", "--configfile", "config/paper.yaml")
    assert job_counts(result.stdout) == PAPER_JOBS
    assert "torchrun --standalone --nproc_per_node=8 -m repq train" in _shell_of(workdir)


REHEARSAL = ["--configfile", "config/paper.yaml", "config/rehearse.yaml"]
REHEARSAL_SLICE = ["--config", "only=[repvgg_a0,ecbsr_x2]"]


def test_the_rehearsal_plans_every_job_of_the_paper_and_writes_its_data_first(workdir):
    counts = job_counts(snakemake(workdir, "-n", "--cores", "2", *REHEARSAL).stdout)
    assert counts == {"prepare_synthetic": 1, **PAPER_JOBS}


def test_the_rehearsal_slice_runs_every_job_at_full_size(workdir):
    """The CI slice of ``make rehearse``: full-width RepVGG-A0 at 224x224 and ECBSR-M4C16
    x2 on synthetic ImageNet/DIV2K/benchmark folders, every method and bit width, PTQ,
    evaluation, export and the tables; each job's measurements in rehearsal.md."""
    snakemake(
        workdir, "--cores", "2", "--profile", "profiles/default", *REHEARSAL, *REHEARSAL_SLICE
    )
    results = workdir / "results" / "rehearse"
    data = results / "data"
    assert len(list((data / "imagenet" / "train").iterdir())) == 1000
    assert (data / "DIV2K" / "DIV2K_train_LR_bicubic" / "X4" / "0001x4.png").exists()
    assert len(list((data / "sr_benchmark" / "Urban100" / "HR").iterdir())) == 100
    runs = results / "runs"
    config = json.loads((runs / "repvgg_a0/base/seed0/qat-bnest-4/config.json").read_text())
    assert config["data"]["image_size"] == 224 and "width_mult" not in config["model"]["kwargs"]
    assert config["limits"] == {"steps_per_epoch": 2, "eval_items": 16, "cpu_batch_size": 8}
    onnx = sorted(str(p.relative_to(runs)) for p in runs.glob("**/model.onnx"))
    assert len(onnx) == 8 + 6  # every PTQ and QAT model
    evaluation = json.loads((runs / "repvgg_a0/base/seed0/evaluation.json").read_text())
    assert {len(r["per_item"]["top1"]) for r in evaluation["results"]} == {16}
    for table in ("classification", "superres", "deployment"):
        assert (results / "tables" / f"{table}.md").exists()
    done = subprocess.run(
        [str(BIN / "repq"), "report", "rehearsal", "--results", str(results)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "rehearsal.md" in done.stdout
    summary = json.loads((results / "tables" / "rehearsal.json").read_text())
    rules = [row["rule"] for row in summary["jobs"]]
    assert rules.count("train") == 17 and rules.count("evaluate") == 2
    assert all(row["seconds"] > 0 for row in summary["jobs"])
    assert len(summary["onnx_mib"]) == 14
    full_width = summary["onnx_mib"]["repvgg_a0/base/seed0/qat-repq-8"]
    assert 7 < full_width < 12  # RepVGG-A0's 8.3M weights as int8 plus scales and graph


def test_dry_run_of_the_timm_experiment_plans_its_five_methods(workdir):
    args = ["-n", "-p", "--cores", "2", "--configfile", "config/timm.yaml"]
    result = snakemake(workdir, *args)
    counts = job_counts(result.stdout)
    assert counts["train"] == 10 and counts["export"] == 1  # FP, FP-BNest, 2 x (PTQ + 3)
    stages = set(re.findall(r"--stage (\S+)", result.stdout))
    kinds = ("ptq", "qat-merged", "qat-repq", "qat-bnest")
    assert stages == {"fp", "fp-bnest"} | {f"{k}-{b}" for b in (8, 4) for k in kinds}
    assert "config/recipes/timm_mobileone_s0.yaml" in result.stdout
    assert "model.kwargs.width_factor=0.25" in result.stdout


def _shell_of(workdir: Path) -> str:
    args = ["-n", "-p", "--cores", "2", "--configfile", "config/paper.yaml"]
    return snakemake(workdir, *args).stdout


def test_lint_reports_nothing(workdir):
    result = snakemake(workdir, "--lint")
    assert "Congratulations, your workflow is in a good condition" in result.stderr
    assert "Lints for" not in result.stdout + result.stderr


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
    """What a refused workflow printed, less Snakemake's line naming the profile."""
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if not line.startswith("Using workflow specific profile")]


@pytest.mark.parametrize(
    ("config", "line"),
    [
        ("bits=[3]", "config error: bits.0: 3 is not one of [8, 4]"),
        (
            "epochs=3",
            "config error: <top level>: Additional properties are not allowed "
            "('epochs' was unexpected)",
        ),
        (
            "variants={lr: {stages: quantized, sett: {train.epochs: 3}}}",
            "config error: variants.lr: Additional properties are not allowed ('sett' was "
            "unexpected) (and 1 more)",
        ),
        (
            "variants={lr: {stages: quantized, set: {train.lr.quantised: 0.1}}}",
            "config error: variants.lr.set: 'train.lr.quantised' is not a recipe key "
            "(repq/recipe.schema.yaml); did you mean train.lr.quantized?",
        ),
        (
            "variants={base: {set: {train.epochs: 3}}}",
            "config error: variants: 'base' should not be valid under {'const': 'base'}",
        ),
        (
            "only=[repvgg_a1]",
            "config error: only: ['repvgg_a1'] are not configured experiments (repvgg_a0, "
            "repvgg_b0, ac_resnet18, orepa_resnet18, ecbsr_x2)",
        ),
    ],
)
def test_a_wrong_config_is_refused_in_one_line_naming_the_key(workdir, config, line):
    result = snakemake(workdir, "-n", "--config", config, check=False)
    assert result.returncode != 0
    assert _error_lines(result) == [line]


VARIANTS = (
    "variants={"
    "lr_x3: {stages: quantized, set: {train.lr_mult: {merged: 3.0, repq: 3.0}}, bits: [4]},"
    " wide: {set: {model.kwargs.width_mult: 0.5}, experiments: [repvgg_a0], methods: [repq]}}"
)


def test_a_quantized_variant_shares_the_base_fp_job_and_a_model_variant_has_its_own(workdir):
    result = snakemake(workdir, "-n", "-p", "--cores", "2", "--config", VARIANTS)
    counts = job_counts(result.stdout)
    # the demo's 47; lr_x3: per classifier PTQ and 3 methods at 4 bits, ECBSR PTQ and 2;
    # wide (RepVGG-A0, RepQ only): its own fp, then PTQ and RepQ at 8 and 4 bits
    assert counts["train"] == 47 + 4 * 4 + 3 + 5
    assert counts["evaluate"] == counts["export"] == 5 + 5 + 1
    fp_jobs = re.findall(r"--stage fp(?:-bnest)? .*?--out (\S+)", result.stdout)
    assert len(fp_jobs) == 4 * 2 + 1 + 1  # the base's and wide's: one FP job each
    assert "results/runs/repvgg_a0/wide/seed0/fp" in fp_jobs
    assert not [f for f in fp_jobs if "/lr_x3/" in f]
    lr_job = re.search(
        r"--stage qat-repq-4 --init (\S+) --out results/runs/repvgg_a0/lr_x3/", result.stdout
    )
    assert lr_job and lr_job[1] == "results/runs/repvgg_a0/base/seed0/fp/model.pt"
    wide_job = re.search(
        r"--stage qat-repq-4 --init (\S+) --out results/runs/repvgg_a0/wide/", result.stdout
    )
    assert wide_job and wide_job[1] == "results/runs/repvgg_a0/wide/seed0/fp/model.pt"
    assert "--set 'tracking.variant=\"lr_x3\"'" in result.stdout


def test_the_step_initialisation_overlay_plans_ptq_only_variants_on_the_demo(workdir):
    args = ["-n", "-p", "--cores", "2", "--configfile", "config/config.yaml"]
    result = snakemake(workdir, *args, "config/ptq_init.yaml")
    counts = job_counts(result.stdout)
    variants = yaml.safe_load((ROOT / "config" / "ptq_init.yaml").read_text())["variants"]
    # 5 experiments: their FP model, then PTQ at 2 bit widths for the base and each variant
    assert counts["train"] == 5 + 5 * 2 * (1 + len(variants))
    assert counts["evaluate"] == 5 * (1 + len(variants)) and "export" not in counts
    assert set(re.findall(r"--stage (\S+)", result.stdout)) == {"fp", "ptq-8", "ptq-4"}
    assert "results/ptq-init/runs/repvgg_a0/w_lsq_a_mse/seed0/ptq-4" in result.stdout


def test_the_ablations_plan_one_fp_job_per_seed_and_variant_of_the_model(workdir):
    result = snakemake(workdir, "-n", "--cores", "2", "--configfile", "config/ablations.yaml")
    counts = job_counts(result.stdout)
    config = yaml.safe_load((ROOT / "config" / "ablations.yaml").read_text())
    seeds, variants = len(config["seeds"]), config["variants"]
    own_fp = sum(v["stages"] == "all" for v in variants.values())
    assert counts["train"] == seeds * (2 * (1 + len(variants)) + 1 + own_fp)
    assert counts["evaluate"] == seeds * (1 + len(variants)) and "export" not in counts


MICRO = {
    "results": "results",
    "mini": {"out": "results/mini", "train_per_class": 16, "val_per_class": 4, "image_size": 32},
    "tracking": {"experiment": "micro"},
    "classification_overrides": {
        "data.root": "results/mini/cls",
        "data.image_size": 32,
        "data.resize": 32,
        "model.kwargs.num_classes": 12,
        "model.kwargs.width_mult": 0.25,
        "train.epochs": 1,
        "train.batch_size": 32,
        "train.warmup_epochs": 0,
        "train.lr.fp": 0.02,
        "train.lr.quantized": 0.002,
    },
    "superres_overrides": {
        "data.train": "results/mini/sr/train",
        "data.test": {
            "mini_a": "results/mini/sr/test/mini_a",
            "mini_b": "results/mini/sr/test/mini_b",
        },
        "data.patch": 16,
        "data.repeat": 1,
        "model.kwargs.m": 1,
        "model.kwargs.c": 8,
        "train.epochs": 1,
        "train.batch_size": 8,
    },
    "experiments": {
        "repvgg_a0": {"recipe": "config/recipes/repvgg_a0.yaml"},
        "ecbsr_x2": {"recipe": "config/recipes/ecbsr.yaml"},
    },
    "methods": ["repq", "bnest"],
    "bits": [4],
    "variants": {  # a toy variant: twice the LR of RepQ and RepQ-BNest, from the base's FP
        "lr_x2": {
            "stages": "quantized",
            "set": {"train.lr_mult": {"repq": 2.0, "bnest": 2.0}},
            "methods": ["repq", "bnest"],
            "ptq": False,
            "experiments": ["repvgg_a0"],
        }
    },
    "resources": {"threads": 1},
}


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    """The micro workflow run once, logging to a real ``mlflow server``."""
    server = MlflowServer(tmp_path_factory.mktemp("server"))
    server.start()
    workdir = _copy_workflow(tmp_path_factory.mktemp("micro"))
    config = {**MICRO, "tracking": {"experiment": "micro", "uri": server.uri}}
    (workdir / "micro.yaml").write_text(yaml.safe_dump(config))
    snakemake(workdir, "--cores", "2", "--configfile", "micro.yaml")
    yield workdir, server
    server.kill()


def test_micro_pipeline_end_to_end(micro_run):
    workdir, server = micro_run
    tables = workdir / "results" / "tables"
    classification = pd.read_csv(tables / "classification.csv")
    superres = pd.read_csv(tables / "superres.csv")
    assert list(classification["model"]) == ["RepVGG-A0"] * 2
    assert list(classification["variant"]) == ["base", "lr_x2"]
    # one seed: every value is there, and no standard deviation
    for table in (classification, superres):
        stds = [c for c in table.columns if c.endswith(" std")]
        assert table[stds].isna().all().all()
        assert not table.drop(columns=stds).isna().any().any()
    # rows no configured stage fills (8 bits, Merged) are left out, not shown as "no run"
    assert list(superres["method"]) == ["FP", "PTQ", "RepQ"] and set(superres["bits"]) == {32, 4}
    assert "no run" not in superres.to_string()
    assert list(classification.columns[:4]) == ["model", "variant", "FP", "FP std"]
    # the variant's row shows the base's FP model it started from, and its own RepQ
    base, variant = classification.to_dict("records")
    assert variant["FP"] == base["FP"] and variant["4-bit PTQ"] == "no run"
    assert variant["FP-BNest"] == base["FP-BNest"]
    written = {p.name for p in tables.iterdir()}
    assert {"claims.md", "claims.csv", "runs.csv", "verdicts.md", "seeds.md"} <= written
    claims = pd.read_csv(tables / "claims.csv")
    assert set(claims["variant"]) == {"base", "lr_x2"}
    verdicts = (tables / "verdicts.md").read_text()
    assert "| base " in verdicts.splitlines()[0] and "lr_x2" in verdicts.splitlines()[0]
    assert (tables / "drop.png").stat().st_size > 0 and (tables / "classification.tex").exists()
    runs_folder = workdir / "results/runs/repvgg_a0"
    evaluation = json.loads((runs_folder / "base/seed0/evaluation.json").read_text())
    evaluated = next(r for r in evaluation["results"] if r["stage"] == "qat-repq-4")
    assert classification.loc[0, "4-bit RepQ"] == pytest.approx(evaluated["metrics"]["top1"])
    assert not (runs_folder / "lr_x2/seed0/fp").exists()  # it shares the base's
    config = json.loads((runs_folder / "lr_x2/seed0/qat-repq-4/config.json").read_text())
    assert config["train"]["lr_mult"] == {"repq": 2.0, "bnest": 2.0}
    assert config["tracking"]["variant"] == "lr_x2"
    trained = [
        torch.load(runs_folder / f"{v}/seed0/qat-repq-4/model.pt", weights_only=True)["model"]
        for v in ("base", "lr_x2")
    ]
    assert trained[0].keys() == trained[1].keys()
    assert any(not torch.equal(trained[0][k], trained[1][k]) for k in trained[0])

    # every job's run, found through the server's REST API by the invocation's tag
    (report,) = server.runs_tagged("job", "report")
    pipeline = next(t["value"] for t in report["data"]["tags"] if t["key"] == "pipeline")
    runs = server.runs_tagged("pipeline", pipeline)
    jobs = [next(t["value"] for t in r["data"]["tags"] if t["key"] == "job") for r in runs]
    assert jobs.count("train") == 10 and jobs.count("evaluate") == 10 and jobs.count("report") == 1
    # RepVGG-A0 ptq-4, repq-4, bnest-4 and lr_x2's repq-4 and bnest-4; ECBSR ptq-4, repq-4
    assert jobs.count("export") == 7
    assert {r["info"]["status"] for r in runs} == {"FINISHED"}
    variant = [r for r in runs if _tag(r, "variant") == "lr_x2"]
    assert sorted(_tag(r, "job") for r in variant) == sorted(["evaluate", "export", "train"] * 2)
    assert {r["info"]["run_name"] for r in variant} >= {"repvgg_a0/lr_x2/qat-repq-4"}
    for run in runs:  # a job's run lasts from its start to its end
        assert 0 <= int(run["info"]["end_time"]) - int(run["info"]["start_time"]) < 600_000
    _check_run_tree_and_registry(server, exports=7)

    # the deployed models: every PTQ and QAT model as onnxruntime runs it. The two differ
    # only in the order of float sums, which moves a 4-bit activation code now and then:
    # measured 47 of 48 images agree for ptq-4 (max |diff| 0.09 of 2.3), all for QAT
    # (4e-7), and the metrics are equal; a float bias instead of the int32 one onnxruntime
    # adds agrees on 86% (a trained 4-bit RepVGG-A0)
    deployment = pd.read_csv(tables / "deployment.csv")
    assert len(deployment) == 7 and set(deployment["codes equal"]) == {"yes"}
    assert (deployment["ONNX"] == deployment["PyTorch"]).all()
    agreement = pd.to_numeric(deployment["top-1 agreement %"], errors="coerce").dropna()
    assert len(agreement) == 5 and (agreement >= 100 * 47 / 48).all()
    # the integer codes show in the file's size where the weights outweigh the per-channel
    # steps and int32 biases: RepVGG-A0 0.157 of FP32; the micro ECBSR (m1, c8: 700
    # weights) 1.14
    sizes = dict(zip(deployment["model"], deployment["QDQ / FP32 size"], strict=False))
    assert sizes["RepVGG-A0"] < 0.2 and sizes["ECBSR"] > 1
    onnx_file = runs_folder / "base/seed0/qat-repq-4/model.onnx"
    exported = json.loads(onnx_file.with_name("export.json").read_text())
    assert exported["bytes"] == onnx_file.stat().st_size

    # One changed hyperparameter reruns only the jobs it affects.
    change = (
        "experiments={ecbsr_x2: {recipe: config/recipes/ecbsr.yaml, overrides: {train.epochs: 2}}}"
    )
    result = snakemake(
        workdir, "-n", "--cores", "2", "--configfile", "micro.yaml", "--config", change
    )
    assert job_counts(result.stdout) == {
        "train": 3, "evaluate": 1, "export": 1, "tables": 1, "all": 1,
    }  # fmt: skip
    assert "experiment=repvgg_a0" not in result.stdout
    assert (
        snakemake(workdir, "-n", "--cores", "2", "--configfile", "micro.yaml").stdout.count(
            "rule train"
        )
        == 0
    )

    snakemake(workdir, "--cores", "1", "--configfile", "micro.yaml", "--report", "report.html")
    html = (workdir / "report.html").read_text(errors="ignore")
    assert "classification.csv" in html and "curve.png" in html


def _check_run_tree_and_registry(server: MlflowServer, exports: int) -> None:
    """The store as the UI shows it: a parent run per architecture, variant and seed
    spanning its jobs, none that ends before it starts, every job's run with its source
    and data, and one registered model version per exported file."""
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("micro").experiment_id
    runs = client.search_runs([experiment], max_results=1000)
    assert all(r.info.end_time >= r.info.start_time for r in runs)
    groups = {r.info.run_id: r for r in runs if r.data.tags["job"] == "group"}
    assert sorted(r.info.run_name for r in groups.values()) == [
        "ecbsr/seed0", "repvgg_a0/lr_x2/seed0", "repvgg_a0/seed0",
    ]  # fmt: skip
    stage_runs = [r for r in runs if r.data.tags["job"] in ("train", "evaluate", "export")]
    for run in stage_runs:
        parent = groups[run.data.tags["mlflow.parentRunId"]]
        assert {k: parent.data.tags[k] for k in ("architecture", "variant", "seed")} == {
            k: run.data.tags[k] for k in ("architecture", "variant", "seed")
        }
        assert parent.info.start_time <= run.info.start_time
        assert run.info.end_time <= parent.info.end_time
        assert run.data.tags["mlflow.source.name"] == f"repq {run.data.tags['job']}"
        assert run.inputs.dataset_inputs, run.info.run_name
    assert {r.info.status for r in groups.values()} == {"FINISHED"}
    versions = client.search_model_versions(max_results=1000)
    assert len(versions) == exports
    names = {v.name for v in versions}
    assert "micro.repvgg_a0.lr_x2.qat-repq-4" in names and "micro.ecbsr.ptq-4" in names
    for version in versions:
        run = client.get_run(version.run_id)
        assert run.data.tags["job"] == "export" and version.version == "1"
        assert version.tags["bits"] == "4" and version.tags["seed"] == "0"
        assert version.tags["method"] == run.data.tags["method"]
        assert version.tags["weight_codes_equal"] == "True"
        assert "top1_agreement" in version.tags or "max_abs_diff" in version.tags


def test_a_registered_model_loads_through_pyfunc_as_onnxruntime_runs_it(micro_run):
    import mlflow.pyfunc
    import numpy as np
    import onnxruntime as ort

    workdir, server = micro_run
    mlflow.set_tracking_uri(server.uri)
    onnx_file = workdir / "results/runs/repvgg_a0/lr_x2/seed0/qat-repq-4/model.onnx"
    model = mlflow.pyfunc.load_model("models:/micro.repvgg_a0.lr_x2.qat-repq-4/1")
    images = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
    (expected,) = ort.InferenceSession(onnx_file).run(None, {"input": images})
    assert np.array_equal(model.predict(images)["output"], expected)
    assert model.metadata.get_input_schema().input_types()[0] == np.dtype("float32")


CLICK_CLAIMS_CAPTION = """<script>
function byText(t) { return [...document.querySelectorAll('*')].filter(
  e => e.textContent.trim() === t && e.children.length === 0); }
setTimeout(() => byText('Tables').pop().click(), 1500);
setTimeout(() => { let row = byText('claims').pop();
  for (let i = 0; i < 3 && row; i++, row = row.parentElement) {
    const icons = row.parentElement ? row.parentElement.querySelectorAll('a,button,svg') : [];
    if (icons.length >= 2) { const icon = icons[icons.length - 1];
      (icon.closest('a,button') || icon).dispatchEvent(new MouseEvent('click', {bubbles: true}));
      break; } } }, 3000);
</script>"""


def _shown_text(page: Path, script: str = "") -> str:
    """The text a real browser (headless Chromium) shows of an HTML page after
    ``script`` ran: the rendered DOM without scripts and tags."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium here (.ci/run installs Debian's chromium)")
    text = page.read_text(errors="ignore")
    end = text.rindex("</body>")
    clicked = page.with_name("clicked.html")
    clicked.write_text(text[:end] + script + text[end:])
    done = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=8000",
         "--dump-dom", clicked.as_uri()],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    dom = re.sub(r"<script.*?</script>", " ", done.stdout, flags=re.DOTALL)
    return re.sub(r"\s+", " ", html_module.unescape(re.sub(r"<[^>]+>", " ", dom)))


def test_the_report_explains_itself_in_a_browser(micro_run):
    """The Snakemake report opens on the workflow's description, and a table's caption
    says how to read it (what holds, contradicted and not resolved mean)."""
    workdir, _ = micro_run
    page = workdir / "report.html"
    if not page.exists():
        snakemake(workdir, "--cores", "1", "--configfile", "micro.yaml", "--report", "report.html")
    home = _shown_text(page)
    assert "The repq workflow reproduces the experiments of" in home
    assert "A variant is a named set of recipe overrides" in home
    assert "variants lr_x2" in home  # the description reads the config
    assert "The verdict follows" not in home  # a caption shows only when its table is opened
    caption = _shown_text(page, CLICK_CLAIMS_CAPTION)
    assert "The paper's claims that these runs can test" in caption
    assert "The verdict follows from the interval alone: holds" in caption


EXPAND = "button[data-component-id*='runnamecellrenderer']"
"""The button of the runs table that unfolds a parent run's children."""


def _cells(driver, column: str, line: int | None = None) -> list[str]:
    """The texts of one column of the runs table (MLflow's ag-grid) as shown, or one
    line of each (a run name's cell shows its colour, then the name)."""
    from selenium.webdriver.common.by import By

    cells = driver.find_elements(By.CSS_SELECTOR, f"[role=gridcell][col-id*='{column}']")
    texts = [c.text.strip() for c in cells]
    return texts if line is None else [(t.splitlines() or [""])[line] for t in texts]


def test_the_mlflow_ui_shows_the_run_tree_and_the_registered_models(micro_run):
    """The runs URL that ``make demo`` prints, in headless Chromium: the runs listed as a
    tree (a parent per architecture, variant and seed, unfolding into its jobs), no
    negative duration, the data sets, and the deployed models on the registry's page."""
    from selenium.webdriver.common.by import By

    from repq.cli import _mlflow_ui_hint

    workdir, server = micro_run
    url = _mlflow_ui_hint(workdir / "results/tracking.ready").split()[-1]
    assert url.startswith(server.uri) and url.endswith("/runs")
    with chromium() as driver:
        driver.get(url)
        names = wait_for(lambda: [n for n in _cells(driver, "Run Name", -1) if n], what="runs")
        assert set(names) == {"report", "repvgg_a0/seed0", "repvgg_a0/lr_x2/seed0", "ecbsr/seed0"}
        buttons = driver.find_elements(By.CSS_SELECTOR, EXPAND)
        assert len(buttons) == 3  # the parents, folded
        for button in buttons:
            button.click()
        shown = wait_for(
            lambda: len(names := _cells(driver, "Run Name", -1)) > 20 and names, what="nested runs"
        )
        assert {
            "repvgg_a0/lr_x2/qat-repq-4",
            "ecbsr/export-qat-repq-4",
            "repvgg_a0/eval-fp",
        } <= set(shown)
        durations = [d for d in _cells(driver, "duration") if d]
        assert len(durations) == len(shown) and not [d for d in durations if d.startswith("-")]
        datasets = " ".join(_cells(driver, "Dataset"))
        assert re.search(r"cls/val \([0-9a-f]{12}\)\s+Evaluation", datasets), datasets
        models = dict(zip(shown, _cells(driver, "Models"), strict=True))
        # an export run's logged ONNX model, shown as the registered version it became
        assert models["repvgg_a0/export-qat-repq-4"].split() == ["micro.repvgg_a0.qat-repq-4", "v1"]
        driver.save_screenshot(str(workdir / "results" / "mlflow-runs.png"))
        driver.get(f"{server.uri}/#/models")
        page = wait_for(
            lambda: (
                "micro.ecbsr.ptq-4" in (text := driver.find_element(By.TAG_NAME, "body").text)
                and text
            ),
            what="the registered models",
        )
        registered = set(re.findall(r"micro\.[\w.-]+", page))
        assert len(registered) == 7 and "micro.repvgg_a0.lr_x2.qat-bnest-4" in registered


TABLES = ("classification.csv", "classification.md", "superres.csv", "superres.md", "runs.csv")


def _tag(run: dict, key: str) -> str | None:
    """A tag of a run as the REST API gives it."""
    return next((t["value"] for t in run["data"]["tags"] if t["key"] == key), None)


def test_a_killed_workflow_is_unlocked_and_finishes_with_the_same_tables(micro_run, tmp_path):
    reference, _ = micro_run
    workdir = _copy_workflow(tmp_path)
    (workdir / "micro.yaml").write_text(yaml.safe_dump(MICRO))
    env = workflow_env()
    command = [str(BIN / "snakemake"), "--cores", "2", "--configfile", "micro.yaml"]
    log = open(tmp_path / "killed.log", "w")  # noqa: SIM115 - closed with the run
    run = subprocess.Popen(
        command, cwd=workdir, env=env, stdout=log, stderr=log, start_new_session=True
    )
    models = workdir / "results" / "runs"
    deadline = time.monotonic() + 600
    while len(list(models.glob("*/base/seed0/*/model.pt"))) < 3:
        if run.poll() is not None or time.monotonic() > deadline:
            log.close()
            raise AssertionError((tmp_path / "killed.log").read_text()[-3000:])
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGKILL)  # the whole DAG, its jobs included
    run.wait()
    log.close()
    assert not (workdir / "results" / "tables" / "runs.csv").exists(), "killed too late"

    script = [sys.executable, str(workdir / "workflow" / "scripts" / "stale_lock.py")]
    stale = subprocess.run(script, cwd=workdir, capture_output=True, text=True)
    assert stale.returncode == 1 and "`make unlock`" in stale.stderr
    snakemake(workdir, "--unlock", "--configfile", "micro.yaml")
    assert subprocess.run(script, cwd=workdir).returncode == 0
    snakemake(workdir, "--cores", "2", "--configfile", "micro.yaml")
    for name in TABLES:
        rerun = (workdir / "results" / "tables" / name).read_bytes()
        assert rerun == (reference / "results" / "tables" / name).read_bytes(), name


# -- the SLURM path, on a real one-node cluster -----------------------------------------

SLURM_MICRO = {
    **MICRO,
    "superres_overrides": {
        **MICRO["superres_overrides"],
        "train.epochs": 3,
        "data.repeat": 24,
    },
    "experiments": {"ecbsr_x2": {"recipe": "config/recipes/ecbsr.yaml"}},
    "methods": ["repq"],
    "bits": [4],
    "ptq": False,
    "variants": {},
}


def local_profile(workdir: Path) -> Path:
    """``profiles/slurm`` with its placeholders filled for the one-node cluster: its one
    partition, no account (there is no accounting), no GPUs."""
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    profile["default-resources"] = {
        **{k: v for k, v in profile["default-resources"].items() if k != "slurm_account"},
        "slurm_partition": slurm_cluster.PARTITION,
        "mem_mb": 1000,
        "runtime": 30,
    }
    profile["set-resources"] = {
        rule: {"gpu": 0, "mem_mb": 1000, "runtime": 30} for rule in profile["set-resources"]
    }
    profile["set-threads"] = {rule: 1 for rule in profile["set-threads"]}
    folder = workdir / "profiles" / "slurm-local"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return folder


def test_the_slurm_profile_gives_training_jobs_cpus_per_gpu():
    from snakemake_executor_plugin_slurm_jobstep import get_cpu_setting

    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    resources = {**profile["default-resources"], **profile["set-resources"]["train"]}
    job = SimpleNamespace(
        threads=profile["set-threads"]["train"],
        resources=SimpleNamespace(get=resources.get, **resources),
    )
    assert get_cpu_setting(job, gpu=True) == f"--cpus-per-gpu={resources['cpus_per_gpu']}"


def _slurm_jobs() -> list[tuple[str, str]]:
    """``(job id, comment)`` of every queued or running SLURM job."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %.300k"], capture_output=True, text=True).stdout
    return [tuple(line.split(" ", 1)) for line in out.splitlines() if " " in line]


def test_the_workflow_runs_on_slurm_and_a_cancelled_job_resumes(tmp_path):
    began = time.monotonic()
    try:
        slurm_cluster.start(tmp_path / "slurm")
    except slurm_cluster.Unavailable as err:
        pytest.skip(f"SLURM cannot start here: {err}")
    setup_s = time.monotonic() - began
    try:
        workdir = _copy_workflow(tmp_path / "work")
        (workdir / "micro.yaml").write_text(yaml.safe_dump(SLURM_MICRO))
        profile = local_profile(workdir)
        env = workflow_env()
        command = [
            "timeout", "-k", "10", "900",  # a hung Snakemake ignores SIGTERM while it waits
            str(BIN / "snakemake"), "--profile", str(profile), "--configfile", "micro.yaml",
            "--slurm-status-command", "squeue",
            "--slurm-init-seconds-before-status-checks", "1",
            "--seconds-between-status-checks", "2",
        ]  # fmt: skip
        run = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        checkpoint = workdir / "results/resume/ecbsr_x2/base/seed0/fp/last.pt"
        deadline = time.monotonic() + 600
        while not checkpoint.exists():
            if run.poll() is not None or time.monotonic() > deadline:
                run.kill()
                raise AssertionError(f"no FP checkpoint: {run.communicate()[0][-4000:]}")
            time.sleep(0.2)
        jobs = _slurm_jobs()
        fp_jobs = [i for i, c in jobs if "rule_train" in c and "fp" in c and "qat" not in c]
        assert len(fp_jobs) == 1, jobs
        subprocess.run(["scancel", fp_jobs[0]], check=True)
        output, _ = run.communicate(timeout=900)
        wall_s = time.monotonic() - began
    finally:
        slurm_cluster.stop(tmp_path / "slurm")
    print(f"SLURM set-up {setup_s:.1f} s, test {wall_s:.0f} s")
    assert run.returncode == 0, output[-4000:]
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", output, flags=re.IGNORECASE)
    planned = 7  # prepare_mini, tracking_init, train fp and qat-repq-4, evaluate, export, tables
    assert len(submitted) == planned + 1, output[-4000:]  # every job, and the retry
    log = (workdir / "results/logs/train/ecbsr_x2/base/seed0/fp.log").read_text()
    assert "resumed ecbsr/fp at epoch" in log, log[-2000:]
    assert (workdir / "results/tables/superres.csv").exists()
    client = MlflowClient(f"sqlite:///{workdir / 'results' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("micro").experiment_id])
    jobs = sorted(r.data.tags["job"] for r in runs)
    assert jobs == ["evaluate", "evaluate", "export", "group", "report", "train", "train"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    # the cancelled job's run went on in its retry: its first start, a restart counted
    (fp,) = [r for r in runs if r.data.tags.get("stage") == "fp" and r.data.tags["job"] == "train"]
    assert fp.data.tags["resumed"] == "1"
