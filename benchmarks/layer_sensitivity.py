"""Which quantizer of a finished quantized model costs its accuracy: one layer at a time.

For one trained PTQ or QAT model (``runs/<arch>/<variant>/seed<k>/<stage>/model.pt`` of
a finished workflow) this evaluates, on the run's own validation data, in eval mode and
in its fake-quantized form:
the model as trained; with every weight quantizer off, then every input quantizer off;
and, from the model with every quantizer of one kind off, each layer's quantizer of
that kind alone on. A layer whose quantizer alone takes most of the loss is where the
model's quantization fails; ``health.csv`` of the same run gives the layer's weight
outlier ratio and SQNR beside it.

    python benchmarks/layer_sensitivity.py --results results/timm --arch mobileone_s0 \
        --stage ptq-8 --tag timm-ptq8-sensitivity-<date>
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
from mini_runs import ROOT
from record import new_tag, save, stamp

from repq.engine.build import model_from_file
from repq.engine.tasks import make_task
from repq.qat.health import quant_layers

KINDS = ("weight_quant", "input_quant")


def _set(layers: list, kind: str, on: bool) -> None:
    for _, layer in layers:
        getattr(layer, kind).enabled = on


def sensitivity(model: torch.nn.Module, score: Callable[[], float]) -> dict:
    """The metric as trained, with each kind of quantizer off, and per layer with only
    that layer's quantizer of the kind on."""
    layers = quant_layers(model)
    result: dict = {"as_trained": score(), "all_off": {}, "alone": {}}
    for kind in KINDS:
        _set(layers, kind, False)
        result["all_off"][kind] = score()
        result["alone"][kind] = {}
        for name, layer in layers:
            getattr(layer, kind).enabled = True
            result["alone"][kind][name] = score()
            getattr(layer, kind).enabled = False
        _set(layers, kind, True)
    return result


def markdown(result: dict, shown: int = 8) -> str:
    lines = [
        f"### {result['model_file']} ({result['metric']})",
        "",
        f"as trained: {result['as_trained']:.2f}",
        "",
    ]
    for kind in KINDS:
        base = result["all_off"][kind]
        alone = sorted(result["alone"][kind].items(), key=lambda item: item[1])[:shown]
        lines += [
            f"every {kind} off: {base:.2f}; the {shown} layers whose {kind} alone costs most:",
            "",
            "| layer | metric | change |",
            "|---|---|---|",
            *(f"| {name} | {value:.2f} | {value - base:+.2f} |" for name, value in alone),
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results" / "timm")
    parser.add_argument("--arch", default="mobileone_s0")
    parser.add_argument("--variant", default="base")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stage", default="ptq-8", help="e.g. ptq-8, qat-repq-4")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", required=True, help="name of the result files (a new one)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    new_tag(args.out, args.tag)
    torch.set_num_threads(args.threads)
    run = args.results / "runs" / args.arch / args.variant / f"seed{args.seed}" / args.stage
    task = make_task(json.loads((run / "config.json").read_text()), train=False)
    model, _, _ = model_from_file(run / "model.pt")
    model.eval()

    def score() -> float:
        return task.evaluate(model, torch.device("cpu"))[task.primary]

    result = {
        "provenance": stamp(),
        "model_file": str(run.relative_to(args.results) / "model.pt"),
        "metric": task.primary,
        **sensitivity(model, score),
    }
    save(args.out, args.tag, result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
