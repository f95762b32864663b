"""Evaluation job: the deploy form of an experiment's trained models on its validation
or test sets, in one process (the data is built once)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from repq.config import flatten
from repq.engine.build import deploy_form, model_from_file
from repq.engine.distributed import Context, peak_memory, setup
from repq.engine.tasks import Task, make_task, means
from repq.files import atomic_write
from repq.tracking import Tracker, stage_run


def _evaluate_one(task: Task, tracker: Tracker, ctx: Context, config: dict, path: Path) -> dict:
    """Evaluate one ``model.pt`` in its own MLflow run; returns its result."""
    model, content, stage = model_from_file(path)
    name = content["config"]["model"]["name"]
    spec = stage_run(content["config"], stage, "evaluate", f"eval-{stage}")
    tracker.start(spec, {**flatten(config), "model_file": str(path)})
    for data in task.data_refs:
        tracker.log_input(data)
    try:
        scores = task.scores(deploy_form(model.to(ctx.device), stage), ctx.device)
    except BaseException:
        tracker.finish("FAILED")
        raise
    metrics = means(scores)
    tracker.log_metrics(metrics, 0)
    tracker.flush(timeout=5)  # the store's run id
    result = {
        "name": spec.name,
        "task": content["config"]["task"],
        "model": name,
        "stage": str(stage),
        "model_file": str(path),
        "metrics": metrics,
        "per_item": {key: items.tolist() for key, items in scores.items()},
        "run_id": tracker.run_id,
    }
    tracker.finish()
    return result


def evaluate(config: dict, model_files: list[Path], out: Path, threads: int = 1) -> dict:
    """Evaluate every ``model.pt`` of ``model_files`` on the data of ``config``; write
    ``out`` (JSON: ``{"results": [...], "cpu_seconds": ...}``; a result holds its
    metrics and, under ``per_item``, each metric per validation or test item, which the
    claims' intervals use) and log one MLflow run per model. Returns what was written."""
    torch.set_num_threads(max(1, threads))
    ctx = setup()
    task = make_task(config, train=False)
    journal = out.with_name(f"{out.stem}.tracking.jsonl")
    tracker = Tracker(config.get("tracking", {}), journal, enabled=ctx.is_main)
    startup = time.process_time()
    results = [_evaluate_one(task, tracker, ctx, config, Path(p)) for p in model_files]
    content = {
        "results": results,
        "cpu_seconds": {"startup": startup, "total": time.process_time()},
        **peak_memory(ctx),
    }
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(content, indent=2)))
    tracker.close()  # the results are written; undelivered tracking: exit 3
    return content
