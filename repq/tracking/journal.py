"""Tracking written locally first, delivered to MLflow when it can be.

Every tracking call of a job is appended to a journal in the job's folder (JSON lines,
flushed and fsynced: a killed job loses nothing it logged) and delivered to the
tracking store by a background thread (:mod:`repq.tracking.delivery`), so a slow or
absent server never stalls training. What could not be delivered stays in the journal;
the job's end, a restarted job or ``repq tracking-sync`` delivers it later. Which
records reached the store, and the store's run id of each journal run, live in a state
file beside the journal, replaced atomically after every record.

Records (``op``): ``run`` (a new run: name, tags, start time and the parent it nests
under), ``params``, ``metrics`` (with step and time), ``tags``, ``input`` (a data set:
name, source, digest, use), ``artifact`` (a file's path, read when delivered), ``model``
(an ONNX file to log and register) and ``status`` (``RUNNING`` when a job resumes a run;
``FINISHED``, ``FAILED`` or ``KILLED`` at its end).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from repq.errors import ConfigError
from repq.files import atomic_write, locked
from repq.tracking.store import Store

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
        with locked(self.lock_path):
            yield


def new_run_key() -> str:
    return uuid.uuid4().hex


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


def journals_under(folders: list[Path]) -> list[Journal]:
    """Every tracking journal under ``folders`` (a journal file itself is accepted too)."""
    paths: set[Path] = set()
    for folder in folders:
        if folder.is_file():
            paths.add(folder)
        else:
            paths.update(folder.rglob("*tracking.jsonl"))
    return [Journal(p) for p in sorted(paths)]
