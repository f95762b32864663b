"""MLflow tracking: one run per job, created only on rank 0."""

from repq.tracking.journal import Journal, sync_journals
from repq.tracking.mlflow_tracker import (
    Tracker,
    ensure_experiment,
    git_commit,
    now_ms,
    resolve_experiment,
    resolve_uri,
    run_name,
    run_tags,
    runs_url,
    sqlite_uri,
)

__all__ = [
    "Journal",
    "Tracker",
    "ensure_experiment",
    "git_commit",
    "now_ms",
    "resolve_experiment",
    "resolve_uri",
    "run_name",
    "run_tags",
    "runs_url",
    "sqlite_uri",
    "sync_journals",
]
