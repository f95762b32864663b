"""Tracking written locally first, delivered to MLflow when it can be.

Every tracking call of a job is appended to a journal in the job's folder (JSON lines,
flushed and fsynced: a killed job loses nothing it logged) and delivered to the
tracking store by a background thread, so a slow or absent server never stalls
training. What could not be delivered stays in the journal; the job's end, a restarted
job or ``repq tracking-sync`` delivers it later. Which records reached the store, and
the store's run id of each journal run, live in a state file beside the journal,
replaced atomically after every record.

Records (``op``): ``run`` (a new run: name, tags and start time), ``params``, ``metrics``
(with step and time), ``artifact`` (a file's path, read when delivered) and ``status``
(``RUNNING`` when a job resumes a run; ``FINISHED``, ``FAILED`` or ``KILLED`` at its end).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from repq.errors import ConfigError, TrackingUndelivered, first_line
from repq.files import atomic_write

log = logging.getLogger("repq")

TERMINAL = ("FINISHED", "FAILED", "KILLED")


class Journal:
    """An append-only record of a job's tracking calls, and how far it was delivered."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.state_path = self.path.with_name(self.path.name + ".state")
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    def append(self, op: str, **fields: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps({"op": op, **fields}, default=str) + "\n").encode()
        with open(self.path, "a+b") as f:
            if f.tell() > 0:  # a line cut short by a kill must not swallow this one
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = b"\n" + line
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def records(self) -> list[dict]:
        """Every complete record (a line cut short by a kill is left out)."""
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def state(self) -> dict:
        if not self.state_path.exists():
            return {"delivered": 0, "runs": {}}
        return json.loads(self.state_path.read_text())

    def save_state(self, state: dict) -> None:
        atomic_write(self.state_path, lambda tmp: Path(tmp).write_text(json.dumps(state)))

    def open_runs(self) -> list[str]:
        """Keys of the journal's runs that have no terminal status yet."""
        status: dict[str, str] = {}
        for record in self.records():
            if record["op"] == "run":
                status[record["key"]] = "RUNNING"
            elif record["op"] == "status":
                status[record["key"]] = record["status"]
        return [key for key, value in status.items() if value not in TERMINAL]

    def knows(self, key: str) -> bool:
        """Whether ``key`` is a run of this journal for its current store."""
        state = self.state()
        if key in state["runs"]:
            return True
        pending = self.records()[state["delivered"] :]
        return any(r["op"] == "run" and r["key"] == key for r in pending)

    def pending(self) -> int:
        """How many records have not reached the store."""
        return len(self.records()) - self.state()["delivered"]

    @contextmanager
    def delivering(self) -> Iterator[None]:
        """Hold the journal's delivery lock (a job and ``tracking-sync`` never both
        deliver the same records)."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def new_run_key() -> str:
    return uuid.uuid4().hex


@dataclass
class Store:
    """Where a journal is delivered: a tracking URI and an experiment name."""

    uri: str
    experiment: str
    artifacts: str | None = None

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.uri)


def bind_store(journal: Journal, store: Store) -> None:
    """Record the store a journal is delivered to; a journal bound to another store with
    records still pending is refused (they would reach the wrong store)."""
    with journal.delivering():
        state = journal.state()
        bound = state.get("store")
        if bound == asdict(store):
            return
        if bound is not None and len(journal.records()) > state["delivered"]:
            raise ConfigError(
                f"tracking journal {journal.path} has records for {bound['uri']} "
                f"(experiment {bound['experiment']}) not yet delivered; this job logs to "
                f"{store.uri}: deliver them (`repq tracking-sync`) or remove the journal"
            )
        delivered = len(journal.records())
        journal.save_state({"store": asdict(store), "delivered": delivered, "runs": {}})


def stored_store(journal: Journal) -> Store:
    """The store a journal was bound to by its job."""
    bound = journal.state().get("store")
    if bound is None:
        raise ConfigError(f"tracking journal {journal.path} names no tracking store")
    return Store(**bound)


def _experiment_id(client, store: Store) -> str:
    from repq.tracking.mlflow_tracker import artifact_location

    experiment = client.get_experiment_by_name(store.experiment)
    if experiment is not None:
        return experiment.experiment_id
    location = artifact_location(store.uri, store.artifacts)
    return client.create_experiment(store.experiment, artifact_location=location)


def _send(client, store: Store, record: dict, runs: dict[str, str]) -> None:
    """Perform one record's call against the store."""
    from mlflow.entities import Metric, Param

    op, key = record["op"], record["key"]
    if op == "run":
        experiment_id = _experiment_id(client, store)
        run = client.create_run(
            experiment_id,
            run_name=record["name"],
            tags=record["tags"],
            start_time=record.get("time"),  # when the job started it, not when delivered
        )
        runs[key] = run.info.run_id
        return
    run_id = runs.get(key)
    if run_id is None:  # its run went to a store this journal is no longer bound to
        log.warning("tracking record of unknown run %s skipped", key)
        return
    if op == "params":
        items = [Param(k, str(v)[:6000]) for k, v in record["params"].items()]
        for i in range(0, len(items), 100):
            client.log_batch(run_id, params=items[i : i + 100])
    elif op == "metrics":
        step, stamp = record["step"], record["time"]
        batch = [Metric(k, float(v), stamp, step) for k, v in record["metrics"].items()]
        client.log_batch(run_id, metrics=batch)
    elif op == "artifact":
        if Path(record["path"]).exists():
            client.log_artifact(run_id, record["path"], record.get("folder"))
    elif op == "status":
        if record["status"] == "RUNNING":
            client.update_run(run_id, status="RUNNING")
        else:
            client.set_terminated(run_id, record["status"], end_time=record.get("time"))


