"""Where 4-bit RepQ-BNest starts on the mini RepVGG-A0: its quantized model at QAT step 0.

For each seed of a finished mini reproduction this rebuilds the 4-bit RepQ model (from
the FP model) and the 4-bit RepQ-BNest model (from the FP-BNest model) as their QAT jobs
do, calibrates their steps on the same batches, and measures, before any training step:
the top-1 of the calibrated model (eval mode, the deploy kernel); the loss on the first
training batch in training mode (what the first step trains) and in eval mode, and the
first step's gradient norm; the SQNR of every layer's 4-bit input quantizer on that
batch, and how unequal the scales of its input channels are (max over median of the
per-channel RMS; one per-tensor step serves every channel, so a wide spread rounds the
small channels to zero). The QAT jobs' final top-1 is read from their ``metrics.json``.

    python benchmarks/bnest_inputs.py --results results/reproduction --arch repvgg_a0
"""

from __future__ import annotations

import copy
import json
import statistics
from pathlib import Path

import torch
from mini_runs import ROOT, arguments
from torch import Tensor

from repq.engine.build import deploy_form
from repq.engine.trainer import Job, Trainer
from repq.qat.health import health_rows, quant_layers
from repq.vocab import Stage

METHODS_COMPARED = ("repq", "bnest")


@torch.no_grad()
def channel_spread(model: torch.nn.Module, batch: Tensor) -> dict[str, float]:
    """Layer name -> max / median of its float input's per-channel RMS on ``batch``."""
    spread: dict[str, float] = {}
    hooks = []
    for name, layer in quant_layers(model):

        def record(module, inputs, name=name) -> None:
            x = inputs[0].float().transpose(0, 1).flatten(1)  # [channels, the rest]
            rms = x.square().mean(1).sqrt()
            spread[name] = float(rms.max() / rms.median().clamp_min(1e-12))

        hooks.append(layer.register_forward_pre_hook(record))
    model.eval()(batch)
    for hook in hooks:
        hook.remove()
    return spread


def first_batch_losses(trainer: Trainer) -> dict[str, float]:
    """The loss on the first training batch in training mode (BN folded with the batch's
    measured or estimated statistics, what the first step trains) and in eval mode
    (running statistics, what is deployed), and the gradient norm of the first step."""
    inputs, target = next(iter(trainer.loader))
    model = copy.deepcopy(trainer.model)  # training mode updates running statistics
    with torch.no_grad():
        eval_loss = trainer.task.loss(model.eval()(inputs), target).item()
    loss = trainer.task.loss(model.train()(inputs), target)
    loss.backward()
    grads = [p.grad.norm() for p in model.parameters() if p.grad is not None]
    return {
        "loss_train_mode": loss.item(),
        "loss_eval_mode": eval_loss,
        "grad_norm": torch.stack(grads).norm().item(),
    }


def at_step0(run: Path, method: str, bits: int, out: Path, threads: int) -> list[dict]:
    """Per quantized layer of ``qat-<method>-<bits>`` of one seed, before training."""
    stage = Stage.qat(method, bits)
    config = json.loads((run / str(stage) / "config.json").read_text())
    config["tracking"] = {"uri": f"sqlite:///{(out / 'mlflow.db').resolve()}"}
    init = run / str(stage.init) / "model.pt"
    job = Job(config, stage, out / run.name / str(stage), init, threads=threads)
    trainer = Trainer(job)
    trainer.calibrate()
    batch = next(trainer.batches(1))
    top1 = trainer.task.evaluate(deploy_form(trainer.model, job.stage), trainer.ctx.device)
    spread = channel_spread(trainer.model, batch)
    losses = first_batch_losses(trainer)
    rows = health_rows(trainer.model, trainer.clipped_init, batch)
    final = json.loads((run / str(stage) / "metrics.json").read_text())["metrics"]["top1"]
    return [
        {
            **row,
            "seed": run.name,
            "method": method,
            "channel_spread": spread[row["layer"]],
            "top1_step0": top1["top1"],
            "top1_final": final,
            **losses,
        }
        for row in rows
    ]


def summary(rows: list[dict]) -> str:
    """Per seed and method: top-1 at step 0 and at the end, and the medians over the
    layers of each stage of the input SQNR and the channel spread."""
    stages = sorted(
        {r["layer"].rsplit(".", 1)[0] for r in rows if r["layer"].startswith("stages.")}
    )
    head = " | ".join(f"{s}: SQNR dB / spread" for s in stages)
    lines = [
        "| seed | method | top-1 step 0 | top-1 final | first batch: loss train / eval mode, "
        f"grad norm | {head} |"
    ]
    lines.append("|---" * (5 + len(stages)) + "|")
    for key in dict.fromkeys((r["seed"], r["method"]) for r in rows):
        of = [r for r in rows if (r["seed"], r["method"]) == key]
        cells = []
        for stage in stages:
            layers = [r for r in of if r["layer"].rsplit(".", 1)[0] == stage]
            sqnr = statistics.median(r["input_sqnr_db"] for r in layers)
            spread = statistics.median(r["channel_spread"] for r in layers)
            cells.append(f"{sqnr:.1f} / {spread:.1f}")
        lines.append(
            f"| {key[0]} | {key[1]} | {of[0]['top1_step0']:.2f} | {of[0]['top1_final']:.2f} | "
            f"{of[0]['loss_train_mode']:.3f} / {of[0]['loss_eval_mode']:.3f}, "
            f"{of[0]['grad_norm']:.3g} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    args = arguments(__doc__.splitlines()[0], "bnest-inputs").parse_args()
    rows = []
    for run in sorted((args.results / "runs" / args.arch / args.variant).glob("seed*")):
        for method in METHODS_COMPARED:
            rows += at_step0(run, method, args.bits, args.out, args.threads)
    text = summary(rows)
    print(text)
    name = f"bnest-inputs-{args.arch}-{args.bits}"
    (ROOT / "benchmarks" / "results" / f"{name}.md").write_text(text)
    (ROOT / "benchmarks" / "results" / f"{name}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
