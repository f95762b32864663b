"""Delivery of tracking journals to their store: record by record, saving progress
after each (a journal is never delivered twice), in a background thread while a job runs
(:class:`Courier`) or all at once (``repq tracking-sync``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from repq.errors import TrackingUndelivered, first_line
from repq.tracking.journal import Journal, journals_under, stored_store
from repq.tracking.registry import register_model
from repq.tracking.store import Store, bound_http_retries, serialized

log = logging.getLogger("repq")


PARENT_TAG = "mlflow.parentRunId"
CREATED_TAG = "repq.created_ns"
"""When delivery created a parent run (ns): of jobs that created the same parent at
once, all nest under the earliest and the others' are deleted."""

ELECTION_WAIT = 1.0
"""Seconds a job waits after creating a parent on a server before it looks which one
won: every parent created at the same time is then visible to each job, so all elect
the same one (a SQLite store needs no wait: its lock lets one job at a time in)."""


def _find_parent(client, experiment_id: str, parent: dict) -> list:
    """The live parent runs with ``parent``'s tags, earliest created first."""
    tags = {k: v for k, v in parent["tags"].items() if not k.startswith("mlflow.")}
    terms = [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
    found = client.search_runs([experiment_id], " and ".join(terms), max_results=100)
    return sorted(found, key=lambda r: (int(r.data.tags.get(CREATED_TAG, 0)), r.info.run_id))


def _parent_id(client, experiment_id: str, parent: dict, started: int | None, wait: float) -> str:
    """The run of a job's group, created (starting with this job) where it is missing;
    ``wait``: seconds between creating one and electing the earliest."""
    found = _find_parent(client, experiment_id, parent)
    if found:
        return found[0].info.run_id
    tags = {**parent["tags"], CREATED_TAG: str(time.time_ns())}
    own = client.create_run(experiment_id, started, tags, run_name=parent["name"])
    time.sleep(wait)
    winner = _find_parent(client, experiment_id, parent)[0].info.run_id
    if winner != own.info.run_id:
        client.delete_run(own.info.run_id)
    return winner


def _settle_parent(client, store: Store, experiment_id: str, parent_id: str) -> None:
    """A parent runs while one of its jobs runs, and ends at the latest end of its jobs
    (computed from the jobs, so that two jobs ending at once cannot lose one's end; a
    SQLite store is settled by one process at a time)."""
    children = f"tags.`{PARENT_TAG}` = '{parent_id}'"
    with serialized(store.uri):
        running = client.search_runs(
            [experiment_id], f"{children} and attributes.status = 'RUNNING'", max_results=1
        )
        if running:
            client.update_run(parent_id, status="RUNNING")
            return
        (last,) = client.search_runs(
            [experiment_id], children, order_by=["attributes.end_time DESC"], max_results=1
        )
        client.set_terminated(parent_id, "FINISHED", end_time=last.info.end_time)


def _open_run(client, store: Store, record: dict) -> str:
    """Create a job's run (from its job's start, not its delivery) under its parent."""
    experiment_id = store.experiment_id(client)
    tags = dict(record["tags"])
    if record.get("parent"):
        wait = 0.0 if store.uri.startswith("sqlite:///") else ELECTION_WAIT
        with serialized(store.uri):
            parent = _parent_id(client, experiment_id, record["parent"], record.get("time"), wait)
        tags[PARENT_TAG] = parent
    run = client.create_run(
        experiment_id, run_name=record["name"], tags=tags, start_time=record.get("time")
    )
    if PARENT_TAG in tags:
        _settle_parent(client, store, experiment_id, tags[PARENT_TAG])
    return run.info.run_id


def _log_input(client, run_id: str, record: dict) -> None:
    """A data set as the run's MLflow dataset input, with its use as context."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    profile = json.dumps({"num_files": record["files"]})
    dataset = Dataset(record["name"], record["digest"], "local", record["source"], None, profile)
    context = InputTag("mlflow.data.context", record["context"])
    client.log_inputs(run_id, [DatasetInput(dataset, [context])])


def _send(client, store: Store, record: dict, runs: dict[str, str]) -> None:
    """Perform one record's call against the store."""
    from mlflow.entities import Metric, Param

    op, key = record["op"], record["key"]
    if op == "run":
        runs[key] = _open_run(client, store, record)
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
    elif op == "tags":
        for name, value in record["tags"].items():
            client.set_tag(run_id, name, value)
    elif op == "input":
        _log_input(client, run_id, record)
    elif op == "model":
        register_model(client, store.uri, run_id, record)
    elif op == "artifact":
        if Path(record["path"]).exists():
            client.log_artifact(run_id, record["path"], record.get("folder"))
    elif op == "status":
        if record["status"] == "RUNNING":
            client.update_run(run_id, status="RUNNING")
        else:
            client.set_terminated(run_id, record["status"], end_time=record.get("time"))
        run = client.get_run(run_id)
        if PARENT_TAG in run.data.tags:
            _settle_parent(client, store, run.info.experiment_id, run.data.tags[PARENT_TAG])


def deliver(journal: Journal, store: Store, client=None) -> int:
    """Deliver the journal's pending records in order (through ``client``, default a
    new one of ``store``), saving progress after each; returns how many were
    delivered. An error of the store is raised after the records before it are saved as
    delivered."""
    with journal.delivering():
        state = journal.state()
        records = journal.records()[state["delivered"] :]
        if not records:
            return 0
        client = client or store.client()
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


def _first_start(journal: Journal) -> int:
    """When a journal's first run started: journals are delivered in that order, so that
    a group's parent run starts with its earliest job."""
    starts = [r.get("time") or 0 for r in journal.records() if r["op"] == "run"]
    return min(starts, default=0)


def sync_journals(folders: list[Path]) -> None:
    """Deliver every journal's pending records (``repq tracking-sync``); one line per
    journal delivered or failed, and :class:`TrackingUndelivered` if any remain."""
    journals = sorted(journals_under(folders), key=_first_start)
    clients: dict[str, object] = {}  # one per store: opening one costs 0.1 s
    failed = []
    for journal in journals:
        if journal.pending() == 0:
            continue
        store = stored_store(journal)
        bound_http_retries(store.uri)
        try:
            client = clients.get(store.uri) or clients.setdefault(store.uri, store.client())
            count = deliver(journal, store, client)
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
