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

import base64
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from repq.errors import TrackingError, TrackingUndelivered, first_line
from repq.tracking.journal import (
    Courier,
    Journal,
    Store,
    bind_store,
    new_run_key,
)
from repq.vocab import BASE_VARIANT, Stage

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
    "re-parametrized networks, one run per job. Runs carry the tags architecture, variant "
    "(base, or the ablation variant whose overrides the run has), stage, method, bits, seed, "
    "job (train, evaluate, export, report) and pipeline (one workflow invocation); the "
    "tables are in the report run's artefacts."
)


def ensure_experiment(uri: str, name: str, artifacts: str | None = None) -> str:
    """Create the tracking store (if SQLite) and the experiment, with its description
    (the UI's ``mlflow.note.content``); returns its id."""
    import mlflow
    from mlflow.tracking import MlflowClient

    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(
        name,
        artifact_location=artifact_location(uri, artifacts),
        tags={"mlflow.note.content": EXPERIMENT_DESCRIPTION},
    )


def runs_url(uri: str, experiment_id: str, ui: str = "http://127.0.0.1:5000") -> str:
    """The UI page of an experiment's runs table: on the server itself, or on ``mlflow
    ui`` (``ui``) for a SQLite store."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else ui
    return f"{base}/#/experiments/{experiment_id}/runs"


def git_commit() -> str:
    """The current git commit of the working directory, or ``unknown``."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_variant(config: dict) -> str:
    """The workflow variant a job belongs to (``tracking.variant``, default the base)."""
    return config.get("tracking", {}).get("variant") or BASE_VARIANT


def run_name(config: dict, label: str) -> str:
    """A run's name: ``<architecture>/<label>``, with the variant between the two where
    it is not the base (``repvgg_a0/lr_x3/qat-repq-4``)."""
    variant = run_variant(config)
    middle = "" if variant == BASE_VARIANT else f"{variant}/"
    return f"{config['model']['name']}/{middle}{label}"


def run_tags(config: dict, stage: Stage, job: str) -> dict[str, str]:
    """The tags of a job's run: architecture, task, variant, stage, method, bits, seed,
    commit, job."""
    return {
        "architecture": config["model"]["name"],
        "variant": run_variant(config),
        "task": config["task"],
        "stage": str(stage),
        "method": stage.method or stage.name,
        "bits": str(stage.bit_width),
        "seed": str(config["train"].get("seed", 0)),
        "git_commit": git_commit(),
        "job": job,
    }


DELIVERY_MODES = ("live", "deferred")


def delivery_mode(config_mode: str | None) -> str:
    """``tracking.delivery``, else ``$REPQ_TRACKING_DELIVERY``, else ``live``."""
    mode = config_mode or os.environ.get("REPQ_TRACKING_DELIVERY") or "live"
    if mode not in DELIVERY_MODES:
        raise TrackingError(f"tracking delivery {mode!r} is not one of {DELIVERY_MODES}")
    return mode


def bound_http_retries(uri: str) -> None:
    """Bound each attempt of the MLflow client against a server (2 retries, 15 s each,
    unless the environment says otherwise): the journal's courier does the waiting."""
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")


