"""``repq export``: trained PTQ/QAT models to ONNX QDQ files, each verified in
onnxruntime against its PyTorch deploy model on the run's own evaluation data.

Beside each ``model.pt`` it writes ``model.onnx`` and ``export.json``: the file's bytes
and those of the same deploy model exported in float (FP32), how many layers store UINT8
and INT4 codes, whether every code equals ``weight_quant.integers`` of the PyTorch
model, and, verified, the metrics onnxruntime gives, the PyTorch deploy model's metrics,
the top-1 agreement (classification) and the largest output difference.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from torch import nn

from repq.config import apply_overrides, flatten
from repq.data.identity import DataRef
from repq.engine.build import model_from_file
from repq.engine.tasks import ENGINES, Task, make_task
from repq.errors import CheckpointError
from repq.export.onnx_model import export_onnx
from repq.export.qdq import float_form, integer_form
from repq.export.verify import Comparison, OnnxRunner, codes_check
from repq.files import atomic_write
from repq.qat import to_deploy
from repq.tracking import Tracker, now_ms, stage_run, stage_tags
from repq.vocab import Stage

ONNX_FILE, REPORT_FILE, EXAMPLE_FILE = "model.onnx", "export.json", "example.npz"


def export_model(
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    any_size: bool,
    graphs: dict | None = None,
) -> dict:
    """Export a prepared (PTQ or QAT) model in integer form to ``path``; returns its
    bytes and the check of its weight codes against the model (:func:`codes_check`).
    ``any_size``: the file takes inputs of any height and width (else only the batch
    varies); ``graphs``: traced graphs to reuse (:func:`repq.export.export_onnx`)."""
    export_onnx(integer_form(model), example, path, any_size, graphs)
    return {"bytes": path.stat().st_size, **codes_check(model, path)}


def float_bytes(model: nn.Module, example: torch.Tensor, any_size: bool) -> int:
    """Bytes of the same deploy model exported in float (FP32 weights, no quantizers)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fp32.onnx"
        export_onnx(float_form(model), example, path, any_size)
        return path.stat().st_size


def verify(model: nn.Module, path: Path, task: Task, threads: int = 1) -> dict:
    """The exported file in onnxruntime against the PyTorch deploy model on the task's
    evaluation data: both models' metrics, top-1 agreement and output differences."""
    comparison = Comparison(OnnxRunner(path, threads), to_deploy(model).cpu())
    cpu = torch.device("cpu")
    return {
        "metrics": task.evaluate(comparison, cpu),
        "reference_metrics": task.evaluate(comparison.replay(), cpu),
        **comparison.summary(),
    }


class Exporter:
    """Exports model files one after another, building each evaluation data set,
    tracing each graph and measuring each architecture's FP32 size once."""

    def __init__(self, overrides: list[str], run_verify: bool, threads: int) -> None:
        self.overrides, self.run_verify, self.threads = overrides, run_verify, threads
        self.tasks: dict[str, Task] = {}
        self.fp32: dict[str, int] = {}
        self.graphs: dict[tuple, object] = {}

    def _task(self, config: dict) -> Task:
        key = json.dumps([config["task"], config["data"], config["model"]], sort_keys=True)
        if key not in self.tasks:
            self.tasks[key] = make_task(config, train=False)
        return self.tasks[key]

    def _fp32_bytes(self, model: nn.Module, config: dict, example, any_size: bool) -> int:
        key = json.dumps(config["model"], sort_keys=True)
        if key not in self.fp32:
            self.fp32[key] = float_bytes(model, example, any_size)
        return self.fp32[key]

    def export(self, model_file: Path, onnx_path: Path, tracker: Tracker) -> dict:
        """Export and verify one model file; write its report beside ``onnx_path``."""
        started = now_ms()
        model, content, stage = model_from_file(model_file)
        if not stage.quantized:
            raise CheckpointError(
                f"{model_file} holds a float {stage} model; only PTQ and QAT models export "
                "to integer ONNX"
            )
        model.eval()
        config = apply_overrides(content["config"], self.overrides)
        engine = ENGINES[config["task"]]
        example, any_size = engine.example_input(config), engine.any_input_size
        result = {
            "model": config["model"]["name"],
            "stage": str(stage),
            "model_file": str(model_file),
            "onnx_file": str(onnx_path),
            **export_model(model, example, onnx_path, any_size, self.graphs),
            "fp32_bytes": self._fp32_bytes(model, config, example, any_size),
        }
        if self.run_verify:
            result |= verify(model, onnx_path, self._task(config), self.threads)
        report = onnx_path.with_name(REPORT_FILE)
        atomic_write(report, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2)))
        example_file = save_example(onnx_path, example[:1], self.threads)
        data = self._task(config).data_refs if self.run_verify else []
        _track(tracker, config, stage, result, [onnx_path, report], started, data)
        tags = {**stage_tags(config, stage), **_model_tags(result)}
        tracker.log_model(onnx_path, example_file, tracker.registered_name(config, stage), tags)
        tracker.finish()
        return result


