"""The errors a ``repq`` command stops with: each names the problem in one line, and
the command line turns every :class:`RepqError` into ``repq <command>: error: ...`` and
exit status 2. Torch-free."""


class RepqError(Exception):
    """Base of every clear error of this package."""


class ConfigError(RepqError, ValueError):
    """A configuration file, override or option is wrong; the message names the key."""


class DataError(RepqError, RuntimeError):
    """A dataset is missing, empty or unreadable."""


class CheckpointError(RepqError, RuntimeError):
    """A checkpoint is missing, corrupt or of the wrong kind; the message names it."""


class TrainingDiverged(RepqError, RuntimeError):
    """The loss became NaN or infinite."""


class TrackingError(RepqError, RuntimeError):
    """The tracking store cannot be used; the message names the URI."""
