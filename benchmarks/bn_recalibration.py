"""Is a collapsed QAT model's loss in its BatchNorm running statistics?

In eval mode (what is deployed) every BN is folded with its running statistics, an
exponential average of the statistics each training step saw (RepQ: measured by the
branch's float conv; RepQ-BNest: estimated, S3/S8). When the kernels move faster than
the average follows, those statistics no longer describe the trained kernels. This
diagnostic evaluates each seed's trained model of the given stages twice on the
validation set: as trained, and after its running statistics are re-estimated with the
model fixed (a pass over the training set in training mode, no gradient, every BN's
momentum ``None``: the plain mean over the pass), as in BN re-estimation after QAT
(Nagel et al., ICML 2022, "Overcoming oscillations in quantization-aware training").

    python benchmarks/bn_recalibration.py --results results/reproduction --arch repvgg_a0
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch
from mini_runs import ROOT, arguments
from torch import nn
from torch.utils.data import DataLoader

from repq.data.sampling import EpochSampler
from repq.engine.build import deploy_form, model_from_file
from repq.engine.tasks import make_task
from repq.vocab import Stage

METHODS_COMPARED = ("bnest", "repq")


@torch.no_grad()
def reestimate_running_stats(model: nn.Module, loader: DataLoader) -> int:
    """Replace every BN's running statistics by their plain mean over ``loader``'s
    batches (the model in training mode, nothing else changes); returns the BN count."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    for inputs, _ in loader:
        model(inputs)
    model.eval()
    return len(norms)


def top1(task, model: nn.Module, stage) -> float:
    return task.evaluate(deploy_form(model, stage), torch.device("cpu"))["top1"]


def seed_rows(run: Path, bits: int) -> list[dict]:
    rows = []
    bnest = Stage.qat("bnest", bits)
    for stage_name in (str(bnest.init), *(str(Stage.qat(m, bits)) for m in METHODS_COMPARED)):
        path = run / stage_name / "model.pt"
        model, content, stage = model_from_file(path)
        task = make_task(content["config"])
        data = task.train_set()
        batch = content["config"]["train"]["batch_size"]
        loader = DataLoader(data, batch, sampler=EpochSampler(len(data), 0, True))
        trained = top1(task, model, stage)
        count = reestimate_running_stats(model, loader)
        rows.append(
            {
                "seed": run.name,
                "stage": str(stage),
                "norms": count,
                "trained": trained,
                "reestimated": top1(task, model, stage),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| seed | stage | BN layers | top-1 as trained | top-1, running statistics re-estimated |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['seed']} | {r['stage']} | {r['norms']} | {r['trained']:.2f} | "
        f"{r['reestimated']:.2f} |"
        for r in rows
    ]
    for stage in dict.fromkeys(r["stage"] for r in rows):
        of = [r for r in rows if r["stage"] == stage]
        trained = statistics.fmean(r["trained"] for r in of)
        reestimated = statistics.fmean(r["reestimated"] for r in of)
        lines.append(f"| mean | {stage} | | {trained:.2f} | {reestimated:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = arguments(__doc__.splitlines()[0], "bn-recalibration").parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for run in sorted((args.results / "runs" / args.arch / args.variant).glob("seed*")):
        rows += seed_rows(run, args.bits)
    text = markdown(rows)
    print(text)
    target = ROOT / "benchmarks" / "results" / f"bn-recalibration-{args.arch}-{args.bits}.md"
    target.write_text(text)


if __name__ == "__main__":
    main()
