"""Where runs are stored: the tracking URI and experiment of a job, the store's
creation (``repq tracking-init``), its reachability and its UI address.

Where a job logs, in order: the config's ``tracking`` section, MLflow's own environment
variables (``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``; the workflow sets them
for its jobs), else a SQLite database ``results/mlflow.db`` and the experiment ``repq``.
Artifacts of a SQLite store live beside it (``mlartifacts/``). The database and the
experiment are created once (``repq tracking-init``, the first rule of the workflow) so
that parallel jobs on one machine only ever add runs. A server URI is checked at
start-up, so that an unreachable server fails the job before training.
"""

from __future__ import annotations

import base64
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from repq.config import adopt_credentials
from repq.errors import TrackingError
from repq.files import locked

DEFAULT_STORE = Path("results") / "mlflow.db"
DEFAULT_EXPERIMENT = "repq"
ARTIFACTS_BESIDE_STORE = "mlartifacts"


def now_ms() -> int:
    """Now, in milliseconds since the epoch (MLflow's timestamps)."""
    return int(time.time() * 1000)


def sqlite_uri(database: str | Path) -> str:
    """The MLflow URI of a SQLite database file (absolute)."""
    return f"sqlite:///{Path(database).resolve()}"


def resolve_uri(config_uri: str | None) -> str:
    """The tracking URI of a job: config, then environment, then the SQLite default;
    without credentials (:func:`repq.config.adopt_credentials`)."""
    uri = config_uri or os.environ.get("MLFLOW_TRACKING_URI") or sqlite_uri(DEFAULT_STORE)
    return adopt_credentials(uri)


def resolve_experiment(config_name: str | None) -> str:
    """The experiment of a job: config, then environment, then ``repq``."""
    return config_name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def _probe_request(uri: str) -> urllib.request.Request:
    """An authenticated read of the server (MLflow's own credentials variables)."""
    query = urllib.parse.urlencode({"experiment_name": DEFAULT_EXPERIMENT})
    request = urllib.request.Request(
        f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?{query}"
    )
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if user is not None:
        secret = f"{user}:{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}"
        request.add_header("Authorization", f"Basic {base64.b64encode(secret.encode()).decode()}")
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        request.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
    return request


def _check_server(uri: str, timeout: float) -> None:
    """Tell an unreachable server from one that refuses this job's credentials."""
    try:
        with urllib.request.urlopen(_probe_request(uri), timeout=timeout):
            return
    except urllib.error.HTTPError as err:
        if err.code == 401:
            raise TrackingError(
                f"MLflow tracking server {uri} refused the job: wrong or missing credentials "
                "(set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)"
            ) from err
        if err.code == 403:
            user = os.environ.get("MLFLOW_TRACKING_USERNAME")
            raise TrackingError(
                f"MLflow tracking server {uri} refused the job: user {user!r} has no permission"
            ) from err
        if err.code >= 500:
            raise TrackingError(f"MLflow tracking server {uri} answered HTTP {err.code}") from err
        return  # 404: the server answers, the experiment does not exist yet
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(f"MLflow tracking server {uri} is unreachable: {reason}") from err


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast if a server URI does not answer or refuses the job's credentials, or a
    SQLite folder cannot be made."""
    if uri.startswith(("http://", "https://")):
        _check_server(uri, timeout)
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TrackingError(f"cannot create the folder of tracking store {uri}: {err}") from err


def artifact_location(uri: str, artifacts: str | None) -> str | None:
    """``artifacts`` if given; beside the database for SQLite; else the server's choice."""
    if artifacts:
        return Path(artifacts).resolve().as_uri()
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///"))
        return (database.parent / ARTIFACTS_BESIDE_STORE).resolve().as_uri()
    return None


EXPERIMENT_DESCRIPTION = (
    "repq: FP training, post-training quantization and QAT (Merged LSQ, RepQ, RepQ-BNest) of "
    "re-parametrized networks, one run per job, nested under a run per architecture, variant "
    "and seed (unfold it to see its jobs). Runs carry the tags architecture, variant (base, "
    "or the ablation variant whose overrides the run has), stage, method, bits, seed, job "
    "(train, evaluate, export, report; group for a parent) and pipeline (one workflow "
    "invocation). Export runs hold the integer ONNX models, registered one registered model "
    "per architecture and stage; the tables are in the report run's artefacts."
)


@contextmanager
def serialized(uri: str) -> Iterator[None]:
    """One process at a time creates a SQLite store's tables or an experiment in it (a
    file lock beside the database): jobs started at once on a new store all open it."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    database = Path(uri.removeprefix("sqlite:///"))
    with locked(database.with_name(database.name + ".lock")):
        yield


def open_client(uri: str):
    """An MLflow client of ``uri`` whose store exists (a new SQLite store's tracking and
    registry tables are made here, under :func:`serialized`)."""
    from mlflow.tracking import MlflowClient

    with serialized(uri):  # making the client makes the store's tables
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)
        client.search_registered_models(max_results=1)
    return client


def experiment_id(client, uri: str, name: str, artifacts: str | None, tags=None) -> str:
    """The id of experiment ``name``, created (with ``tags``) if missing; of two jobs
    that create it at once, the second takes the first's."""
    from mlflow.exceptions import MlflowException

    with serialized(uri):
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = artifact_location(uri, artifacts)
        try:
            return client.create_experiment(name, artifact_location=location, tags=tags)
        except MlflowException as err:  # a server where another job created it just now
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return client.get_experiment_by_name(name).experiment_id


def ensure_experiment(uri: str, name: str, artifacts: str | None = None) -> str:
    """Create the tracking store (if SQLite) and the experiment, with its description
    (the UI's ``mlflow.note.content``); returns its id."""
    import mlflow

    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    tags = {"mlflow.note.content": EXPERIMENT_DESCRIPTION}
    return experiment_id(open_client(uri), uri, name, artifacts, tags)


def runs_url(uri: str, experiment_id: str, ui: str = "http://127.0.0.1:5000") -> str:
    """The UI page of an experiment's runs table: on the server itself, or on ``mlflow
    ui`` (``ui``) for a SQLite store."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else ui
    return f"{base}/#/experiments/{experiment_id}/runs"


def bound_http_retries(uri: str) -> None:
    """Bound each attempt of the MLflow client against a server (2 retries, 15 s each,
    unless the environment says otherwise): the journal's courier does the waiting."""
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")


@dataclass
class Store:
    """Where a journal is delivered: a tracking URI and an experiment name."""

    uri: str
    experiment: str
    artifacts: str | None = None

    def client(self):
        return open_client(self.uri)

    def experiment_id(self, client) -> str:
        return experiment_id(client, self.uri, self.experiment, self.artifacts)
