"""MLflow tracking: one run per job, created only on rank 0.

``store`` (where runs go) <- ``journal`` (what a job logged) <- ``registry`` (an
exported model registered) <- ``delivery`` (getting it there) <- ``mlflow_tracker``
(what a job calls); each imports only those before it. A job's run nests under the run
of its architecture, variant and seed (:func:`stage_run`)."""

from repq.tracking.delivery import deliver, sync_journals
from repq.tracking.journal import Journal
from repq.tracking.mlflow_tracker import (
    DELIVERY_MODES,
    RunSpec,
    Tracker,
    git_commit,
    now_ms,
    registered_model_name,
    run_name,
    run_tags,
    source_tags,
    stage_run,
    stage_tags,
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
    "RunSpec",
    "Store",
    "Tracker",
    "deliver",
    "ensure_experiment",
    "git_commit",
    "now_ms",
    "registered_model_name",
    "resolve_experiment",
    "resolve_uri",
    "run_name",
    "run_tags",
    "runs_url",
    "source_tags",
    "sqlite_uri",
    "stage_run",
    "stage_tags",
    "sync_journals",
]
