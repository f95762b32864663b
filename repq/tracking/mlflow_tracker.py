"""MLflow runs for repq jobs: their names and tags, and the :class:`Tracker` a job logs
through (journaled in the job's folder, delivered by :mod:`repq.tracking.delivery` to
the store :mod:`repq.tracking.store` resolves)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from repq.errors import TrackingError, TrackingUndelivered, first_line
from repq.tracking.delivery import Courier
from repq.tracking.journal import Journal, bind_store, new_run_key
from repq.tracking.store import (
    Store,
    bound_http_retries,
    check_reachable,
    ensure_experiment,
    resolve_experiment,
    resolve_uri,
)
from repq.vocab import BASE_VARIANT, Stage


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
