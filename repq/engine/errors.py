"""Errors a training job stops with (importable without torch's heavier modules)."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""
