"""The errors a ``repq`` command stops with: each names the problem in one line, and
the command line turns every :class:`RepqError` into ``repq <command>: error: ...`` and
exit status 2 (3 when only tracking is left undelivered). Torch-free."""


class RepqError(Exception):
    """Base of every clear error of this package."""

    exit_status = 2


class ConfigError(RepqError, ValueError):
    """A configuration file, override or option is wrong; the message names the key."""


class DataError(RepqError, RuntimeError):
    """A dataset is missing, empty or unreadable."""


class CheckpointError(RepqError, RuntimeError):
    """A checkpoint is missing, corrupt or of the wrong kind; the message names it."""


class UnsupportedBlock(RepqError, TypeError):
    """A module looks re-parametrizable but cannot be presented as one merged kernel;
    the message names the module and its type."""


class TrainingDiverged(RepqError, RuntimeError):
    """The loss became NaN or infinite."""


class TrackingError(RepqError, RuntimeError):
    """The tracking store cannot be used; the message names the URI."""


class TrackingUndelivered(TrackingError):
    """A job's outputs are written but some tracking records did not reach the store
    (they stay in the job's journal); exit status 3."""

    exit_status = 3


def first_line(error: BaseException) -> str:
    """An error in one short line (its first line, or its type when it has no text)."""
    text = str(error)
    return text.splitlines()[0][:200] if text else type(error).__name__


WORKER_TRACEBACK = "Original Traceback"
"""What torch's DataLoader puts in the text of an error it re-raises from a worker."""


def message(error: BaseException) -> str:
    """The text a command shows of ``error``: a DataLoader worker's error (re-raised by
    torch with the worker's traceback in its text) as the worker's own message."""
    text = str(error)
    if WORKER_TRACEBACK not in text:
        return text
    last = [line for line in text.splitlines() if line.strip()][-1]
    name = f"{type(error).__module__}.{type(error).__name__}: "
    return last.removeprefix(name).removeprefix(f"{type(error).__name__}: ")
