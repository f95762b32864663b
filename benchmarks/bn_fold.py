"""Why 4-bit RepQ trails Merged on the mini RepVGG-A0: the BN fold's statistics.

RepQ folds each block's BN with the statistics of the current batch (Algorithm 1), so
every step quantizes a kernel scaled by ``1/sqrt(batch variance)``. At the mini
benchmark's 32x32 inputs RepVGG's last stages run on 2x2 and 1x1 maps, where those
statistics rest on few values. This diagnostic retrains the 4-bit RepQ job of each seed
of a finished mini reproduction with the fold's statistics taken from the BN's running
statistics instead (BN frozen, as torch.ao's QAT recipes do late in training): every
parameter and the quantized deploy kernel stay RepQ's; only the statistics change. The
jobs' own ``qat-repq-4`` and ``qat-merged-4`` results are the references.

    python benchmarks/bn_fold.py --results results/reproduction --arch repvgg_a0
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from mini_runs import ROOT, arguments

from repq.engine.trainer import Job, Trainer
from repq.qat.repq_conv import RepQConv
from repq.reparam.stats import running_stats
from repq.vocab import Stage


def freeze_fold_statistics(trainer: Trainer) -> int:
    """Fold every RepQ block with its BN's running statistics in training too; returns
    the number of blocks changed."""
    layers = [m for m in trainer.model.modules() if isinstance(m, RepQConv)]
    for layer in layers:
        layer._stats = lambda x: running_stats
    return len(layers)


def retrain(run: Path, out: Path, bits: int, threads: int) -> dict[str, float]:
    """The best metrics of ``qat-repq-<bits>`` of one seed with frozen fold statistics."""
    config = json.loads((run / f"qat-repq-{bits}" / "config.json").read_text())
    config["tracking"] = {"uri": f"sqlite:///{(out / 'mlflow.db').resolve()}"}
    stage = Stage.parse(f"qat-repq-{bits}")
    job = Job(config, stage, out / run.name, run / "fp" / "model.pt", threads=threads)
    trainer = Trainer(job)
    print(f"{run.name}: {freeze_fold_statistics(trainer)} blocks folded with running stats")
    return trainer.run()["metrics"]


def reference(run: Path, stage: str) -> float:
    return json.loads((run / stage / "metrics.json").read_text())["metrics"]["top1"]


def main() -> None:
    parser = arguments(__doc__.splitlines()[0], "bn-fold")
    args = parser.parse_args()
    rows = []
    for run in sorted((args.results / "runs" / args.arch).glob("seed*")):
        frozen = retrain(run, args.out / args.arch, args.bits, args.threads)["top1"]
        merged = reference(run, f"qat-merged-{args.bits}")
        batch = reference(run, f"qat-repq-{args.bits}")
        rows.append({"seed": run.name, "merged": merged, "batch": batch, "frozen": frozen})
    lines = [
        f"| seed | {args.bits}-bit Merged | RepQ, batch statistics | RepQ, running statistics |",
        "|---|---|---|---|",
        *(
            f"| {r['seed']} | {r['merged']:.2f} | {r['batch']:.2f} | {r['frozen']:.2f} |"
            for r in rows
        ),
    ]
    means = {k: statistics.fmean(r[k] for r in rows) for k in ("merged", "batch", "frozen")}
    lines.append(f"| mean | {means['merged']:.2f} | {means['batch']:.2f} | {means['frozen']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    target = ROOT / "benchmarks" / "results" / f"bn-fold-{args.arch}-{args.bits}.md"
    target.write_text(text)


if __name__ == "__main__":
    main()
