"""The ``repq`` command line: every job of the workflow is one of these commands.

Stages, methods and bit widths come from :mod:`repq.vocab`; every clear error
(:class:`repq.errors.RepqError`) ends a command with one line and exit status 2 (3 when
only its tracking is left undelivered).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from repq.config import load_config
from repq.errors import ConfigError, RepqError, message
from repq.vocab import Stage, stage_names

EPILOG = "Configs are YAML recipes (config/recipes/*.yaml); --set a.b=value overrides a key."


def _override_arg(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.overrides``."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help_text
    )


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="YAML recipe (e.g. config/recipes/ecbsr.yaml)")
    _override_arg(
        parser, "override a config key, e.g. --set train.epochs=2 (repeatable; YAML values)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads for torch (the job's share)"
    )


def _tracking_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite results/mlflow.db)",
    )
    parser.add_argument(
        "--experiment", help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME, else repq)"
    )


def _add_prepare_data(sub) -> None:
    from repq.data.mini import MiniSpec
    from repq.data.synthetic import SyntheticSpec

    p = sub.add_parser(
        "prepare-data",
        help="write the embedded mini benchmark, or check a real dataset",
        description="Write the mini benchmark (--mini) built from skimage's bundled images, "
        "or synthetic data in the layouts of ImageNet, DIV2K and the SR benchmarks for a "
        "full-size rehearsal (--synthetic), or check that the data a recipe points to "
        "exists and is readable (--check).",
    )
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--mini", action="store_true", help="write the mini benchmark")
    mode.add_argument(
        "--synthetic", action="store_true", help="write synthetic data in the real layouts"
    )
    mode.add_argument("--check", type=Path, metavar="CONFIG", help="check a recipe's data")
    p.add_argument("--out", type=Path, default=Path("results/mini"), help="output folder")
    for kind, spec_class in (("mini", MiniSpec), ("synthetic", SyntheticSpec)):
        for spec in dataclasses.fields(spec_class):
            option = "--" + spec.name.replace("_", "-")
            help_text = f"{kind}: {spec.metadata['help']}"
            p.add_argument(option, type=int, default=spec.default, help=help_text)
    _override_arg(p, "check: override a key of the recipe (repeatable)")


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train an FP stage or QAT",
        description="Train one stage. Outputs in --out: model.pt, deploy.pt, metrics.json, "
        "history.csv, curve.png, precision.tsv, config.json. Started again with the same "
        "command, a killed job resumes from its last epoch checkpoint.",
        epilog=EPILOG,
    )
    _config_args(p)
    p.add_argument(
        "--stage",
        choices=stage_names(),
        required=True,
        metavar="STAGE",
        help=f"one of {', '.join(stage_names())}",
    )
    p.add_argument("--init", type=Path, help="QAT: the FP (or FP-BNest) model.pt to start from")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--resume-dir", type=Path, help="folder of the resumable checkpoint (default OUT/resume)"
    )
    p.add_argument(
        "--print-precision", action="store_true", help="print the per-layer precision first"
    )


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate trained models' deploy forms",
        description="Evaluate the deploy form of one or more training jobs' model.pt on the "
        "validation set (top-1) or every super-resolution test set (PSNR/SSIM on Y), "
        "building the data once; write every result into one JSON file.",
        epilog=EPILOG,
    )
    _config_args(p)
    p.add_argument("model_files", nargs="+", type=Path, help="training jobs' model.pt files")
    p.add_argument("--out", type=Path, required=True, help="results JSON to write")


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export trained PTQ/QAT models to ONNX QDQ and verify them in onnxruntime",
        description="Export each model.pt (a PTQ or QAT job's) to an ONNX file in QDQ form "
        "(opset 21: integer weight codes, INT4 or UINT8 with zero point 128, with "
        "per-output-channel steps; "
        "per-tensor activation steps), written as model.onnx beside it with export.json; "
        "verify it in onnxruntime against the PyTorch deploy model on the run's own "
        "evaluation data.",
        epilog="--set overrides a key of the config stored in the model file, e.g. "
        "--set data.root=/data/imagenet where the data has moved.",
    )
    p.add_argument("model_files", nargs="+", type=Path, help="PTQ or QAT jobs' model.pt files")
    p.add_argument("--out", type=Path, help="the ONNX file to write (one model only)")
    p.add_argument("--summary", type=Path, help="also write every report into this JSON")
    p.add_argument(
        "--no-verify", dest="verify", action="store_false", help="export only (no data needed)"
    )
    _override_arg(p, "override a key of the stored config (repeatable; YAML values)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (torch, onnxruntime)")
    _tracking_args(p)


def _add_precision(sub) -> None:
    p = sub.add_parser(
        "precision",
        help="print the per-layer precision of a QAT model",
        description="Print layer, weight bits, input bits and signedness of every quantized "
        "layer that `repq train --stage qat-<method>-<bits>` would train.",
        epilog=EPILOG,
    )
    _config_args(p)
    p.add_argument(
        "--stage",
        choices=stage_names(quantized_only=True),
        required=True,
        metavar="STAGE",
        help=f"one of {', '.join(stage_names(quantized_only=True))}",
    )


def _add_tracking_init(sub) -> None:
    p = sub.add_parser(
        "tracking-init",
        help="create the MLflow store and experiment once",
        description="Create the tracking database (SQLite by default) and the experiment "
        "before parallel jobs start, and write a marker file.",
    )
    _tracking_args(p)
    p.add_argument(
        "--artifacts", help="artifact folder (default: beside a SQLite store; a server's own)"
    )
    p.add_argument("--marker", type=Path, help="file to write when done")


def _add_tracking_sync(sub) -> None:
    p = sub.add_parser(
        "tracking-sync",
        help="deliver tracking that a job could not deliver",
        description="Deliver the records of every tracking journal (tracking.jsonl, "
        "evaluation.tracking.jsonl) under the given folders that have not reached their "
        "MLflow store yet, in order; each journal goes to the store its job logged to. "
        "Exit status 3 if some remain undelivered.",
    )
    p.add_argument(
        "folders", nargs="*", type=Path, default=[Path("results")], help="default: results"
    )


def _add_report(sub) -> None:
    report = sub.add_parser("report", help="the paper's tables and figures")
    commands = report.add_subparsers(dest="report_command", required=True)
    tables = commands.add_parser(
        "tables",
        help="the paper's tables, the claims and the Δ figure from every evaluation",
        description="Write one table per task (CSV, Markdown, LaTeX), runs.csv (every "
        "measured value), claims.csv/md and drop.png/svg into --out, and log them to one "
        "MLflow run.",
    )
    tables.add_argument("--runs", type=Path, required=True, help="results/runs")
    tables.add_argument("--out", type=Path, required=True, help="results/tables")
    _tracking_args(tables)
    snapshot = commands.add_parser(
        "snapshot",
        help="keep a finished run's tables for the docs, with their provenance",
        description="Copy <results>/tables (Markdown, CSV, the figure) into "
        "docs/results/<name>/ with provenance.json: the commits, the date, the host, the "
        "command that reproduces it, the wall time (<results>/wall_seconds, written by "
        "make) and the jobs' CPU time.",
    )
    snapshot.add_argument("--results", type=Path, required=True, help="e.g. results/ablations")
    snapshot.add_argument("--name", required=True, help="the snapshot's name, e.g. ablations")
    snapshot.add_argument("--reproduce", required=True, help="the command that reproduces the run")
    snapshot.add_argument("--config", type=Path, help="the workflow config the run used")
    snapshot.add_argument("--root", type=Path, default=Path("."), help="the repository")
    rehearsal = commands.add_parser(
        "rehearsal",
        help="what a rehearsal measured: each job's wall time and memory, the ONNX sizes",
        description="Write <results>/tables/rehearsal.md and .json from the jobs' Snakemake "
        "benchmark files, their recorded peak CUDA memory, the ONNX files and the DAG's "
        "wall time (<results>/wall_seconds).",
    )
    rehearsal.add_argument("--results", type=Path, required=True, help="results/rehearse")
    docs = commands.add_parser(
        "docs",
        help="write README.md and docs/*.md from docs/templates and the snapshots",
        description="Render every page of docs/templates over the snapshots in "
        "docs/results and the benchmark results; --check only says which committed page "
        "differs (exit 2).",
    )
    docs.add_argument("--check", action="store_true", help="compare, do not write")
    docs.add_argument("--root", type=Path, default=Path("."), help="the repository")


def _add_build_kernel(sub) -> None:
    sub.add_parser(
        "build-kernel",
        help="build the CPU kernels now (make setup does)",
        description="Build (or find built) the one-pass CPU kernel of LSQ's forward and "
        "backward, showing the compiler's output; without it torch ops run instead.",
    )


def _add_demo_summary(sub) -> None:
    summary = sub.add_parser("demo-summary", help="say where the demo's outputs are")
    summary.add_argument(
        "--results", type=Path, default=Path("results"), help="the workflow's results folder"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="repq", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_prepare_data,
        _add_train,
        _add_evaluate,
        _add_export,
        _add_precision,
        _add_tracking_init,
        _add_tracking_sync,
        _add_report,
        _add_build_kernel,
        _add_demo_summary,
    ):
        add(sub)
    return parser


def _prepare_data(args: argparse.Namespace) -> None:
    if args.mini:
        from repq.data.mini import MiniSpec, write_mini

        names = [f.name for f in dataclasses.fields(MiniSpec)]
        manifest = write_mini(args.out, MiniSpec(**{n: getattr(args, n) for n in names}))
        print(f"mini benchmark written to {args.out}: {manifest['classification']}")
        return
    if args.synthetic:
        from repq.data.synthetic import SyntheticSpec, write_synthetic

        names = [f.name for f in dataclasses.fields(SyntheticSpec)]
        spec = SyntheticSpec(**{n: getattr(args, n) for n in names})
        manifest = write_synthetic(args.out, spec, seed=args.seed)
        print(f"synthetic data written to {args.out}: {manifest['imagenet']}")
        return
    from repq.engine.tasks import make_task

    make_task(load_config(args.check, args.overrides))
    print(f"data of {args.check} checked")


def _train(args: argparse.Namespace) -> None:
    from repq.engine.trainer import Job, train

    stage = Stage.parse(args.stage)
    if stage.quantized and args.init is None:
        raise ConfigError(f"--stage {stage} needs --init (the {stage.init} model.pt)")
    if not stage.quantized and args.init is not None:
        raise ConfigError(f"--init applies to PTQ and QAT stages only, not {stage}")
    config = load_config(args.config, args.overrides)
    if args.print_precision and stage.quantized:
        _print_precision(config, stage)
    job = Job(config, stage, args.out, args.init, args.resume_dir, args.threads)
    result = train(job)
    if result:
        print(f"[{job.name}] done: {result['metrics']} -> {args.out}")


def _print_precision(config: dict, stage: Stage) -> None:
    from repq.engine.build import build_model
    from repq.qat import precision_tsv

    print(precision_tsv(build_model(config, stage)), end="")


def _precision(args: argparse.Namespace) -> None:
    _print_precision(load_config(args.config, args.overrides), Stage.parse(args.stage))


def _evaluate(args: argparse.Namespace) -> None:
    from repq.engine.evaluate import evaluate

    config = load_config(args.config, args.overrides)
    for result in evaluate(config, args.model_files, args.out, args.threads)["results"]:
        print(f"[{result['name']}] {result['metrics']}")
    print(f"-> {args.out}")


def _export(args: argparse.Namespace) -> None:
    from repq.export import export_files

    tracking = {"uri": args.tracking_uri, "experiment": args.experiment}
    for result in export_files(
        args.model_files,
        args.overrides,
        args.verify,
        args.threads,
        args.out,
        args.summary,
        tracking,
    ):
        figures = {k: result[k] for k in ("bytes", "fp32_bytes", "weight_codes_equal")}
        checked = {k: result[k] for k in ("top1_agreement", "max_abs_diff") if k in result}
        print(
            f"[{result['model']}/{result['stage']}] {result.get('metrics', {})} {figures} "
            f"{checked} -> {result['onnx_file']}"
        )


def _tracking_init(args: argparse.Namespace) -> None:
    from repq.tracking import ensure_experiment, resolve_experiment, resolve_uri, runs_url

    uri, name = resolve_uri(args.tracking_uri), resolve_experiment(args.experiment)
    experiment = ensure_experiment(uri, name, args.artifacts)
    if args.marker:
        args.marker.parent.mkdir(parents=True, exist_ok=True)
        args.marker.write_text(f"{uri}\n{experiment}\n")
    print(f"MLflow experiment {name} ({experiment}) at {uri}; runs: {runs_url(uri, experiment)}")


def _tracking_sync(args: argparse.Namespace) -> None:
    from repq.tracking import sync_journals

    sync_journals(args.folders)


def _report(args: argparse.Namespace) -> None:
    commands = {
        "tables": _report_tables,
        "snapshot": _report_snapshot,
        "rehearsal": _report_rehearsal,
        "docs": _report_docs,
    }
    commands[args.report_command](args)


def _report_rehearsal(args: argparse.Namespace) -> None:
    from repq.report.rehearsal import write_rehearsal

    print(f"rehearsal measurements: {write_rehearsal(args.results)}")


def _report_snapshot(args: argparse.Namespace) -> None:
    from repq.report.docs import take_snapshot

    docs = args.root / "docs"
    folder = take_snapshot(args.results, args.name, args.reproduce, docs, args.config)
    print(f"snapshot of {args.results} -> {folder}")


def _report_docs(args: argparse.Namespace) -> None:
    from repq.report.docs import stale_pages, write_pages

    if not args.check:
        for path in write_pages(args.root):
            print(f"wrote {path}")
        return
    stale = stale_pages(args.root)
    if stale:
        names = ", ".join(str(p) for p in stale)
        raise ConfigError(f"pages differ from their snapshots: {names} (run repq report docs)")
    print("every page is what its snapshots give")


def _report_tables(args: argparse.Namespace) -> None:
    from repq.report import write_report
    from repq.tracking import RunSpec, Tracker, source_tags

    written = write_report(args.runs, args.out)
    tracking = {"uri": args.tracking_uri, "experiment": args.experiment}
    tracker = Tracker(tracking, args.out / "tracking.jsonl")
    tracker.start(RunSpec("report", {"job": "report", **source_tags("report")}), {})
    for path in written:
        tracker.log_artifact(path)
    tracker.finish()
    tracker.close()
    print(f"tables, claims and figures written to {args.out}")


def _demo_summary(args: argparse.Namespace) -> None:
    results = args.results.resolve()
    tables = results / "tables"
    print("\nrepq demo finished.")
    for path in sorted(tables.glob("*.md")):
        print(f"\n{path}:\n{path.read_text()}")
    print(f"tables and figures: {tables}")
    print(f"HTML report:        {results / 'report.html'}")
    print(_mlflow_ui_hint(results / "tracking.ready"))


def _build_kernel(args: argparse.Namespace) -> None:
    from repq.cpu_kernel import build_and_report

    print(build_and_report())


def _mlflow_ui_hint(marker: Path) -> str:
    """How to see the runs: the server's runs table, or ``mlflow ui`` and its URL."""
    from repq.tracking import runs_url

    if not marker.exists():
        return f"MLflow UI:          (no tracking store: {marker} is missing)"
    uri, experiment = marker.read_text().split()[:2]
    url = runs_url(uri, experiment)
    if uri.startswith("sqlite:///"):
        command = f"mlflow ui --backend-store-uri {uri}"
        return f"MLflow UI:          {command}\n{'then open:':20}{url}"
    return f"MLflow runs:        {url}"


COMMANDS = {
    "prepare-data": _prepare_data,
    "train": _train,
    "evaluate": _evaluate,
    "export": _export,
    "precision": _precision,
    "tracking-init": _tracking_init,
    "tracking-sync": _tracking_sync,
    "report": _report,
    "build-kernel": _build_kernel,
    "demo-summary": _demo_summary,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    try:
        COMMANDS[args.command](args)
    except RepqError as err:
        print(f"repq {args.command}: error: {message(err)}", file=sys.stderr)
        return err.exit_status
    except OSError as err:  # a path the command cannot read or write: the text names it
        print(f"repq {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
