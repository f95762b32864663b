"""What a rehearsal (``make rehearse``) measured: each job's wall time, peak RSS and CPU
time (Snakemake's ``benchmark:`` files: the synthetic data, every training, evaluation
and export), its peak CUDA memory where it ran on a GPU (the
job's own JSON), the ONNX files' sizes and the whole DAG's wall time. Written to
``<results>/tables/rehearsal.{md,json}``, so a snapshot keeps it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from repq.files import atomic_write

JOB_FILES = {"train": "metrics.json", "evaluate": "evaluation.json", "export": "export.json"}
"""Where a job of each rule records itself (its peak CUDA memory among it)."""


def _cuda_peak(results: Path, rule: str, job: str) -> float | None:
    """The peak CUDA memory a training, evaluation or export job recorded in its JSON
    (in its training's or its seed's folder); None on the CPU or for other jobs."""
    if rule not in JOB_FILES:
        return None
    recorded = results / "runs" / job / JOB_FILES[rule]
    if not recorded.exists():
        return None
    return json.loads(recorded.read_text()).get("cuda_max_allocated_mb")


def _number(value: object) -> float | None:
    """A benchmark cell as a number (Snakemake writes ``NA`` where it sampled nothing)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def job_rows(results: Path) -> list[dict]:
    """One row per benchmarked job: rule, job, seconds, peak RSS (MiB), CPU seconds and
    peak CUDA memory (MiB, on a GPU)."""
    rows = []
    for tsv in sorted((results / "benchmarks").glob("*/**/*.tsv")):
        rule, *parts = tsv.relative_to(results / "benchmarks").with_suffix("").parts
        job = "/".join(parts)
        measured = pd.read_csv(tsv, sep="\t").iloc[0]
        rows.append(
            {
                "rule": rule,
                "job": job,
                "seconds": _number(measured.get("s")),
                "max_rss_mib": _number(measured.get("max_rss")),
                "cpu_seconds": _number(measured.get("cpu_time")),
                "cuda_max_allocated_mib": _cuda_peak(results, rule, job),
            }
        )
    return rows


def onnx_sizes(results: Path) -> dict[str, float]:
    """Every exported ONNX file's size in MiB, by its run folder."""
    return {
        str(path.parent.relative_to(results / "runs")): path.stat().st_size / 2**20
        for path in sorted((results / "runs").glob("**/model.onnx"))
    }


def _cell(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def markdown(summary: dict) -> str:
    wall = summary["wall_seconds"]
    lines = [
        f"{len(summary['jobs'])} benchmarked jobs; the whole DAG took "
        f"{'an unrecorded time' if wall is None else f'{wall / 60:.1f} min'} of wall time.",
        "",
        "| rule | job | wall (s) | peak RSS (MiB) | CPU (s) | peak CUDA (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for row in summary["jobs"]:
        lines.append(
            f"| {row['rule']} | {row['job']} | {_cell(row['seconds'], 1)} | "
            f"{_cell(row['max_rss_mib'], 0)} | {_cell(row['cpu_seconds'], 1)} | "
            f"{_cell(row['cuda_max_allocated_mib'], 0)} |"
        )
    lines += ["", "| ONNX file | MiB |", "|---|---|"]
    lines += [f"| {run}/model.onnx | {mib:.2f} |" for run, mib in summary["onnx_mib"].items()]
    return "\n".join(lines) + "\n"


def write_rehearsal(results: Path) -> Path:
    """``<results>/tables/rehearsal.md`` and ``.json`` from the jobs' measurements."""
    wall = results / "wall_seconds"
    summary = {
        "wall_seconds": float(wall.read_text()) if wall.exists() else None,
        "jobs": job_rows(results),
        "onnx_mib": onnx_sizes(results),
    }
    out = results / "tables"
    out.mkdir(parents=True, exist_ok=True)
    content = json.dumps(summary, indent=2) + "\n"
    atomic_write(out / "rehearsal.json", lambda tmp: Path(tmp).write_text(content))
    text = markdown(summary)
    atomic_write(out / "rehearsal.md", lambda tmp: Path(tmp).write_text(text))
    return out / "rehearsal.md"