class Tracker:
    """A job's MLflow runs, journaled in ``journal`` and delivered in the background
    (:mod:`repq.tracking.journal`); every method is a no-op when ``enabled`` is false
    (rank > 0). ``tracking.flush_timeout`` (seconds, default 60) bounds the wait for
    delivery at the end of a job.

    ``tracking.delivery`` (else ``$REPQ_TRACKING_DELIVERY``, else ``live``): ``live``
    delivers while the job runs; ``deferred`` only journals, so the job never imports
    MLflow (live tracking cost a demo QAT job 5.0 of 20.4 CPU seconds, of which 0.11
    delivering its records), and ``repq tracking-sync`` delivers later (the workflow's
    ``tables`` job does, for every job at once)."""

    def __init__(self, tracking: dict[str, Any], journal: str | Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.key: str | None = None
        if not enabled:
            return
        uri = resolve_uri(tracking.get("uri"))
        experiment = resolve_experiment(tracking.get("experiment"))
        self.store = Store(uri, experiment, tracking.get("artifacts"))
        self.group = tracking.get("group") or os.environ.get("REPQ_PIPELINE")
        self.flush_timeout = float(tracking.get("flush_timeout", 60))
        self.deferred = delivery_mode(tracking.get("delivery")) == "deferred"
        bound_http_retries(uri)
        if self.deferred:
            check_reachable(uri)
        else:
            ensure_experiment(uri, self.store.experiment, self.store.artifacts)
        self.journal = Journal(journal)
        bind_store(self.journal, self.store)
        self.courier = None if self.deferred else Courier(self.journal, self.store)

    @property
    def run_id(self) -> str | None:
        """The store's id of the current run, once it has been delivered."""
        if not self.enabled or self.key is None:
            return None
        return self.journal.state()["runs"].get(self.key)

    def _append(self, op: str, **fields: Any) -> None:
        self.journal.append(op, key=self.key, **fields)
        if self.courier is not None:
            self.courier.notify()

    def _end_stale_runs(self, keep: str | None = None) -> None:
        """End the journal's runs left open by a killed process (status ``KILLED``)."""
        for key in self.journal.open_runs():
            if key != keep:
                self.journal.append("status", key=key, status="KILLED", time=now_ms())

    def start(
        self,
        run_name: str,
        tags: dict[str, str],
        params: dict[str, Any],
        started: int | None = None,
    ) -> str | None:
        """Open a new run that started at ``started`` (ms since the epoch, default now);
        returns its journal key (what a resumed job passes back)."""
        if not self.enabled:
            return None
        self._end_stale_runs()
        if self.group:
            tags = {**tags, "pipeline": self.group}
        self.key = new_run_key()
        self._append("run", name=run_name, tags=tags, time=started or now_ms())
        self._append("params", params={k: str(v) for k, v in params.items()})
        return self.key

    def resume(self, key: str) -> bool:
        """Continue a run of this journal (a resumed job logs into the run it started);
        false if the journal does not know the run (it was bound to another store)."""
        if not self.enabled:
            return True
        if not self.journal.knows(key):
            return False
        self._end_stale_runs(keep=key)
        self.key = key
        self._append("status", status="RUNNING", time=now_ms())
        return True

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.enabled and self.key is not None:
            values = {k: float(v) for k, v in metrics.items()}
            self._append("metrics", metrics=values, step=step, time=now_ms())

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        if self.enabled and self.key is not None:
            self._append("artifact", path=str(Path(path).resolve()), folder=folder)

    def finish(self, status: str = "FINISHED") -> None:
        """End the current run (journaled; delivered in the background)."""
        if self.enabled and self.key is not None:
            self._append("status", status=status, time=now_ms())
            self.key = None

    def flush(self, timeout: float | None = None) -> bool:
        """Wait (at most ``timeout``, default the flush timeout) for delivery."""
        if not self.enabled or self.deferred:
            return True
        return self.courier.flush(self.flush_timeout if timeout is None else timeout)

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is left (bounded wait) and stop the courier; raises
        :class:`TrackingUndelivered` if records remain in the journal (never when
        delivery is deferred)."""
        if not self.enabled or self.deferred:
            return
        wait = self.flush_timeout if timeout is None else timeout
        if self.courier.close(wait):
            return
        raise TrackingUndelivered(
            f"{self.journal.pending()} tracking records not delivered to {self.store.uri} "
            f"({_reason(self.courier.error)}); they are kept in {self.journal.path}: "
            f"`repq tracking-sync {self.journal.path.parent}` delivers them"
        )


def now_ms() -> int:
    """Now, in milliseconds since the epoch (MLflow's timestamps)."""
    return int(time.time() * 1000)


def _reason(error: BaseException | None) -> str:
    return "no answer in time" if error is None else first_line(error)
