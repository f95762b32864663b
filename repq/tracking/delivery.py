"""Delivery of tracking journals to their store: record by record, saving progress
after each (a journal is never delivered twice), in a background thread while a job runs
(:class:`Courier`) or all at once (``repq tracking-sync``).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from repq.errors import TrackingUndelivered, first_line
from repq.tracking.journal import Journal, journals_under, stored_store
from repq.tracking.store import Store, artifact_location, bound_http_retries

log = logging.getLogger("repq")


def _experiment_id(client, store: Store) -> str:
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


def sync_journals(folders: list[Path]) -> None:
    """Deliver every journal's pending records (``repq tracking-sync``); one line per
    journal delivered or failed, and :class:`TrackingUndelivered` if any remain."""
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
