"""Documentation that cannot drift: every generated page (README.md, docs/*.md) is what
its template gives over the committed snapshots, byte for byte; a hand edit fails."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from runs import write_run

from repq.cli import main
from repq.errors import ConfigError
from repq.report import write_report
from repq.report.docs import (
    duration,
    page_path,
    pick,
    render_pages,
    stale_pages,
    take_snapshot,
)

ROOT = Path(__file__).resolve().parents[1]


def test_every_committed_page_is_what_its_snapshots_give():
    pages = render_pages(ROOT)
    assert {p.name for p in pages} >= {"README.md", "ablations.md", "findings.md"}
    assert stale_pages(ROOT) == []


@pytest.fixture
def repo(tmp_path) -> Path:
    """A copy of the repository's docs, README and benchmark results."""
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "benchmarks" / "results", tmp_path / "benchmarks" / "results")
    return tmp_path


def test_a_hand_edit_of_a_page_is_found_and_named_in_one_line(repo, capsys):
    page = repo / "docs" / "ablations.md"
    text = page.read_text()
    digit = next(i for i, c in enumerate(text) if c.isdigit())
    page.write_text(text[:digit] + str((int(text[digit]) + 1) % 10) + text[digit + 1 :])
    assert stale_pages(repo) == [page]
    assert main(["report", "docs", "--check", "--root", str(repo)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "pages differ from their snapshots" in line and "ablations.md" in line
    assert main(["report", "docs", "--root", str(repo)]) == 0  # rewritten
    assert stale_pages(repo) == [] and page.read_text() == text


def test_a_snapshot_keeps_the_tables_and_their_provenance(tmp_path):
    results = tmp_path / "results"
    for seed, (fp, repq) in enumerate([(70.0, 65.0), (71.0, 65.5)]):
        write_run(results / "runs", "a0", "fp", {"top1": fp}, seed=seed)
        write_run(results / "runs", "a0", "qat-repq-4", {"top1": repq}, seed=seed)
    metrics = results / "runs/a0/base/seed0/fp/metrics.json"
    metrics.write_text(json.dumps({"cpu_seconds": {"startup": 1.0, "total": 12.5}}))
    journal = metrics.with_name("tracking.jsonl")  # the commit the job ran at
    tags = {"mlflow.source.git.commit": "0123456789abcdef"}
    run = {"op": "run", "key": "k", "name": "a0/fp", "tags": tags}
    journal.write_text(json.dumps(run) + "\n" + '{"op": "metr')  # the last line cut short
    older = results / "runs/a0/base/seed1/fp/tracking.jsonl"  # a journal of before MLflow's tag
    older.write_text(json.dumps({**run, "tags": {"git_commit": "fedcba9876543210"}}) + "\n")
    write_report(results / "runs", results / "tables")
    (results / "wall_seconds").write_text("125\n")
    config = tmp_path / "wf.yaml"
    config.write_text("seeds: [0, 1]\n")
    folder = take_snapshot(results, "toy", "make toy", tmp_path / "docs", config)
    assert folder == tmp_path / "docs/results/toy"
    assert {"classification.md", "classification.csv", "claims.csv", "drop.png"} <= {
        p.name for p in folder.iterdir()
    }
    assert not list(folder.glob("*.tex"))
    prov = json.loads((folder / "provenance.json").read_text())
    assert prov["command"] == "make toy" and prov["wall_seconds"] == 125.0
    assert prov["job_cpu_seconds"] == 12.5 and prov["trainings"] == 1
    assert {"date", "cpu", "cores", "torch", "python", "snapshot_commit"} <= set(prov)
    assert prov["commit"] == "0123456789ab, fedcba987654"  # the jobs', from their journals
    assert (folder / "config.yaml").read_text() == "seeds: [0, 1]\n"
    with pytest.raises(ConfigError, match="holds no tables"):
        take_snapshot(tmp_path / "nothing", "x", "make x", tmp_path / "docs")


def test_a_page_takes_its_numbers_from_the_snapshot(tmp_path):
    folder = tmp_path / "docs/results/toy"
    folder.mkdir(parents=True)
    pd.DataFrame({"variant": ["base", "lr"], "mean": [-2.345, 0.5]}).to_csv(
        folder / "claims.csv", index=False
    )
    (folder / "provenance.json").write_text(json.dumps({"wall_seconds": 6725.0}))
    templates = tmp_path / "docs/templates"
    templates.mkdir()
    (templates / "toy.md.j2").write_text(
        '{% set s = snapshot("toy") %}base {{ s.row("claims", variant="base").mean | signed }}'
        " in {{ s.prov.wall_seconds | duration }}\n"
    )
    (path, text), *_ = render_pages(tmp_path).items()
    assert path == tmp_path / "docs/toy.md" and text == "base -2.35 in 1h52m\n"
    assert page_path(tmp_path, "README.md.j2") == tmp_path / "README.md"


def test_pick_refuses_none_or_several_rows():
    frame = pd.DataFrame({"variant": ["base", "base", "lr"], "mean": [1.0, 2.0, 3.0]})
    assert pick(frame, variant="lr") == {"variant": "lr", "mean": 3.0}
    with pytest.raises(ConfigError, match="2 rows match"):
        pick(frame, variant="base")
    with pytest.raises(ConfigError, match="0 rows match"):
        pick(frame, variant="qat32")


def test_durations_read_as_hours_or_minutes():
    assert duration(402.0) == "6m42s" and duration(6725) == "1h52m"
    assert duration(None) == "not recorded"
