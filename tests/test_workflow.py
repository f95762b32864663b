"""The Snakemake workflow: planning, linting, an end-to-end micro run, reruns, schema."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture
def workdir(tmp_path) -> Path:
    """A copy of the workflow (Snakefile, rules, schema, configs) to run in."""
    for name in ("Snakefile", "workflow", "config", "profiles", "environment.yml"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name)
        else:
            shutil.copy(source, tmp_path / name)
    return tmp_path


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    result = subprocess.run(
        [str(BIN / "snakemake"), *args],
        cwd=workdir,
        env=env,
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
    # + ECBSR x2 x (fp, (PTQ + 2 methods) x 2 bits); one evaluation per experiment
    assert counts == {
        "prepare_mini": 1,
        "tracking_init": 1,
        "train": 4 * 10 + 7,
        "evaluate": 5,
        "tables": 1,
        "all": 1,
    }


def test_every_seed_repeats_every_stage(workdir):
    result = snakemake(workdir, "-n", "--cores", "2", "--config", "seeds=[0,1,2]", "ptq=false")
    counts = job_counts(result.stdout)
    # 3 seeds x (4 classifiers x (fp, fp-bnest, 3 methods x 2 bits) + ECBSR (fp, 2 x 2))
    assert counts["train"] == 3 * (4 * 8 + 5) and counts["evaluate"] == 3 * 5
    for seed in (0, 1, 2):
        assert f"results/runs/repvgg_a0/seed{seed}/qat-bnest-4/model.pt" in result.stdout
        assert f"--set 'train.seed={seed}'" in _plan(workdir, f"seeds=[{seed}]")


def _plan(workdir: Path, *config: str) -> str:
    return snakemake(workdir, "-n", "-p", "--cores", "2", "--config", *config).stdout


def test_dry_run_of_the_paper_plans_every_job(workdir):
    result = snakemake(workdir, "-n", "--cores", "2", "--configfile", "config/paper.yaml")
    counts = job_counts(result.stdout)
    # ECBSR at x2 and x4
    assert counts == {
        "check_data": 6,
        "tracking_init": 1,
        "train": 4 * 10 + 2 * 7,
        "evaluate": 6,
        "tables": 1,
        "all": 1,
    }
    assert "torchrun --standalone --nproc_per_node=8 -m repq train" in _shell_of(workdir)


def _shell_of(workdir: Path) -> str:
    args = ["-n", "-p", "--cores", "2", "--configfile", "config/paper.yaml"]
    return snakemake(workdir, *args).stdout


def test_lint_reports_nothing(workdir):
    result = snakemake(workdir, "--lint")
    assert "Congratulations, your workflow is in a good condition" in result.stderr
    assert "Lints for" not in result.stdout + result.stderr


def test_wrong_config_value_names_the_key(workdir):
    result = snakemake(workdir, "-n", "--config", "bits=[3]", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "On instance['bits'][0]" in output and "is not one of [8, 4]" in output
    result = snakemake(workdir, "-n", "--config", "epochs=3", check=False)
    assert result.returncode != 0
    assert "'epochs' was unexpected" in result.stdout + result.stderr


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
    "resources": {"threads": 1},
}


def test_micro_pipeline_end_to_end(workdir):
    (workdir / "micro.yaml").write_text(yaml.safe_dump(MICRO))
    snakemake(workdir, "--cores", "2", "--configfile", "micro.yaml")
    tables = workdir / "results" / "tables"
    classification = pd.read_csv(tables / "classification.csv")
    superres = pd.read_csv(tables / "superres.csv")
    assert list(classification["model"]) == ["RepVGG-A0"]
    # one seed: every value is there, and no standard deviation
    for table in (classification, superres):
        stds = [c for c in table.columns if c.endswith(" std")]
        assert table[stds].isna().all().all()
        assert not table.drop(columns=stds).isna().any().any()
    ran = superres[(superres["bits"] != 8) & (superres["method"] != "Merged")]
    assert list(ran["method"]) == ["FP", "PTQ", "RepQ"] and "no run" not in ran.to_string()
    assert set(superres[superres["bits"] == 8]["mini_a PSNR"]) == {"no run"}  # not configured
    assert list(classification.columns[:3]) == ["model", "FP", "FP std"]
    assert {"claims.md", "claims.csv", "runs.csv"} <= {p.name for p in tables.iterdir()}
    assert (tables / "drop.png").stat().st_size > 0 and (tables / "classification.tex").exists()
    evaluation = json.loads((workdir / "results/runs/repvgg_a0/seed0/evaluation.json").read_text())
    evaluated = next(r for r in evaluation["results"] if r["stage"] == "qat-repq-4")
    assert classification.loc[0, "4-bit RepQ"] == pytest.approx(evaluated["metrics"]["top1"])

    client = MlflowClient(f"sqlite:///{workdir / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("micro")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    jobs = [r.data.tags["job"] for r in runs]
    assert jobs.count("train") == 8 and jobs.count("evaluate") == 8 and jobs.count("report") == 1
    assert len({r.data.tags["pipeline"] for r in runs}) == 1

    # One changed hyperparameter reruns only the jobs it affects.
    change = (
        "experiments={ecbsr_x2: {recipe: config/recipes/ecbsr.yaml, overrides: {train.epochs: 2}}}"
    )
    result = snakemake(
        workdir, "-n", "--cores", "2", "--configfile", "micro.yaml", "--config", change
    )
    assert job_counts(result.stdout) == {"train": 3, "evaluate": 1, "tables": 1, "all": 1}
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
