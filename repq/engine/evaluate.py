"""Evaluation job: a trained model's deploy form on the validation or test sets."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from repq.config import flatten
from repq.engine.build import deploy_form, model_from_file
from repq.engine.checkpoint import atomic_write
from repq.engine.distributed import setup
from repq.engine.tasks import make_task
from repq.tracking import Tracker, run_tags


def evaluate(config: dict, model_file: Path, out: Path, threads: int = 1) -> dict:
    """Evaluate ``model_file`` (a job's ``model.pt``) on the data of ``config``; write
    ``out`` (JSON) and log one MLflow run. Returns the result."""
    torch.set_num_threads(max(1, threads))
    ctx = setup()
    task = make_task(config, train=False)
    tracker = Tracker(config.get("tracking", {}), enabled=ctx.is_main)
    model, content = model_from_file(model_file)
    stage, method, bits = content["stage"], content["method"], content["bits"]
    name = content["config"]["model"]["name"]
    run_name = f"{name}/eval-{stage}" + (f"-{method}-{bits}bit" if stage == "qat" else "")
    tags = run_tags(content["config"], stage, method, bits, "evaluate")
    params = {**flatten(config), "model_file": str(model_file)}
    tracker.start(run_name, tags, params)
    try:
        metrics = task.evaluate(deploy_form(model.to(ctx.device), stage), ctx.device)
    except BaseException:
        tracker.finish("FAILED")
        raise
    result = {
        "name": run_name,
        "model": name,
        "stage": stage,
        "method": method,
        "bits": bits,
        "metrics": metrics,
        "run_id": tracker.run_id,
    }
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2)))
    tracker.log_metrics(metrics, 0)
    tracker.log_artifact(out)
    tracker.finish()
    return result
