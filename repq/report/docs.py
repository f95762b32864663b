"""Documentation that cannot drift: results pages generated from committed snapshots.

A *snapshot* (``docs/results/<name>/``) is what one workflow run produced that a reader
is shown: its tables as ``repq report tables`` wrote them (Markdown and CSV), its figure,
and ``provenance.json`` (the commit, the date, the host's CPU and cores, the torch and
Python versions, the command, the wall time and the jobs' CPU time). ``repq report
snapshot`` takes one from a finished results folder.

A *page* is a Jinja template (``docs/templates/<page>.j2``) rendered over the snapshots
and the benchmark results (``benchmarks/results/*.json``): prose that needs a number
takes it from them, so no number on a page is typed. ``repq report docs`` writes every
page (``docs/<page>``; ``README.md`` at the top); ``--check`` says which committed page
differs from what the snapshots give, and a test runs it.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from repq.errors import ConfigError
from repq.files import atomic_write
from repq.report.claims import planned_half_width, seeds_needed

PROVENANCE = "provenance.json"
TEMPLATE_SUFFIX = ".j2"
SNAPSHOT_FILES = ("*.md", "*.csv", "drop.png", "rehearsal.json")
"""What a snapshot keeps of ``<results>/tables`` (not the LaTeX, the SVG or journals)."""
WALL_TIME = "wall_seconds"
"""The file in a results folder where ``make`` records the run's wall time (seconds)."""


def host() -> dict[str, Any]:
    """The machine a measurement ran on: CPU model, cores, torch and Python versions."""
    import torch

    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        model = names[0] if names else model
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def commit() -> str:
    """The checkout's commit, with ``-dirty`` when tracked files other than the committed
    snapshots (``docs/results``, which taking snapshots changes) differ from it."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short=12", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs/results")
    return f"{head}-dirty" if changed else head


def provenance(command: str, **extra: Any) -> dict[str, Any]:
    """Where a result comes from: the command, the commit, the date (UTC) and the host."""
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return {"command": command, "commit": commit(), "date": date, **host(), **extra}


def job_cpu_seconds(results: Path) -> float:
    """The CPU seconds of every training, evaluation and export job of a results folder
    (what each job recorded of itself: ``cpu_seconds.total``)."""
    total = 0.0
    for pattern in ("runs/**/metrics.json", "runs/**/evaluation.json", "runs/**/export.json"):
        for path in results.glob(pattern):
            seconds = json.loads(path.read_text()).get("cpu_seconds")
            total += seconds["total"] if seconds else 0.0
    return total


COMMIT_TAGS = ("mlflow.source.git.commit", "git_commit")
"""The run tags that hold a job's commit (MLflow's own; ``git_commit`` in the journals of
results written before runs carried MLflow's source fields)."""


def _commit(record: dict) -> str | None:
    tags = record.get("tags", {}) if record.get("op") == "run" else {}
    return next((tags[k] for k in COMMIT_TAGS if tags.get(k)), None)


def run_commits(results: Path) -> list[str]:
    """The commits the jobs of a results folder ran at (the commit tag of every run in
    their tracking journals), shortened, in order of first appearance."""
    found: dict[str, None] = {}
    for journal in sorted(results.glob("runs/**/*tracking.jsonl")):
        for line in journal.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            tag = _commit(record)
            if tag:
                found[tag[:12]] = None
    return list(found)


