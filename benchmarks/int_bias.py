"""What the int32 bias costs at 4 bits: training with it against training with a float
bias, both deployed as an integer engine runs them.

An integer engine adds the bias to its int32 accumulator, so the deployed bias is an
integer multiple of ``s_x * s_w[c]``; the layers evaluate and deploy with that bias and
train with a float one. This diagnostic retrains each seed's 4-bit Merged and RepQ job
of a finished mini reproduction both ways (the int32 bias in training too, straight
through, or the float bias) and evaluates each deploy model with the int32 bias (what
onnxruntime runs) and with a float bias.

    python benchmarks/int_bias.py --results results/reproduction --arch repvgg_a0
"""

from __future__ import annotations

import contextlib
import copy
import json
import statistics
from pathlib import Path

import torch
from mini_runs import ROOT, arguments

from repq.engine.tasks import make_task
from repq.engine.trainer import Job, Trainer
from repq.qat import to_deploy
from repq.quant.layers import QuantLayer
from repq.vocab import Stage


@contextlib.contextmanager
def patched(name: str, bias):
    """``QuantLayer.<name>`` replaced by ``bias`` for the duration."""
    original = getattr(QuantLayer, name)
    setattr(QuantLayer, name, bias)
    try:
        yield
    finally:
        setattr(QuantLayer, name, original)


def int32_in_training_too():
    """Forward passes add the deployed (int32) bias in training too."""
    return patched("forward_bias", QuantLayer.deploy_bias)


def float_everywhere():
    """Deploy models (and eval passes) keep the float bias."""
    return patched("deploy_bias", lambda layer, value: value)


def train(run: Path, out: Path, method: str, bits: int, train_float: bool, threads: int):
    """The trained QAT model of one seed (its selected epoch), and its config."""
    config = copy.deepcopy(json.loads((run / "fp" / "config.json").read_text()))
    config["tracking"] = {"uri": f"sqlite:///{(out / 'mlflow.db').resolve()}"}
    folder = out / run.name / f"{method}-{bits}-{'float' if train_float else 'int32'}"
    job = Job(config, Stage.qat(method, bits), folder, run / "fp" / "model.pt", threads=threads)
    with contextlib.nullcontext() if train_float else int32_in_training_too():
        trainer = Trainer(job)
        trainer.run()
        model = trainer.model
        model.load_state_dict(torch.load(folder / "model.pt", weights_only=True)["model"])
    return model.eval(), config


def deployed_top1(model, config: dict, int32: bool) -> float:
    task = make_task(config, train=False)
    with contextlib.nullcontext() if int32 else float_everywhere():
        deploy = to_deploy(model)
        return task.evaluate(deploy, torch.device("cpu"))["top1"]


def main() -> None:
    parser = arguments(__doc__.splitlines()[0], "bias")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for method in ("merged", "repq"):
        for train_float in (False, True):
            for run in sorted((args.results / "runs" / args.arch).glob("seed*")):
                out = args.out / args.arch
                model, config = train(run, out, method, args.bits, train_float, args.threads)
                row = {
                    "method": method,
                    "trained with": "float bias" if train_float else "int32 bias",
                    "seed": run.name,
                    "int32": deployed_top1(model, config, True),
                    "float": deployed_top1(model, config, False),
                }
                rows.append(row)
                print(row, flush=True)
    lines = [
        f"| {args.bits}-bit method | trained with | deployed int32 bias (per seed) | mean "
        "| deployed float bias (per seed) | mean |",
        "|---|---|---|---|---|---|",
    ]
    for method in ("merged", "repq"):
        for trained in ("int32 bias", "float bias"):
            chosen = [r for r in rows if r["method"] == method and r["trained with"] == trained]
            cells = []
            for key in ("int32", "float"):
                values = [r[key] for r in chosen]
                cells += [" / ".join(f"{v:.2f}" for v in values), f"{statistics.fmean(values):.2f}"]
            lines.append(f"| {method} | {trained} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    (ROOT / "benchmarks" / "results" / f"int-bias-{args.arch}-{args.bits}.md").write_text(text)


if __name__ == "__main__":
    main()
