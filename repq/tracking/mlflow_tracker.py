"""MLflow runs for repq jobs.

Where a job logs, in order: the config's ``tracking`` section, MLflow's own environment
variables (``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``; the workflow sets them
for its jobs), else a SQLite database ``results/mlflow.db`` and the experiment ``repq``.
Artifacts of a SQLite store live beside it (``mlartifacts/``). The database and the
experiment are created once (``repq tracking-init``, the first rule of the workflow) so
that parallel jobs on one machine only ever add runs. A server URI is checked at
start-up, so that an unreachable server fails the job before training.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from repq.errors import TrackingError
from repq.vocab import Stage

DEFAULT_STORE = Path("results") / "mlflow.db"
DEFAULT_EXPERIMENT = "repq"
ARTIFACTS_BESIDE_STORE = "mlartifacts"


def sqlite_uri(database: str | Path) -> str:
    """The MLflow URI of a SQLite database file (absolute)."""
    return f"sqlite:///{Path(database).resolve()}"


def resolve_uri(config_uri: str | None) -> str:
    """The tracking URI of a job: config, then environment, then the SQLite default."""
    return config_uri or os.environ.get("MLFLOW_TRACKING_URI") or sqlite_uri(DEFAULT_STORE)


def resolve_experiment(config_name: str | None) -> str:
    """The experiment of a job: config, then environment, then ``repq``."""
    return config_name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast if a server URI does not answer, or a SQLite folder cannot be made."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
                return
        except (urllib.error.URLError, OSError) as err:
            raise TrackingError(f"MLflow tracking server {uri} is unreachable: {err}") from err
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TrackingError(f"cannot create the folder of tracking store {uri}: {err}") from err


def _artifact_location(uri: str, artifacts: str | None) -> str | None:
    """``artifacts`` if given; beside the database for SQLite; else the server's choice."""
    if artifacts:
        return Path(artifacts).resolve().as_uri()
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///"))
        return (database.parent / ARTIFACTS_BESIDE_STORE).resolve().as_uri()
    return None


def ensure_experiment(uri: str, name: str, artifacts: str | None = None) -> str:
    """Create the tracking store (if SQLite) and the experiment; returns its id."""
    import mlflow
    from mlflow.tracking import MlflowClient

    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=_artifact_location(uri, artifacts))


def git_commit() -> str:
    """The current git commit of the working directory, or ``unknown``."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_tags(config: dict, stage: Stage, job: str) -> dict[str, str]:
    """The tags of a job's run: architecture, task, stage, method, bits, seed, commit, job."""
    return {
        "architecture": config["model"]["name"],
        "task": config["task"],
        "stage": str(stage),
        "method": stage.method or stage.name,
        "bits": str(stage.bit_width),
        "seed": str(config["train"].get("seed", 0)),
        "git_commit": git_commit(),
        "job": job,
    }


class Tracker:
    """One MLflow run; every method is a no-op when ``enabled`` is false (rank > 0)."""

    def __init__(self, tracking: dict[str, Any], enabled: bool = True) -> None:
        self.enabled = enabled
        self.uri = resolve_uri(tracking.get("uri"))
        self.experiment = resolve_experiment(tracking.get("experiment"))
        self.artifacts = tracking.get("artifacts")
        self.group = tracking.get("group") or os.environ.get("REPQ_PIPELINE")
        self.run_id: str | None = None
        self._client = None
        if enabled:
            self.experiment_id = ensure_experiment(self.uri, self.experiment, self.artifacts)

    def start(self, run_name: str, tags: dict[str, str], params: dict[str, Any]) -> None:
        if not self.enabled:
            return
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(self.uri)
        if self.group:
            tags = {**tags, "pipeline": self.group}
        run = self._client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._client.log_batch(self.run_id, params=items[i : i + 100])

    def resume(self, run_id: str) -> None:
        """Continue an existing run (a resumed job logs into the run it started)."""
        if not self.enabled:
            return
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(self.uri)
        self._client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled or self.run_id is None:
            return

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self._client.log_batch(self.run_id, metrics=batch)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        if self.enabled and self.run_id is not None:
            self._client.log_artifact(self.run_id, str(path), folder)

    def finish(self, status: str = "FINISHED") -> None:
        if self.enabled and self.run_id is not None:
            self._client.set_terminated(self.run_id, status)
            self.run_id = None
