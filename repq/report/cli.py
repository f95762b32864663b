"""``repq report tables`` and ``repq demo-summary``."""

from __future__ import annotations

import argparse
from pathlib import Path

from repq.config import load_config


def add_report_commands(sub) -> None:
    report = sub.add_parser("report", help="the paper's tables and figures")
    commands = report.add_subparsers(dest="report_command", required=True)
    tables = commands.add_parser(
        "tables",
        help="the paper's tables and the drop figure from every eval.json",
        description="Write classification and superres tables (CSV, Markdown, LaTeX) and "
        "drop.png/svg into --out, and log them to one MLflow run.",
    )
    tables.add_argument("config", type=Path, help="a recipe (its tracking section is used)")
    tables.add_argument("--runs", type=Path, required=True, help="results/runs")
    tables.add_argument("--out", type=Path, required=True, help="results/tables")
    tables.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the recipe, e.g. tracking.experiment=repq-demo",
    )
    summary = sub.add_parser("demo-summary", help="say where the demo's outputs are")
    summary.add_argument(
        "--results", type=Path, default=Path("results"), help="the workflow's results folder"
    )


def report(args: argparse.Namespace) -> None:
    from repq.report.figures import drop_figure
    from repq.report.tables import write_tables

    tables = write_tables(args.runs, args.out)
    figures = drop_figure(tables["classification"], tables["superres"], args.out / "drop")
    _log_report(load_config(args.config, args.overrides), args.out, figures)
    print(f"tables and figures written to {args.out}")


def _log_report(config: dict, out: Path, figures: list[Path]) -> None:
    from repq.tracking import Tracker, git_commit

    tracker = Tracker(config.get("tracking", {}))
    tracker.start("report", {"job": "report", "git_commit": git_commit()}, {})
    for path in sorted(out.glob("*.*")):
        tracker.log_artifact(path)
    tracker.finish()


def demo_summary(args: argparse.Namespace) -> None:
    results = args.results.resolve()
    tables = results / "tables"
    print("\nrepq demo finished.")
    for name in ("classification.md", "superres.md"):
        path = tables / name
        if path.exists():
            print(f"\n{path}:\n{path.read_text()}")
    print(f"tables and figures: {tables}")
    print(f"HTML report:        {results / 'report.html'}")
    print(f"MLflow UI:          mlflow ui --backend-store-uri sqlite:///{results / 'mlflow.db'}")
