"""MLflow tracking: one run per job, created only on rank 0."""

from repq.tracking.mlflow_tracker import (
    Tracker,
    TrackingError,
    ensure_experiment,
    git_commit,
    resolve_uri,
    run_tags,
)

__all__ = ["Tracker", "TrackingError", "ensure_experiment", "git_commit", "resolve_uri", "run_tags"]
