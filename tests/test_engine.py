"""The training engine end to end: real data on disk, real checkpoints, real MLflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import RECIPES, as_args, cls_overrides, sr_overrides, tracking_overrides
from mlflow.tracking import MlflowClient

from repq.cli import main
from repq.engine.checkpoint import load_checkpoint
from repq.models import create

pytestmark = pytest.mark.slow


def _train(recipe: str, overrides: list[str], out: Path, *extra: str) -> dict:
    code = main(["train", str(RECIPES / recipe), "--out", str(out), *extra, *as_args(overrides)])
    assert code == 0
    return json.loads((out / "metrics.json").read_text())


def _evaluate(recipe: str, overrides: list[str], run: Path) -> dict:
    out = run / "evaluation.json"
    args = ["evaluate", str(RECIPES / recipe), str(run / "model.pt"), "--out", str(out)]
    assert main(args + as_args(overrides)) == 0
    (result,) = json.loads(out.read_text())["results"]
    return result


def _chain(recipe: str, overrides: list[str], tmp: Path, methods: list[str]) -> dict:
    results = {"fp": _train(recipe, overrides, tmp / "fp", "--stage", "fp")}
    if "bnest" in methods:
        results["fp-bnest"] = _train(recipe, overrides, tmp / "fpb", "--stage", "fp-bnest")
    for method in methods:
        init = tmp / ("fpb" if method == "bnest" else "fp") / "model.pt"
        out = tmp / method
        qat = ("--stage", f"qat-{method}-4", "--init", str(init))
        results[method] = _train(recipe, overrides, out, *qat)
        evaluated = _evaluate(recipe, overrides, out)
        assert evaluated["metrics"] == pytest.approx(results[method]["metrics"])
        per_item = evaluated["per_item"]  # the claims' item error: one value an item
        assert set(per_item) == set(evaluated["metrics"])
        for key, items in per_item.items():
            assert sum(items) / len(items) == pytest.approx(evaluated["metrics"][key])
    return results


def test_classification_chain(mini_data, tmp_path):
    overrides = cls_overrides(mini_data) + tracking_overrides(tmp_path)
    results = _chain("ac_resnet18.yaml", overrides, tmp_path, ["merged", "repq", "bnest"])
    # two epochs on 24 images a class: 22.9, 29.2 and 22.9% for seeds 0-2 (chance 8.3%)
    assert results["fp"]["metrics"]["top1"] >= 2 * 100 / 12
    assert all(result["selection"] == "best" for result in results.values())
    history = (tmp_path / "repq" / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 2 and "qstep/layers/weight" in history[0]
    for method in ("merged", "repq", "bnest"):  # S1 at 4 bits: only the first layer 8-bit
        rows = (tmp_path / method / "precision.tsv").read_text().splitlines()[1:]
        table = [(int(w), int(i), s == "true") for _, w, i, s in (r.split("\t") for r in rows)]
        assert table[0] == (8, 8, True) and set(table[1:]) == {(4, 4, False)}, method


def test_superres_chain(mini_data, tmp_path):
    overrides = sr_overrides(mini_data) + tracking_overrides(tmp_path)
    results = _chain("ecbsr.yaml", overrides, tmp_path, ["merged", "repq"])
    for result in results.values():
        metrics = result["metrics"]
        assert set(metrics) == {"psnr/mini_a", "ssim/mini_a", "psnr/mini_b", "ssim/mini_b"}
        assert result["selection"] == "last" and result["epoch"] == 1
    # training helps: the second epoch gains 1.1 to 1.5 dB over the first (seeds 0-2)
    history = pd.read_csv(tmp_path / "fp" / "history.csv")
    assert history["psnr/mini_a"].iloc[1] > history["psnr/mini_a"].iloc[0] + 0.5


def test_mlflow_run_holds_params_metrics_and_artifacts(mini_data, tmp_path):
    overrides = sr_overrides(mini_data, epochs=3) + tracking_overrides(tmp_path)
    result = _train("ecbsr.yaml", overrides, tmp_path / "fp", "--stage", "fp")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "ecbsr/fp"
    assert run.data.params["train.epochs"] == "3" and run.data.params["stage"] == "fp"
    assert run.data.tags["architecture"] == "ecbsr" and run.data.tags["bits"] == "32"
    # MLflow's own source fields: the UI's Source and Version columns
    assert run.data.tags["mlflow.source.name"] == "repq train"
    assert run.data.tags["mlflow.source.type"] == "LOCAL"
    assert (
        len(run.data.tags["mlflow.source.git.commit"]) == 40 and "git_commit" not in run.data.tags
    )
    # nested under its group's run, which spans it
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.info.run_name == "ecbsr/seed0" and parent.data.tags["job"] == "group"
    assert parent.info.status == "FINISHED" and parent.data.tags["seed"] == "0"
    assert (
        parent.info.start_time == run.info.start_time <= run.info.end_time == parent.info.end_time
    )
    # the data sets it read, as MLflow dataset inputs with their use
    inputs = {
        d.dataset.name: ({t.key: t.value for t in d.tags}["mlflow.data.context"], d.dataset.digest)
        for d in run.inputs.dataset_inputs
    }
    assert {name: use for name, (use, _) in inputs.items()} == {
        "train": "training", "mini_a": "evaluation", "mini_b": "evaluation",
    }  # fmt: skip
    assert all(len(digest) == 12 for _, digest in inputs.values())
    assert inputs["mini_a"][1] != inputs["mini_b"][1]
    history = client.get_metric_history(run.info.run_id, "psnr/mini_a")
    assert [m.step for m in history] == [0, 1, 2]
    assert run.data.metrics["final/psnr/mini_a"] == pytest.approx(result["metrics"]["psnr/mini_a"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "config.json", "precision.tsv", "history.csv", "deploy.pt"} <= artifacts


def test_val_every_validates_every_nth_and_the_last_epoch_and_selects_among_them(
    mini_data, tmp_path
):
    overrides = cls_overrides(mini_data, epochs=5) + tracking_overrides(tmp_path)
    out = tmp_path / "fp"
    result = _train("repvgg_a0.yaml", [*overrides, "train.val_every=2"], out, "--stage", "fp")
    history = pd.read_csv(out / "history.csv")
    assert history["train_loss"].notna().all() and len(history) == 5
    validated = history.dropna(subset=["top1"])
    assert validated["epoch"].tolist() == [1, 3, 4]
    best = validated.loc[validated["top1"].idxmax()]
    assert (result["epoch"], result["metrics"]["top1"]) == (best["epoch"], best["top1"])
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    steps = [m.step for m in client.get_metric_history(result["run_id"], "top1")]
    assert steps == [1, 3, 4]
    assert len(client.get_metric_history(result["run_id"], "train_loss")) == 5


def _train_cmd(out: Path, overrides: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "repq",
        "train",
        str(RECIPES / "ecbsr.yaml"),
        "--stage",
        "fp",
        "--out",
        str(out),
        *as_args(overrides),
    ]


def test_resume_after_sigkill_equals_an_uninterrupted_run(mini_data, tmp_path):
    overrides = sr_overrides(mini_data, epochs=4) + [
        "data.repeat=6",
        *tracking_overrides(tmp_path),
    ]
    reference = _train("ecbsr.yaml", overrides, tmp_path / "reference", "--stage", "fp")

    out = tmp_path / "killed"
    checkpoint = out / "resume" / "last.pt"
    process = subprocess.Popen(_train_cmd(out, overrides), stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checkpoint.exists(), "no epoch checkpoint appeared"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "metrics.json").exists()
    assert load_checkpoint(checkpoint, "resume")["epoch"] < 4

    resumed = _train("ecbsr.yaml", overrides, out, "--stage", "fp")
    assert resumed["metrics"] == reference["metrics"]
    ref_state = load_checkpoint(tmp_path / "reference" / "model.pt")["model"]
    new_state = load_checkpoint(out / "model.pt")["model"]
    assert all(torch.equal(ref_state[k], new_state[k]) for k in ref_state)


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_one_writer_per_folder_and_a_failing_rerun_changes_nothing(mini_data, tmp_path):
    """A second job into a folder that a job is writing is refused in one line naming
    the writer's PID, and the first ends with its own results; a failing command into a
    finished folder (a missing --init, another tracking store) leaves its bytes as
    they were (it once rebound the folder's journal to the new store)."""
    # 40 epochs: the first job still trains when the second has started (about 5 s)
    overrides = sr_overrides(mini_data, epochs=40) + [
        "data.repeat=6",
        *tracking_overrides(tmp_path),
    ]
    out = tmp_path / "run"
    first = subprocess.Popen(_train_cmd(out, overrides), stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "resume" / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    second = subprocess.run(
        _train_cmd(out, [*overrides, "train.seed=1"]), capture_output=True, text=True
    )
    assert first.poll() is None, "the first job ended before the second started"
    assert second.returncode == 2
    assert second.stderr.strip() == (
        f"repq train: error: {out} is being written by another job (PID {first.pid}): wait "
        "for it to end, or give this job another --out"
    )
    assert first.wait(timeout=300) == 0
    assert json.loads((out / "config.json").read_text())["train"].get("seed", 0) == 0

    before = _folder_bytes(out)
    elsewhere = [f"tracking.uri=sqlite:///{tmp_path / 'other.db'}"]
    args = ["train", str(RECIPES / "ecbsr.yaml"), "--stage", "qat-repq-4", "--out", str(out)]
    args += ["--init", str(tmp_path / "missing.pt"), *as_args(overrides + elsewhere)]
    assert main(args) == 2
    assert _folder_bytes(out) == before


def test_two_process_ddp_matches_one_process(mini_data, tmp_path):
    """ECBSR has no BN, so two gloo processes with half the batch each see exactly the
    single-process batches and their averaged gradients equal the single-process ones up
    to float rounding. With SGD the weights then agree to relative 1e-5 (Adam would
    amplify the rounding of near-zero gradients, since its step is about lr * sign)."""
    overrides = sr_overrides(mini_data, epochs=2) + tracking_overrides(tmp_path)
    overrides += ["train.optimizer=sgd", "train.lr.fp=1.0e-5"]
    _train("ecbsr.yaml", overrides, tmp_path / "single", "--stage", "fp")
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "repq",
        *_train_cmd(tmp_path / "ddp", overrides)[3:],
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command, check=True, env=env, capture_output=True, timeout=300)
    single = load_checkpoint(tmp_path / "single" / "model.pt")["model"]
    ddp = load_checkpoint(tmp_path / "ddp" / "model.pt")["model"]
    for key, value in single.items():
        assert ((ddp[key] - value).norm() / value.norm().clamp_min(1e-12)).item() < 1e-5, key
    torch.manual_seed(0)
    initial = create("ecbsr", m=1, c=8, scale=2).state_dict()
    moved = max((single[k] - initial[k]).abs().max().item() for k in initial)
    assert moved > 1e-3  # training did change the weights


def test_compiled_training_forward_trains_and_saves_a_plain_model(mini_data, tmp_path):
    overrides = sr_overrides(mini_data, epochs=1) + tracking_overrides(tmp_path)
    result = _train("ecbsr.yaml", overrides + ["train.compile=true"], tmp_path, "--stage", "fp")
    state = load_checkpoint(tmp_path / "model.pt", "model")["model"]
    assert not any(key.startswith("_orig_mod") for key in state)
    assert _evaluate("ecbsr.yaml", overrides, tmp_path)["metrics"] == pytest.approx(
        result["metrics"]
    )


def test_recomputed_quantized_operands_train_exactly_as_stored_ones(mini_data, tmp_path):
    overrides = sr_overrides(mini_data) + tracking_overrides(tmp_path)
    _train("ecbsr.yaml", overrides, tmp_path / "fp", "--stage", "fp")
    qat = ("--stage", "qat-merged-8", "--init", str(tmp_path / "fp" / "model.pt"))
    stored = _train(
        "ecbsr.yaml", overrides + ["train.recompute_quantized=false"], tmp_path / "stored", *qat
    )
    recomputed = _train("ecbsr.yaml", overrides, tmp_path / "re", *qat)  # the default
    assert recomputed["metrics"] == stored["metrics"]
    # every column but the speed: losses, metrics and learned steps of every epoch
    stored_history, re_history = (
        pd.read_csv(tmp_path / run / "history.csv").drop(columns="images_per_sec")
        for run in ("stored", "re")
    )
    assert re_history.equals(stored_history)