def deliver(journal: Journal, store: Store) -> int:
    """Deliver the journal's pending records in order, saving progress after each;
    returns how many were delivered. An error of the store is raised after the records
    before it are saved as delivered."""
    with journal.delivering():
        state = journal.state()
        records = journal.records()[state["delivered"] :]
        if not records:
            return 0
        client = store.client()
        for record in records:
            _send(client, store, record, state["runs"])
            state["delivered"] += 1
            journal.save_state(state)
        return len(records)


class Courier:
    """Delivers a journal in a background thread, retrying with a capped back-off."""

    def __init__(self, journal: Journal, store: Store, max_backoff: float = 30.0) -> None:
        self.journal, self.store, self.max_backoff = journal, store, max_backoff
        self.error: BaseException | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="repq-tracking", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        backoff = 1.0
        while True:
            self._wake.wait(timeout=backoff if self.error else None)
            self._wake.clear()
            try:
                deliver(self.journal, self.store)
                self.error, backoff = None, 1.0
            except Exception as err:  # any store failure is retried
                self.error, backoff = err, min(backoff * 2, self.max_backoff)
            if self._stop.is_set():
                if self.journal.pending() == 0 or time.monotonic() >= self._deadline:
                    return
                if self.error is None:  # records appended while delivering
                    self._wake.set()

    def notify(self) -> None:
        """New records were appended."""
        self._wake.set()

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every record to be delivered."""
        deadline = time.monotonic() + timeout
        self.notify()
        while time.monotonic() < deadline:
            if self.journal.pending() == 0:
                return True
            time.sleep(0.05)
        return self.journal.pending() == 0

    def close(self, timeout: float) -> bool:
        """Deliver what is left within ``timeout`` seconds, then stop; returns whether
        everything was delivered (an undelivered rest stays in the journal)."""
        self._deadline = time.monotonic() + timeout
        self._stop.set()
        delivered = self.flush(timeout)
        self._wake.set()
        return delivered


def journals_under(folders: list[Path]) -> list[Journal]:
    """Every tracking journal under ``folders`` (a journal file itself is accepted too)."""
    paths: set[Path] = set()
    for folder in folders:
        if folder.is_file():
            paths.add(folder)
        else:
            paths.update(folder.rglob("*tracking.jsonl"))
    return [Journal(p) for p in sorted(paths)]


def sync_journals(folders: list[Path]) -> None:
    """Deliver every journal's pending records (``repq tracking-sync``); one line per
    journal delivered or failed, and :class:`TrackingUndelivered` if any remain."""
    from repq.tracking.mlflow_tracker import bound_http_retries

    journals = journals_under(folders)
    failed = []
    for journal in journals:
        if journal.pending() == 0:
            continue
        store = stored_store(journal)
        bound_http_retries(store.uri)
        try:
            count = deliver(journal, store)
            print(f"{journal.path}: {count} records delivered to {store.uri}")
        except Exception as err:  # reported, then the next journal
            failed.append(journal)
            print(f"{journal.path}: {journal.pending()} records not delivered: {first_line(err)}")
    if failed:
        pending = sum(j.pending() for j in failed)
        raise TrackingUndelivered(
            f"{pending} tracking records of {len(failed)} journals still undelivered"
        )
    print(f"{len(journals)} tracking journals under {', '.join(map(str, folders))}: all delivered")
