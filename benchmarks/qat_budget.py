"""Is 4-bit RepQ behind Merged on the mini RepVGG-A0 a matter of the QAT budget?

Both methods start from the same calibrated model (the same function), so the gap comes
from training. In RepQ, SGD moves the branch weights ``W_b`` under their BN, so a step
moves the merged kernel by about ``(g_b / sigma_b)^2`` times what the same LR moves
Merged's kernel (``sigma_b``: the branch's output std, ``g_b``: its BN weight). This
script measures that factor on each FP model, then trains both methods from each seed's
FP model with the mini recipe's QAT (8 epochs), four times as long (32), and with three
times the weights' LR (steps' LR unchanged), the same change for both methods.

    python benchmarks/qat_budget.py --results results/reproduction --arch repvgg_a0
"""

from __future__ import annotations

import copy
import json
import statistics
from pathlib import Path

import torch
from mini_runs import ROOT, arguments
from torch import nn

from repq.engine.build import model_from_file
from repq.engine.trainer import Job, Trainer
from repq.vocab import Stage

VARIANTS = (
    ("merged", 8, 1.0),
    ("repq", 8, 1.0),
    ("merged", 32, 1.0),
    ("repq", 32, 1.0),
    ("merged", 8, 3.0),
    ("repq", 8, 3.0),
)


def kernel_lr_factor(fp_model: Path) -> float:
    """Median over BN layers of the median ``(g / sqrt(running_var + eps))^2``."""
    model, _, _ = model_from_file(fp_model)
    factors = [
        (m.weight / (m.running_var + m.eps).sqrt()).square().median().item()
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d)
    ]
    return statistics.median(factors)


def train(run: Path, out: Path, bits: int, variant: tuple, threads: int) -> float:
    """Best top-1 of one variant trained from the seed's FP model."""
    method, epochs, lr_scale = variant
    stage = Stage.qat(method, bits)
    config = copy.deepcopy(json.loads((run / "fp" / "config.json").read_text()))
    config["tracking"] = {"uri": f"sqlite:///{(out / 'mlflow.db').resolve()}"}
    train_cfg = config["train"]
    train_cfg.setdefault("qat", {})["epochs"] = epochs
    train_cfg["lr"]["quantized"] = train_cfg["lr"]["quantized"] * lr_scale
    folder = out / run.name / f"{method}-{epochs}-lr{lr_scale:g}"
    job = Job(config, stage, folder, run / "fp" / "model.pt", threads=threads)
    return Trainer(job).run()["metrics"]["top1"]


def table(rows: list[dict], bits: int) -> str:
    """Per variant: each seed, mean ± std, and RepQ minus Merged paired by seed."""
    seeds = sorted({r["seed"] for r in rows})
    header = f"| {bits}-bit variant | " + " | ".join(seeds) + " | mean ± std |"
    lines = [header, "|---" * (len(seeds) + 2) + "|"]
    for variant in VARIANTS:
        values = [r["top1"] for r in rows if r["variant"] == variant]
        text = " | ".join(f"{v:.2f}" for v in values)
        name = f"{variant[0]}, {variant[1]} epochs, LR x{variant[2]:g}"
        lines.append(f"| {name} | {text} | {_mean_std(values)} |")
    for epochs, lr_scale in dict.fromkeys((v[1], v[2]) for v in VARIANTS):
        by = {
            m: [r["top1"] for r in rows if r["variant"] == (m, epochs, lr_scale)]
            for m in ("repq", "merged")
        }
        gaps = [a - b for a, b in zip(by["repq"], by["merged"], strict=True)]
        text = " | ".join(f"{g:+.2f}" for g in gaps)
        name = f"RepQ - Merged, {epochs} epochs, LR x{lr_scale:g}"
        lines.append(f"| {name} | {text} | {_mean_std(gaps, signed=True)} |")
    return "\n".join(lines) + "\n"


def _mean_std(values: list[float], signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{statistics.fmean(values):{sign}.2f} ± {statistics.stdev(values):.2f}"


def main() -> None:
    parser = arguments(__doc__.splitlines()[0], "budget")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = sorted((args.results / "runs" / args.arch).glob("seed*"))
    factors = {run.name: kernel_lr_factor(run / "fp" / "model.pt") for run in runs}
    rows = []
    target = ROOT / "benchmarks" / "results" / f"qat-budget-{args.arch}-{args.bits}.md"
    for variant in VARIANTS:
        for run in runs:
            top1 = train(run, args.out / args.arch, args.bits, variant, args.threads)
            rows.append({"seed": run.name, "variant": variant, "top1": top1})
            print(run.name, variant, f"{top1:.2f}", flush=True)
    factor_text = ", ".join(f"{seed} {value:.2f}" for seed, value in factors.items())
    text = (
        f"Kernel-space LR factor of RepQ's BN branches, median (g/sigma)^2: {factor_text}\n\n"
        + table(rows, args.bits)
    )
    print(text)
    target.write_text(text)


if __name__ == "__main__":
    main()