def take_snapshot(
    results: Path, name: str, command: str, docs: Path, config: Path | None = None
) -> Path:
    """Copy a finished run's tables and figure into ``docs/results/<name>/`` (replacing
    an older snapshot of that name) with their provenance and, if given, the workflow
    config the run used (``config.yaml``); returns the folder."""
    tables = results / "tables"
    if not (tables / "runs.csv").exists():
        raise ConfigError(f"{tables} holds no tables: run the workflow to its end first")
    target = docs / "results" / name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for pattern in SNAPSHOT_FILES:
        for path in sorted(tables.glob(pattern)):
            shutil.copy(path, target / path.name)
    if config is not None:
        shutil.copy(config, target / "config.yaml")
    wall = results / WALL_TIME
    extra = {
        "wall_seconds": float(wall.read_text()) if wall.exists() else None,
        "job_cpu_seconds": round(job_cpu_seconds(results), 1),
        "trainings": len(list(results.glob("runs/*/*/seed*/*/metrics.json"))),
    }
    record = provenance(command, **extra)
    commits = run_commits(results)
    if commits:  # what the jobs ran; the snapshot's own checkout may be later
        record = {**record, "commit": ", ".join(commits), "snapshot_commit": record["commit"]}
    if wall.exists():  # the run ended when its wall time was written
        record["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(wall.stat().st_mtime))
    content = json.dumps(record, indent=2) + "\n"
    atomic_write(target / PROVENANCE, lambda tmp: Path(tmp).write_text(content))
    return target


@dataclass(frozen=True)
class Snapshot:
    """One committed snapshot, as a template reads it."""

    folder: Path

    @cached_property
    def prov(self) -> dict[str, Any]:
        return json.loads((self.folder / PROVENANCE).read_text())

    @cached_property
    def config(self) -> dict[str, Any]:
        """The workflow config of the run (``config.yaml`` of the snapshot)."""
        return yaml.safe_load((self.folder / "config.yaml").read_text())

    def table(self, name: str) -> str:
        """A Markdown table as the report wrote it (without its final newline)."""
        return (self.folder / f"{name}.md").read_text().rstrip("\n")

    def csv(self, name: str) -> pd.DataFrame:
        return pd.read_csv(self.folder / f"{name}.csv")

    def json(self, name: str) -> Any:
        return json.loads((self.folder / f"{name}.json").read_text())

    def row(self, name: str, **where: Any) -> dict[str, Any]:
        """The one row of ``<name>.csv`` whose columns equal ``where``."""
        return pick(self.csv(name), **where)


def pick(frame: pd.DataFrame, **where: Any) -> dict[str, Any]:
    """The one row of ``frame`` whose columns equal ``where`` (an error names the filter
    when none or several match: a page must not show the wrong number)."""
    found = rows(frame, **where)
    if len(found) != 1:
        raise ConfigError(f"{len(found)} rows match {where}, not one")
    return found[0]


def rows(frame: pd.DataFrame, **where: Any) -> list[dict[str, Any]]:
    """The rows of ``frame`` whose columns equal ``where`` (a list: any of its values)."""
    mask = pd.Series(True, index=frame.index)
    for column, value in where.items():
        values = value if isinstance(value, list) else [value]
        mask &= frame[column].isin(values)
    return frame[mask].to_dict("records")


def signed(value: float, digits: int = 2) -> str:
    return f"{value:+.{digits}f}"


def fixed(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}"


def duration(seconds: float | None) -> str:
    """``1h52m``, ``6m42s``; ``not recorded`` for none."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "not recorded"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def benchmark(root: Path, tag: str) -> dict[str, Any]:
    """A benchmark result file, ``benchmarks/results/<tag>.json``."""
    return json.loads((root / "benchmarks" / "results" / f"{tag}.json").read_text())


def _environment(root: Path):
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(root / "docs" / "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # Markdown
    )
    env.filters.update(signed=signed, fixed=fixed, duration=duration)
    env.globals.update(
        snapshot=lambda name: Snapshot(root / "docs" / "results" / name),
        benchmark=lambda tag: benchmark(root, tag),
        pick=pick,
        rows=rows,
        seeds_needed=seeds_needed,
        stdev=statistics.stdev,
        planned_half_width=planned_half_width,
    )
    return env


def page_path(root: Path, template: str) -> Path:
    """Where a template's page goes: ``README.md`` at the top, the rest in ``docs/``."""
    name = template.removesuffix(TEMPLATE_SUFFIX)
    return root / name if name == "README.md" else root / "docs" / name


def render_pages(root: Path) -> dict[Path, str]:
    """Every page's path and text, rendered from ``docs/templates``."""
    env = _environment(root)
    return {
        page_path(root, name): env.get_template(name).render()
        for name in sorted(env.list_templates(extensions=["j2"]))
    }


def write_pages(root: Path) -> list[Path]:
    """Render every page and write it; returns the paths written."""
    pages = render_pages(root)
    for path, text in pages.items():
        atomic_write(path, lambda tmp, text=text: Path(tmp).write_text(text))
    return list(pages)


def stale_pages(root: Path) -> list[Path]:
    """The committed pages that differ from what the snapshots give (a hand edit, or a
    snapshot or template changed without ``repq report docs``)."""
    return [
        path
        for path, text in render_pages(root).items()
        if not path.exists() or path.read_text() != text
    ]
