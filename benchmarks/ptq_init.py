"""Post-training quantization at initialisation: every step rule, every FP model.

For every FP model of a workflow run (``<results>/runs/<experiment>/seed0/fp``), at 8 and
4 bits, and for every weight rule and activation rule of :mod:`repq.quant.init`: the
merged model is quantized, its steps initialised from the recipe's calibration batches,
and it is evaluated without any training (the ``ptq-<bits>`` stage). This is the
measurement the default rules were chosen by.

    python benchmarks/ptq_init.py --results results     # writes benchmarks/results/ptq-init.*
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

import torch

from repq.engine.trainer import Job, Trainer
from repq.quant.init import INIT_RULES
from repq.vocab import BITS, TASKS, Stage, display_name

ROOT = Path(__file__).resolve().parents[1]


def ptq(config: dict, fp_model: Path, bits: int, weight: str, act: str, out: Path) -> dict:
    """The metrics of the calibrated, untrained PTQ model with these rules."""
    quant = {**config.get("quant", {}), "weight_init": weight, "act_init": act}
    job = Job({**config, "quant": quant}, Stage.ptq(bits), out, fp_model)
    trainer = Trainer(job)
    trainer.calibrate()
    return trainer.evaluate()


def measure(results: Path) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fp_model in sorted(results.glob("runs/*/seed0/fp/model.pt")):
            config = json.loads((fp_model.parent / "config.json").read_text())
            config["tracking"] = {"uri": f"sqlite:///{Path(tmp) / 'mlflow.db'}"}
            evaluation = json.loads((fp_model.parents[1] / "evaluation.json").read_text())
            fp = next(r["metrics"] for r in evaluation["results"] if r["stage"] == "fp")
            rules = itertools.product(INIT_RULES, repeat=2)
            for bits, (weight, act) in itertools.product(BITS, rules):
                metrics = ptq(config, fp_model, bits, weight, act, Path(tmp) / "out")
                for metric in TASKS[config["task"]].primary_keys(fp):
                    rows.append(
                        {
                            "model": display_name(config["model"]["name"]),
                            "metric": metric,
                            "fp": fp[metric],
                            "bits": bits,
                            "weight_init": weight,
                            "act_init": act,
                            "ptq": metrics[metric],
                        }
                    )
                print(rows[-1], flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    rules = list(itertools.product(INIT_RULES, repeat=2))
    header = "| model (metric) | FP | bits | " + " | ".join(f"w {w} / a {a}" for w, a in rules)
    lines = [header + " |", "|" + "---|" * (3 + len(rules))]
    keyed = {(r["model"], r["metric"], r["bits"], r["weight_init"], r["act_init"]): r for r in rows}
    for model, metric, bits in dict.fromkeys((r["model"], r["metric"], r["bits"]) for r in rows):
        cells = [keyed[(model, metric, bits, w, a)] for w, a in rules]
        values = " | ".join(f"{c['ptq']:.2f}" for c in cells)
        lines.append(f"| {model} ({metric}) | {cells[0]['fp']:.2f} | {bits} | {values} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--results", type=Path, default=ROOT / "results", help="a workflow's results"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results", help="output folder"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = measure(args.results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ptq-init.json").write_text(json.dumps(rows, indent=2))
    (args.out / "ptq-init.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
