"""Tracking that never stalls or kills training: the local journal, its delivery, stale
runs, a real ``mlflow server`` killed and restarted mid-run, and basic-auth."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import RECIPES, as_args, sr_overrides, tracking_overrides
from mlflow.tracking import MlflowClient
from servers import MlflowServer

from repq.cli import main
from repq.errors import ConfigError, TrackingError
from repq.tracking import (
    Journal,
    RunSpec,
    Tracker,
    ensure_experiment,
    now_ms,
    run_name,
    run_tags,
    runs_url,
    stage_run,
)
from repq.tracking.delivery import _parent_id, deliver
from repq.tracking.journal import bind_store, stored_store
from repq.tracking.store import Store
from repq.vocab import Stage


def _store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'mlflow.db'}", "journal-test")


def test_a_line_cut_short_by_a_kill_is_skipped_and_the_next_record_is_whole(tmp_path):
    journal = Journal(tmp_path / "tracking.jsonl")
    journal.append("run", key="a", name="job", tags={})
    with open(journal.path, "a") as f:
        f.write('{"op": "metrics", "key": "a", "metr')  # SIGKILL mid-write
    journal.append("status", key="a", status="FINISHED", time=1)
    assert [r["op"] for r in journal.records()] == ["run", "status"]
    assert journal.open_runs() == []


def test_delivery_resumes_where_it_stopped_and_sends_each_record_once(tmp_path):
    store = _store(tmp_path)
    journal = Journal(tmp_path / "job" / "tracking.jsonl")
    bind_store(journal, store)
    journal.append("run", key="a", name="job/fp", tags={"stage": "fp"})
    journal.append("metrics", key="a", metrics={"loss": 2.0}, step=0, time=1000)
    assert deliver(journal, store) == 2 and journal.pending() == 0
    journal.append("metrics", key="a", metrics={"loss": 1.0}, step=1, time=2000)
    journal.append("status", key="a", status="FINISHED", time=3000)
    assert deliver(journal, store) == 2 and deliver(journal, store) == 0
    client = MlflowClient(store.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("journal-test").experiment_id])
    assert run.info.run_id == journal.state()["runs"]["a"]
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 2.0), (1, 1.0)]
    assert run.info.status == "FINISHED" and run.info.end_time == 3000


def test_a_run_delivered_later_keeps_the_times_of_its_job(tmp_path):
    """Deferred delivery: the run's start and end are when the job started and ended it,
    not when ``repq tracking-sync`` delivered it (the UI showed negative durations)."""
    tracking = {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "later"}
    tracker = Tracker({**tracking, "delivery": "deferred"}, tmp_path / "job" / "tracking.jsonl")
    before = now_ms()
    spec = RunSpec("a0/lr_x3/fp", run_tags_of("lr_x3"))
    key = tracker.start(spec, {}, started=before - 60_000)
    tracker.finish()
    ended = tracker.journal.records()[-1]["time"]
    time.sleep(0.2)
    assert deliver(tracker.journal, stored_store(tracker.journal)) == 3
    run = MlflowClient(tracking["uri"]).get_run(tracker.journal.state()["runs"][key])
    assert run.info.start_time == before - 60_000 and run.info.end_time == ended
    assert run.info.end_time - run.info.start_time >= 60_000
    assert run.data.tags["variant"] == "lr_x3" and run.info.run_name == "a0/lr_x3/fp"


def run_tags_of(variant: str) -> dict[str, str]:
    config = {"model": {"name": "a0"}, "task": "classification", "train": {}}
    return run_tags({**config, "tracking": {"variant": variant}}, Stage.parse("fp"), "train")


def test_run_names_and_tags_carry_the_variant_except_the_base():
    config = {"model": {"name": "repvgg_a0"}, "task": "classification", "train": {"seed": 2}}
    stage = Stage.parse("qat-repq-4")
    assert run_name(config, str(stage)) == "repvgg_a0/qat-repq-4"
    assert run_tags(config, stage, "train")["variant"] == "base"
    config["tracking"] = {"variant": "lr_x3"}
    assert run_name(config, f"eval-{stage}") == "repvgg_a0/lr_x3/eval-qat-repq-4"
    assert run_tags(config, stage, "evaluate")["variant"] == "lr_x3"


def test_a_journal_with_undelivered_records_is_not_sent_to_another_store(tmp_path):
    journal = Journal(tmp_path / "tracking.jsonl")
    bind_store(journal, _store(tmp_path / "first"))
    journal.append("run", key="a", name="job", tags={})
    with pytest.raises(ConfigError, match="not yet delivered"):
        bind_store(journal, _store(tmp_path / "second"))


def test_a_restarted_job_ends_the_run_its_killed_process_left_open(tmp_path):
    tracking = {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "stale"}
    first = Tracker(tracking, tmp_path / "job" / "tracking.jsonl")
    killed = first.start(RunSpec("job/fp", {"job": "train"}), {"lr": 0.1})
    first.log_metrics({"loss": 1.0}, 0)
    first.flush(30)  # then the process dies: no finish, no close
    second = Tracker(tracking, tmp_path / "job" / "tracking.jsonl")
    second.start(RunSpec("job/fp", {"job": "train"}), {"lr": 0.1})
    second.finish()
    second.close(30)
    runs = second.journal.state()["runs"]
    client = MlflowClient(tracking["uri"])
    assert client.get_run(runs[killed]).info.status == "KILLED"
    statuses = sorted(client.get_run(r).info.status for r in runs.values())
    assert statuses == ["FINISHED", "KILLED"]


def test_tracking_init_describes_the_experiment_and_prints_its_runs_table(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["tracking-init", "--tracking-uri", uri, "--experiment", "described"]) == 0
    experiment = MlflowClient(uri).get_experiment_by_name("described")
    assert "one run per job" in experiment.tags["mlflow.note.content"]
    url = f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs"
    assert url in capsys.readouterr().out
    assert runs_url("http://host:5000/", "7") == "http://host:5000/#/experiments/7/runs"


# -- a real server ---------------------------------------------------------------------


def _train_command(out: Path, overrides: list[str]) -> list[str]:
    recipe = str(RECIPES / "ecbsr.yaml")
    command = [sys.executable, "-m", "repq", "train", recipe, "--stage", "fp", "--out", str(out)]
    return command + as_args(overrides)


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _metric_records(journal: Journal) -> int:
    return sum(r["op"] == "metrics" for r in journal.records())


@pytest.mark.slow
def test_training_goes_on_when_the_tracking_server_dies_and_sync_delivers_later(
    mini_data, tmp_path
):
    server = MlflowServer(tmp_path / "server")
    server.start()
    epochs = 5
    overrides = sr_overrides(mini_data, epochs=epochs) + [
        "data.repeat=6",
        f"tracking.uri={server.uri}",
        "tracking.experiment=outage",
        "tracking.flush_timeout=3",
    ]
    out = tmp_path / "job"
    journal = Journal(out / "tracking.jsonl")
    command = _train_command(out, overrides)
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: journal.path.exists() and _metric_records(journal) >= 1, 120, "epoch 0")
        _wait_for(lambda: journal.pending() == 0, 30, "epoch 0 to reach the server")
        server.kill()
        killed_at = time.monotonic()
        _, stderr = job.communicate(timeout=300)
    finally:
        job.kill()
        server.kill()
    after_kill = time.monotonic() - killed_at
    # the job trained every epoch, wrote its outputs, and said in one line what is left
    assert job.returncode == 3, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.startswith("repq train")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    assert "not delivered" in lines[0] and "repq tracking-sync" in lines[0]
    assert json.loads((out / "metrics.json").read_text())["epoch"] == epochs - 1
    assert journal.pending() > 0
    print(f"job ended {after_kill:.1f} s after the server was killed")
    assert after_kill < 120  # the client's retries alone took about 9 minutes before

    server.start()  # the same store, back
    assert main(["tracking-sync", str(tmp_path)]) == 0
    assert journal.pending() == 0
    client = MlflowClient(server.uri)
    run = client.get_run(journal.state()["runs"][journal.records()[0]["key"]])
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "psnr/mini_a")
    assert sorted(m.step for m in history) == list(range(epochs))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "history.csv", "deploy.pt"} <= artifacts
    server.kill()


@pytest.mark.slow
def test_a_job_killed_before_its_first_checkpoint_leaves_no_running_run(mini_data, tmp_path):
    overrides = sr_overrides(mini_data, epochs=2) + ["data.repeat=40"]
    overrides += tracking_overrides(tmp_path)
    out = tmp_path / "job"
    journal = Journal(out / "tracking.jsonl")
    command = _train_command(out, overrides)
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: journal.state_path.exists() and journal.state()["runs"], 120, "the run")
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    assert not (out / "resume" / "last.pt").exists(), "killed too late: no stale run"

    assert main(["train", *command[4:]]) == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    statuses = sorted(client.get_run(r).info.status for r in journal.state()["runs"].values())
    assert statuses == ["FINISHED", "KILLED"]


@pytest.mark.slow
def test_the_start_up_probe_tells_refused_credentials_from_an_absent_server(
    mini_data, tmp_path, monkeypatch
):
    """... and a job given its credentials in the tracking URI logs with them but writes
    them nowhere: not in its config, checkpoint, journal or run parameters."""
    server = MlflowServer(tmp_path / "server", auth=True)
    server.start()
    try:
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
        with pytest.raises(TrackingError, match="refused the job: wrong or missing credentials"):
            ensure_experiment(server.uri, "auth")
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
        with pytest.raises(TrackingError, match="wrong or missing credentials"):
            ensure_experiment(server.uri, "auth")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", server.admin_password)
        tracker = Tracker({"uri": server.uri, "experiment": "auth"}, tmp_path / "t.jsonl")
        tracker.start(RunSpec("job", {"job": "train"}), {})
        tracker.finish()
        tracker.close(30)
        (run,) = server.runs_tagged("job", "train", user="admin")
        assert run["info"]["status"] == "FINISHED"

        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
        secret_uri = server.uri.replace("//", f"//admin:{server.admin_password}@")
        out = tmp_path / "fp"
        overrides = [*sr_overrides(mini_data, epochs=1), f"tracking.uri={secret_uri}"]
        overrides.append("tracking.experiment=auth")
        args = ["train", str(RECIPES / "ecbsr.yaml"), "--stage", "fp", "--out", str(out)]
        assert main([*args, *as_args(overrides)]) == 0
        runs = server.runs_tagged("stage", "fp", user="admin")
        assert [r["info"]["status"] for r in runs] == ["FINISHED"]
        params = {p["key"]: p["value"] for p in runs[0]["data"]["params"]}
        assert params["tracking.uri"] == server.uri
        written = [p for p in out.rglob("*") if p.is_file()]
        assert {"config.json", "model.pt", "tracking.jsonl", "tracking.jsonl.state"} <= {
            p.name for p in written
        }
        for path in written:
            assert server.admin_password.encode() not in path.read_bytes(), path
        assert json.loads((out / "config.json").read_text())["tracking"]["uri"] == server.uri
    finally:
        server.kill()
    with pytest.raises(TrackingError, match="is unreachable"):
        ensure_experiment(server.uri, "auth")


def test_a_deferred_job_never_imports_mlflow_and_sync_delivers_its_run(mini_data, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "fp"
    args = ["train", str(RECIPES / "ecbsr.yaml"), "--stage", "fp", "--out", str(out)]
    args += as_args(sr_overrides(mini_data, epochs=1))
    script = (
        "import sys; from repq.cli import main; code = main(sys.argv[1:]); "
        "print('mlflow imported:', 'mlflow' in sys.modules); sys.exit(code)"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "REPQ_TRACKING_DELIVERY": "deferred"}
    job = subprocess.run(
        [sys.executable, "-c", script, *args], env=env, capture_output=True, text=True
    )
    assert job.returncode == 0, job.stderr[-2000:]
    assert "mlflow imported: False" in job.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run_id"] is None  # not delivered yet
    journal = Journal(out / "tracking.jsonl")
    assert journal.pending() > 0 and journal.state()["store"]["uri"] == uri
    assert main(["tracking-sync", str(tmp_path)]) == 0
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("repq").experiment_id])
    run, parent = sorted(runs, key=lambda r: r.data.tags["job"], reverse=True)  # train, group
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "fp"
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert run.data.metrics["psnr/mini_a"] == pytest.approx(metrics["metrics"]["psnr/mini_a"])


def test_an_unknown_delivery_mode_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("REPQ_TRACKING_DELIVERY", "later")
    tracking = {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    with pytest.raises(TrackingError, match="tracking delivery 'later' is not one of"):
        Tracker(tracking, tmp_path / "tracking.jsonl")


def test_a_resumed_run_keeps_its_first_start_and_counts_its_restarts(tmp_path):
    tracking = {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "resumed"}
    first = Tracker(tracking, tmp_path / "job" / "tracking.jsonl")
    key = first.start(RunSpec("a0/fp", {"job": "train"}), {}, started=now_ms() - 30_000)
    first.flush(30)  # killed here
    for _ in range(2):
        again = Tracker(tracking, tmp_path / "job" / "tracking.jsonl")
        assert again.resume(key)
    again.finish()
    again.close(30)
    run = MlflowClient(tracking["uri"]).get_run(again.journal.state()["runs"][key])
    assert run.data.tags["resumed"] == "2" and run.info.status == "FINISHED"
    assert run.info.end_time - run.info.start_time >= 30_000


def test_jobs_of_one_group_delivered_at_once_share_one_parent(tmp_path):
    """Four jobs of one architecture, variant and seed start together (a quantized
    variant's first jobs) and each creates the group's run if it finds none: there is
    one, every job nests under it and it ends with the last (on SQLite a lock beside
    the store serializes them). Without the lock (a server), each creates one and
    the earliest created is elected: the others' are deleted."""
    store = _store(tmp_path)
    config = {"model": {"name": "a0"}, "task": "classification", "train": {"seed": 1}}
    config["tracking"] = {"variant": "lr_x2"}
    journals = []
    for bits in (4, 8):
        for method in ("repq", "bnest"):
            stage = Stage.parse(f"qat-{method}-{bits}")
            journal = Journal(tmp_path / str(stage) / "tracking.jsonl")
            bind_store(journal, store)
            spec = stage_run(config, stage, "train", str(stage))
            journal.append(
                "run", key="k", name=spec.name, tags=spec.tags, parent=spec.parent, time=now_ms()
            )
            journal.append("status", key="k", status="FINISHED", time=now_ms() + 1000)
            journals.append(journal)
    ensure_experiment(store.uri, store.experiment)
    barrier = threading.Barrier(len(journals))

    def deliver_at_once(journal: Journal) -> None:
        barrier.wait()
        deliver(journal, store)

    threads = [threading.Thread(target=deliver_at_once, args=(j,)) for j in journals]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client = MlflowClient(store.uri)
    runs = client.search_runs([client.get_experiment_by_name(store.experiment).experiment_id])
    (parent,) = [r for r in runs if r.data.tags["job"] == "group"]
    assert parent.info.run_name == "a0/lr_x2/seed1" and parent.info.status == "FINISHED"
    children = [r for r in runs if r.data.tags["job"] == "train"]
    assert len(children) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert parent.info.end_time == max(r.info.end_time for r in children)

    other = {**spec.parent, "tags": {**spec.parent["tags"], "seed": "2"}}
    elected: list[str] = []
    barrier = threading.Barrier(4)

    def elect() -> None:
        barrier.wait()
        elected.append(_parent_id(client, parent.info.experiment_id, other, now_ms(), 1.0))

    threads = [threading.Thread(target=elect) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    live = client.search_runs([parent.info.experiment_id], "tags.seed = '2'")
    assert len(live) == 1 and set(elected) == {live[0].info.run_id}


FIRST_JOB = """
import sys, time
from repq.tracking import RunSpec, Tracker
uri, folder, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
time.sleep(max(0.0, start - time.time()))  # every job opens the new store at once
tracker = Tracker({"uri": uri, "experiment": "fresh"}, folder + "/tracking.jsonl")
tracker.start(RunSpec(folder, {"job": "train"}), {"seed": folder[-1]})
tracker.log_metrics({"loss": 1.0}, 0)
tracker.finish()
tracker.close(60)
"""


def test_four_jobs_started_at_once_on_a_new_store_all_log_their_runs(tmp_path):
    """A new SQLite store and its experiment are made by one job at a time (a lock
    beside the database): MLflow's own table creation raced (``table registered_models
    already exists``) and one of two jobs died at start-up."""
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    start = time.time() + 8  # after every interpreter has imported MLflow
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", FIRST_JOB, uri, str(tmp_path / f"job{i}"), str(start)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    errors = [job.communicate(timeout=300)[1] for job in jobs]
    assert [job.returncode for job in jobs] == [0] * 4, errors
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("fresh").experiment_id])
    assert sorted(r.info.run_name for r in runs) == [str(tmp_path / f"job{i}") for i in range(4)]
    assert {r.info.status for r in runs} == {"FINISHED"}
