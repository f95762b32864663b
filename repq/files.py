"""Atomic file writes and file locks (torch-free: the engine's checkpoints and the
tracking journal's state share them)."""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from repq.errors import ConfigError

WRITER_LOCK = ".repq.lock"
"""The lock file a job holds in each folder it writes (it holds the job's PID)."""


@contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (made if missing) while the block
    runs; another process that asks waits."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` and move the result onto ``path`` in one rename, so that
    ``path`` always holds either the old or the new complete file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def sole_writer(folder: str | Path) -> Iterator[None]:
    """Be the only process writing ``folder`` while the block runs (an exclusive
    ``flock`` of its :data:`WRITER_LOCK`); a second job is refused in one line that
    names the holder's PID. The kernel drops the lock of a killed process, so a rerun
    after ``SIGKILL`` takes the folder over."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / WRITER_LOCK, "a+")  # noqa: SIM115 - held for the block
    except OSError as err:  # a file where the folder or one above it should be
        raise ConfigError(f"cannot write the folder {folder}: {err.strerror}") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise ConfigError(
                f"{folder} is being written by another job (PID {holder}): wait for it to "
                "end, or give this job another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock
