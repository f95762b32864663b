"""MLflow runs for repq jobs: their names and tags, and the :class:`Tracker` a job logs
through (journaled in the job's folder, delivered by :mod:`repq.tracking.delivery` to
the store :mod:`repq.tracking.store` resolves)."""

from __future__ import annotations

import functools
import getpass
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repq.errors import TrackingError, TrackingUndelivered, first_line
from repq.tracking.delivery import Courier
from repq.tracking.journal import Journal, bind_store, new_run_key
from repq.tracking.store import (
    Store,
    bound_http_retries,
    check_reachable,
    ensure_experiment,
    now_ms,
    resolve_experiment,
    resolve_uri,
)
from repq.vocab import BASE_VARIANT, Stage

if TYPE_CHECKING:
    from repq.data.identity import DataRef

GROUP_JOB = "group"
"""The ``job`` tag of a parent run: the group of one architecture, variant and seed."""


@functools.cache
def git_commit() -> str | None:
    """The git commit of the working directory, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


SOURCES = {
    "train": "repq train",
    "evaluate": "repq evaluate",
    "export": "repq export",
    "report": "repq report tables",
    GROUP_JOB: "repq workflow",
}
"""The command behind each ``job`` tag: MLflow's ``mlflow.source.name`` of its runs."""


def source_tags(job: str) -> dict[str, str]:
    """MLflow's own source fields (the UI's Source and Version columns): the command,
    its kind (a local process), the git commit and the user."""
    tags = {
        "mlflow.source.name": SOURCES[job],
        "mlflow.source.type": "LOCAL",
        "mlflow.user": getpass.getuser(),
    }
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def run_variant(config: dict) -> str:
    """The workflow variant a job belongs to (``tracking.variant``, default the base)."""
    return config.get("tracking", {}).get("variant") or BASE_VARIANT


def run_name(config: dict, label: str) -> str:
    """A run's name: ``<architecture>/<label>``, with the variant between the two where
    it is not the base (``repvgg_a0/lr_x3/qat-repq-4``)."""
    variant = run_variant(config)
    middle = "" if variant == BASE_VARIANT else f"{variant}/"
    return f"{config['model']['name']}/{middle}{label}"


def group_tags(config: dict) -> dict[str, str]:
    """The tags a job's run shares with its parent: architecture, variant, task, seed."""
    return {
        "architecture": config["model"]["name"],
        "variant": run_variant(config),
        "task": config["task"],
        "seed": str(config["train"].get("seed", 0)),
    }


def stage_tags(config: dict, stage: Stage) -> dict[str, str]:
    """What a stage's run is: its group's tags, and stage, method and bits (also the
    tags of its registered model version)."""
    return {
        **group_tags(config),
        "stage": str(stage),
        "method": stage.method or stage.name,
        "bits": str(stage.bit_width),
    }


def run_tags(config: dict, stage: Stage, job: str) -> dict[str, str]:
    """The tags of a job's run: :func:`stage_tags`, the job and MLflow's source fields."""
    return {**stage_tags(config, stage), "job": job, **source_tags(job)}


@dataclass(frozen=True)
class RunSpec:
    """A run to open: its name, its tags and the parent run it nests under (a name and
    the tags that find it, or None for a top-level run)."""

    name: str
    tags: dict[str, str]
    parent: dict | None = None


def stage_run(config: dict, stage: Stage, job: str, label: str) -> RunSpec:
    """The run of one stage's job (``label``: ``qat-repq-4``, ``eval-fp``), nested under
    the run of its architecture, variant and seed (``repvgg_a0/seed0``): the UI's tree
    is the workflow's shape."""
    seed = config["train"].get("seed", 0)
    description = (
        f"Every job of {config['model']['name']} (variant {run_variant(config)}) at seed "
        f"{seed}: training, post-training quantization, QAT, evaluation and export. It "
        "starts with its first job's run and ends with its last."
    )
    parent_tags = {
        **group_tags(config),
        "job": GROUP_JOB,
        **source_tags(GROUP_JOB),
        "mlflow.note.content": description,
    }
    parent = {"name": run_name(config, f"seed{seed}"), "tags": parent_tags}
    return RunSpec(run_name(config, label), run_tags(config, stage, job), parent)


def registered_model_name(experiment: str, config: dict, stage: Stage) -> str:
    """The registered model of an exported stage: ``<MLflow experiment>.<architecture>
    [.<variant>].<stage>`` (``repq-demo.repvgg_a0.qat-repq-4``); its versions are the
    seeds' models."""
    variant = run_variant(config)
    middle = "" if variant == BASE_VARIANT else f".{variant}"
    return f"{experiment}.{config['model']['name']}{middle}.{stage}"


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
        self.bound = False  # the journal's folder is touched by the first run, not before
        self.courier = None if self.deferred else Courier(self.journal, self.store)

    @property
    def run_id(self) -> str | None:
        """The store's id of the current run, once it has been delivered."""
        if not self.enabled or self.key is None:
            return None
        return self.journal.state()["runs"].get(self.key)

    def registered_name(self, config: dict, stage: Stage) -> str:
        """The registered model of ``stage``'s exported file in this tracker's store."""
        return registered_model_name(self.store.experiment, config, stage)

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
        self, spec: RunSpec, params: dict[str, Any], started: int | None = None
    ) -> str | None:
        """Open a new run that started at ``started`` (ms since the epoch, default now),
        nested under ``spec.parent``; returns its journal key (what a resumed job passes
        back)."""
        if not self.enabled:
            return None
        self._bind()
        self._end_stale_runs()
        tags = {**spec.tags, "pipeline": self.group} if self.group else spec.tags
        self.key = new_run_key()
        self._append("run", name=spec.name, tags=tags, parent=spec.parent, time=started or now_ms())
        self._append("params", params={k: str(v) for k, v in params.items()})
        return self.key

    def resume(self, key: str) -> bool:
        """Continue a run of this journal (a resumed job logs into the run it started, which
        keeps its first start; the tag ``resumed`` counts the restarts); false if the
        journal does not know the run (it was bound to another store)."""
        if not self.enabled:
            return True
        self._bind()
        if not self.journal.knows(key):
            return False
        self._end_stale_runs(keep=key)
        self.key = key
        restarts = sum(r["op"] == "status" and r["status"] == "RUNNING" for r in self._own())
        self._append("status", status="RUNNING", time=now_ms())
        self._append("tags", tags={"resumed": str(restarts + 1)})
        return True

    def _bind(self) -> None:
        """Bind the journal to this tracker's store (:func:`bind_store`), once."""
        if not self.bound:
            bind_store(self.journal, self.store)
            self.bound = True

    def _own(self) -> list[dict]:
        return [r for r in self.journal.records() if r.get("key") == self.key]

    def log_input(self, data: DataRef) -> None:
        """A data set the run read (MLflow's dataset input: name, digest, source)."""
        if self.enabled and self.key is not None:
            self._append("input", **asdict(data))

    def log_model(self, path: str | Path, example: str | Path, name: str, tags: dict) -> None:
        """An ONNX file as the run's MLflow model (``example``: an ``.npz`` of an input
        and the file's output on it, the signature and input example), registered as a
        new version of the registered model ``name`` with ``tags``."""
        if self.enabled and self.key is not None:
            self._append(
                "model",
                path=str(Path(path).resolve()),
                example=str(Path(example).resolve()),
                registered=name,
                tags={k: str(v) for k, v in tags.items()},
            )

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


def _reason(error: BaseException | None) -> str:
    return "no answer in time" if error is None else first_line(error)