def _track(
    tracker: Tracker,
    config: dict,
    stage: Stage,
    result: dict,
    files: list,
    started: int,
    data: list[DataRef],
) -> None:
    """One MLflow run per exported model (from ``started``, ms since the epoch): its
    figures as metrics, the files as artifacts, the verification's data as inputs (the
    caller registers the model and ends the run)."""
    spec = stage_run(config, stage, "export", f"export-{stage}")
    tracker.start(spec, flatten(config), started)
    for ref in data:
        tracker.log_input(ref)
    numbers = {
        "bytes": result["bytes"],
        "fp32_bytes": result["fp32_bytes"],
        "weight_codes_equal": float(result["weight_codes_equal"]),
    }
    for key in ("top1_agreement", "max_abs_diff"):
        if key in result:
            numbers[key] = result[key]
    numbers |= {f"onnx/{k}": v for k, v in result.get("metrics", {}).items()}
    tracker.log_metrics(numbers, 0)
    for path in files:
        tracker.log_artifact(path)


def save_example(onnx_path: Path, example: torch.Tensor, threads: int) -> Path:
    """An input and the file's onnxruntime output on it (``example.npz`` beside it): the
    MLflow model's signature and input example."""
    import numpy as np

    output = OnnxRunner(onnx_path, threads)(example)
    path = onnx_path.with_name(EXAMPLE_FILE)
    arrays = {"input": example.numpy(), "output": output.numpy()}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add .npz to a name
            np.savez(f, **arrays)

    atomic_write(path, write)
    return path


def _model_tags(result: dict) -> dict[str, object]:
    """A registered version's tags: how the file compares with its PyTorch model and
    what onnxruntime measured with it (the stage's tags come from its run)."""
    checks = ("weight_codes_equal", "top1_agreement", "max_abs_diff")
    tags = {k: result[k] for k in checks if k in result}
    return tags | {f"onnx/{k}": v for k, v in result.get("metrics", {}).items()}


def export_files(
    model_files: list[Path],
    overrides: list[str] | None = None,
    run_verify: bool = True,
    threads: int = 1,
    out: Path | None = None,
    summary: Path | None = None,
    tracking: dict | None = None,
) -> list[dict]:
    """Export every model file to ``model.onnx`` beside it (to ``out`` instead, for one
    file) and verify each; write ``summary`` (every report in one JSON) if given. Each
    model gets an MLflow run (``tracking``: ``uri``, ``experiment``; default: the
    environment's), journaled beside ``summary`` or the first file."""
    model_files = [Path(f) for f in model_files]
    if out is not None and len(model_files) != 1:
        raise CheckpointError(f"--out names one file, but {len(model_files)} models were given")
    torch.set_num_threads(max(1, threads))
    exporter = Exporter(overrides or [], run_verify, threads)
    folder = summary.parent if summary else Path(out or model_files[0]).parent
    tracker = Tracker(tracking or {}, folder / "export.tracking.jsonl")
    results = [
        exporter.export(f, Path(out) if out else f.with_name(ONNX_FILE), tracker)
        for f in model_files
    ]
    if summary is not None:
        content = json.dumps({"results": results}, indent=2)
        atomic_write(summary, lambda tmp: Path(tmp).write_text(content))
    tracker.close()  # the files are written; undelivered tracking: exit 3
    return results
