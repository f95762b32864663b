"""How much of the demo's CPU time its jobs spend starting up.

Runs the whole demo DAG (``snakemake --cores 2 --profile profiles/default``) in a fresh
copy of the workflow, takes the CPU time of Snakemake and every job from the kernel
(``RUSAGE_CHILDREN``), and sums what each training and evaluation job reports as its
start-up: the process CPU time (interpreter, imports, data and model set-up, tracking
connection) until its work begins (``cpu_seconds.startup`` in ``metrics.json`` and
``evaluation.json``).

    python benchmarks/demo_startup.py             # writes benchmarks/results/demo-startup.*
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import new_tag, save, stamp

from repq.report.tables import RUN_SETS

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("Snakefile", "workflow", "config", "profiles", "environment.yml")


def run_demo(workdir: Path, cores: int) -> tuple[float, float]:
    """Wall and CPU seconds (Snakemake and all its jobs) of one demo run."""
    for name in COPIED:
        source = ROOT / name
        copy = shutil.copytree if source.is_dir() else shutil.copy
        copy(source, workdir / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    snakemake = Path(sys.executable).with_name("snakemake")
    command = [str(snakemake), "--cores", str(cores), "--profile", "profiles/default"]
    subprocess.run(command, cwd=workdir, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def job_seconds(runs: Path) -> dict[str, dict[str, float]]:
    """Per job kind (train, evaluate): count, start-up and total CPU seconds."""
    files = {"train": f"{RUN_SETS}/*/metrics.json", "evaluate": f"{RUN_SETS}/evaluation.json"}
    totals = {}
    for kind, pattern in files.items():
        seconds = [json.loads(p.read_text())["cpu_seconds"] for p in runs.glob(pattern)]
        totals[kind] = {
            "jobs": len(seconds),
            "startup": sum(s["startup"] for s in seconds),
            "total": sum(s["total"] for s in seconds),
        }
    return totals


def report(wall: float, cpu: float, jobs: dict[str, dict[str, float]]) -> str:
    startup = sum(j["startup"] for j in jobs.values())
    lines = [
        f"demo: {wall:.0f} s wall, {cpu:.0f} s CPU (Snakemake and every job)",
        "",
        "| jobs | count | start-up CPU (s) | job CPU (s) | start-up / job |",
        "|---|---|---|---|---|",
    ]
    for kind, j in jobs.items():
        share = j["startup"] / j["total"] if j["total"] else float("nan")
        lines.append(
            f"| {kind} | {j['jobs']} | {j['startup']:.0f} | {j['total']:.0f} | {share:.0%} |"
        )
    lines += ["", f"start-up share of the demo's CPU time: {startup / cpu:.1%}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cores", type=int, default=2, help="Snakemake --cores")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder"
    )
    parser.add_argument("--tag", required=True, help="name of the result files (a new one)")
    args = parser.parse_args()
    new_tag(args.out, args.tag)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        wall, cpu = run_demo(workdir, args.cores)
        jobs = job_seconds(workdir / "results" / "runs")
    text = report(wall, cpu, jobs)
    summary = {"provenance": stamp(), "wall_s": wall, "cpu_s": cpu, "jobs": jobs}
    save(args.out, args.tag, summary, text)
    print(text)


if __name__ == "__main__":
    main()
