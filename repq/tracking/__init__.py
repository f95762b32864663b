"""MLflow tracking: one run per job, created only on rank 0."""

from repq.tracking.mlflow_tracker import (
    Tracker,
    ensure_experiment,
    git_commit,
    resolve_experiment,
    resolve_uri,
    run_tags,
    sqlite_uri,
)

__all__ = [
    "Tracker",
    "ensure_experiment",
    "git_commit",
    "resolve_experiment",
    "resolve_uri",
    "run_tags",
    "sqlite_uri",
]
