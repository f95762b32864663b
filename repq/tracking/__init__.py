"""MLflow tracking: one run per job, created only on rank 0.

``store`` (where runs go) <- ``journal`` (what a job logged) <- ``delivery`` (getting it
there) <- ``mlflow_tracker`` (what a job calls); each imports only those before it."""

from repq.tracking.delivery import deliver, sync_journals
from repq.tracking.journal import Journal
from repq.tracking.mlflow_tracker import (
    DELIVERY_MODES,
    Tracker,
    git_commit,
    now_ms,
    run_name,
    run_tags,
)
from repq.tracking.store import (
    Store,
    ensure_experiment,
    resolve_experiment,
    resolve_uri,
    runs_url,
    sqlite_uri,
)

__all__ = [
    "DELIVERY_MODES",
    "Journal",
    "Store",
    "Tracker",
    "deliver",
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
