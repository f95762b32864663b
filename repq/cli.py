"""The ``repq`` command line: every job of the workflow is one of these commands."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from repq.config import ConfigError, load_config
from repq.report.cli import add_report_commands, demo_summary, report

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


def _add_prepare_data(sub) -> None:
    p = sub.add_parser(
        "prepare-data",
        help="write the embedded mini benchmark, or check a real dataset",
        description="Write the mini benchmark (--mini) built from skimage's bundled images, "
        "or check that the data a recipe points to exists and is readable (--check).",
    )
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--mini", action="store_true", help="write the mini benchmark")
    mode.add_argument("--check", type=Path, metavar="CONFIG", help="check a recipe's data")
    p.add_argument("--out", type=Path, default=Path("results/mini"), help="mini: output folder")
    p.add_argument("--seed", type=int, default=0, help="mini: seed of every random choice")
    p.add_argument("--train-per-class", type=int, default=64, help="mini: train images/class")
    p.add_argument("--val-per-class", type=int, default=24, help="mini: val images per class")
    p.add_argument("--image-size", type=int, default=40, help="mini: classification image side")
    _override_arg(p, "check: override a key of the recipe (repeatable)")


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train FP, FP-BNest or QAT",
        description="Train one model. Outputs in --out: model.pt, deploy.pt, metrics.json, "
        "history.csv, precision.tsv, config.json. Started again with the same command, "
        "a killed job resumes from its last epoch checkpoint.",
        epilog=EPILOG,
    )
    _config_args(p)
    p.add_argument("--stage", choices=["fp", "fp-bnest", "qat"], required=True, help="stage")
    p.add_argument("--method", choices=["merged", "repq", "bnest"], help="QAT method")
    p.add_argument("--bits", type=int, choices=[8, 4], help="QAT bit width")
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
        help="evaluate a trained model's deploy form",
        description="Evaluate the deploy form of a training job's model.pt on the "
        "validation set (top-1) or every super-resolution test set (PSNR/SSIM on Y).",
        epilog=EPILOG,
    )
    _config_args(p)
    p.add_argument("--model-file", type=Path, required=True, help="a training job's model.pt")
    p.add_argument("--out", type=Path, required=True, help="metrics JSON to write")


def _add_precision(sub) -> None:
    p = sub.add_parser(
        "precision",
        help="print the per-layer precision of a QAT model",
        description="Print layer, weight bits, input bits and signedness of every quantized "
        "layer that `repq train --stage qat` would train.",
        epilog=EPILOG,
    )
    _config_args(p)
    p.add_argument("--method", choices=["merged", "repq", "bnest"], required=True, help="method")
    p.add_argument("--bits", type=int, choices=[8, 4], required=True, help="QAT bit width")


def _add_tracking_init(sub) -> None:
    p = sub.add_parser(
        "tracking-init",
        help="create the MLflow store and experiment once",
        description="Create the tracking database (SQLite by default) and the experiment "
        "before parallel jobs start, and write a marker file.",
        epilog=EPILOG,
    )
    _config_args(p)
    p.add_argument("--marker", type=Path, help="file to write when done")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="repq", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_prepare_data, _add_train, _add_evaluate, _add_precision, _add_tracking_init):
        add(sub)
    add_report_commands(sub)
    return parser


def _prepare_data(args) -> None:
    if args.mini:
        from repq.data.mini import write_mini

        manifest = write_mini(
            args.out, args.seed, args.train_per_class, args.val_per_class, args.image_size
        )
        print(f"mini benchmark written to {args.out}: {manifest['classification']}")
        return
    from repq.engine.tasks import make_task

    config = load_config(args.check, args.overrides)
    make_task(config)
    print(f"data of {args.check} checked")


def _train(args) -> None:
    from repq.engine.trainer import Job, train

    if args.stage == "qat" and (args.method is None or args.bits is None or args.init is None):
        raise ConfigError("--stage qat needs --method, --bits and --init")
    if args.stage != "qat" and (args.method or args.bits):
        raise ConfigError("--method and --bits apply to --stage qat only")
    config = load_config(args.config, args.overrides)
    if args.print_precision and args.stage == "qat":
        _print_precision(config, args.method, args.bits)
    job = Job(
        config,
        args.stage,
        args.out,
        args.method,
        args.bits,
        args.init,
        args.resume_dir,
        args.threads,
    )
    result = train(job)
    if result:
        print(f"[{job.name}] done: {result['metrics']} -> {args.out}")


def _print_precision(config: dict, method: str, bits: int) -> None:
    from repq.engine.build import build_model
    from repq.engine.trainer import precision_tsv

    print(precision_tsv(build_model(config, "qat", method, bits)), end="")


def _evaluate(args) -> None:
    from repq.engine.evaluate import evaluate

    config = load_config(args.config, args.overrides)
    result = evaluate(config, args.model_file, args.out, args.threads)
    print(f"[{result['name']}] {result['metrics']} -> {args.out}")


def _tracking_init(args) -> None:
    from repq.tracking import ensure_experiment, resolve_uri

    tracking = load_config(args.config, args.overrides).get("tracking", {})
    uri, name = resolve_uri(tracking.get("uri")), tracking.get("experiment", "repq")
    experiment = ensure_experiment(uri, name, tracking.get("artifacts"))
    if args.marker:
        args.marker.parent.mkdir(parents=True, exist_ok=True)
        args.marker.write_text(f"{uri}\n{experiment}\n")
    print(f"MLflow experiment {name} ({experiment}) at {uri}")


COMMANDS = {
    "prepare-data": _prepare_data,
    "train": _train,
    "evaluate": _evaluate,
    "tracking-init": _tracking_init,
    "report": report,
    "demo-summary": demo_summary,
    "precision": lambda args: _print_precision(
        load_config(args.config, args.overrides), args.method, args.bits
    ),
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    from repq.data.errors import DataError
    from repq.engine.checkpoint import CheckpointError
    from repq.engine.errors import TrainingDiverged
    from repq.tracking import TrackingError

    handler = COMMANDS[args.command]
    try:
        handler(args)
    except (ConfigError, DataError, CheckpointError, TrainingDiverged, TrackingError) as err:
        print(f"repq {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
