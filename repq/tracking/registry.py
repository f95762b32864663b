"""The deployed model in MLflow's Model Registry: an exported QDQ ONNX file logged as an
MLflow model of its export run (onnx flavor, signature and input example) and registered
as a version of one registered model per experiment and stage, each seed a version.
"""

from __future__ import annotations

import tempfile
from importlib.metadata import version
from pathlib import Path

MODEL_NAME = "model"
"""The name of an export run's logged model."""

DESCRIPTION = (
    "An integer (QDQ ONNX) model exported by `repq export`: one version per exported "
    "model file (the tag seed says which run). Tags: bits, method, stage, variant, seed, "
    "the onnxruntime check against the PyTorch model (top1_agreement, max_abs_diff) and "
    "onnxruntime's metric. Load it with mlflow.pyfunc.load_model('models:/<name>/<version>')."
)


def _save(record: dict, folder: Path, model) -> None:
    """The ONNX file as the MLflow model ``model`` (a logged model) in ``folder``: the
    signature and input example come from the input and output the export saved beside
    it."""
    import mlflow.onnx
    import numpy as np
    import onnx
    from mlflow.models import Model, infer_signature

    example = np.load(record["example"])
    serving = [f"onnx=={version('onnx')}", f"onnxruntime=={version('onnxruntime')}"]
    mlflow.onnx.save_model(
        onnx.load(record["path"]),
        folder,
        mlflow_model=Model(run_id=model.source_run_id, model_id=model.model_id),
        signature=infer_signature(example["input"], example["output"]),
        input_example=example["input"],
        save_as_external_data=False,
        pip_requirements=serving,  # what serving needs; MLflow's inference took 1.9 s a file
        onnx_execution_providers=["CPUExecutionProvider"],  # as the export verified it
    )


def _ensure_registered(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=DESCRIPTION)


def register_model(client, uri: str, run_id: str, record: dict) -> None:
    """Log the record's ONNX file as a model of the run (MLflow's logged model: the
    run's Models column) and register it as a new version of ``record["registered"]``
    with the record's tags. ``uri`` is the client's store: MLflow's registry looks a
    logged model up in the process's tracking store, so that is set to it."""
    import mlflow
    from mlflow.entities import LoggedModelOutput

    mlflow.set_tracking_uri(uri)
    experiment_id = client.get_run(run_id).info.experiment_id
    model = client.create_logged_model(
        experiment_id, MODEL_NAME, source_run_id=run_id, tags=record["tags"], model_type="onnx"
    )
    with tempfile.TemporaryDirectory() as tmp:
        _save(record, Path(tmp) / MODEL_NAME, model)
        client.log_model_artifacts(model.model_id, str(Path(tmp) / MODEL_NAME))
    client.finalize_logged_model(model.model_id, "READY")
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, 0)])
    name = record["registered"]
    _ensure_registered(client, name)
    client.create_model_version(
        name,
        f"models:/{model.model_id}",
        run_id=run_id,
        tags=record["tags"],
        model_id=model.model_id,
    )
