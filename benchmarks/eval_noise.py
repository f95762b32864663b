"""How much of the seed-to-seed spread of a claim's difference is the finite validation
set: per classification claim of ``repq.report.claims`` and per seed, the paired
difference ``a - b`` in top-1 and its standard error over the validation images
(``sd_i(correct_a,i - correct_b,i) / sqrt(n)``), against the spread of the differences
over the seeds. Where the within-seed error is about the across-seed spread, a larger
validation set narrows the claims' intervals; where it is far below, only more seeds do.

    python benchmarks/eval_noise.py results/reproduction    # -> benchmarks/results/eval-noise.md
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import torch

from repq.engine.build import deploy_form, model_from_file
from repq.engine.tasks import ClassificationTask
from repq.report.claims import CLAIMS
from repq.vocab import Stage

ROOT = Path(__file__).resolve().parents[1]


def correct(task: ClassificationTask, path: Path) -> torch.Tensor:
    """1.0 where the deploy form of ``path``'s model is right, per validation image."""
    model, _, stage = model_from_file(path)
    predicted, labels = task.predict(deploy_form(model, stage), torch.device("cpu"))
    return (predicted == labels).double()


def paired_difference(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Top-1 difference ``a - b`` in points and its standard error over the images."""
    per_image = a - b
    n = per_image.numel()
    return 100 * per_image.mean().item(), 100 * per_image.std().item() / math.sqrt(n)


def seeds_of(experiment: Path) -> list[Path]:
    return sorted(experiment.glob("seed*"), key=lambda p: int(p.name.removeprefix("seed")))


def model_file(seed: Path, stage: Stage) -> Path:
    return seed / str(stage) / "model.pt"


def experiment_rows(experiment: Path) -> list[dict]:
    seeds = seeds_of(experiment)
    fp = model_file(seeds[0], Stage("fp"))
    config = model_from_file(fp)[1]["config"]
    if config["task"] != "classification":
        return []
    task = ClassificationTask({**config, "data": {**config["data"], "cache": True}}, train=False)
    rows = []
    for claim in CLAIMS:
        pairs = [(model_file(s, claim.a), model_file(s, claim.b)) for s in seeds]
        if not all(a.exists() and b.exists() for a, b in pairs):
            continue
        found = [paired_difference(correct(task, a), correct(task, b)) for a, b in pairs]
        differences = [d for d, _ in found]
        rows.append(
            {
                "model": experiment.name,
                "difference": f"{claim.a.display} - {claim.b.display}",
                "n": len(found),
                "per seed": ", ".join(f"{d:+.2f}" for d in differences),
                "sd over seeds": statistics.stdev(differences) if len(found) > 1 else math.nan,
                "within-seed SE": statistics.fmean(se for _, se in found),
            }
        )
    return rows


def markdown(rows: list[dict], results: Path) -> str:
    lines = [
        f"`python benchmarks/eval_noise.py {results}`: top-1 points; within-seed SE is the "
        "mean over the seeds of the paired standard error over the validation images",
        "",
        "| model | difference | n | per seed | sd over seeds | within-seed SE | SE / sd |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["within-seed SE"] / r["sd over seeds"]
        lines.append(
            f"| {r['model']} | {r['difference']} | {r['n']} | {r['per seed']} | "
            f"{r['sd over seeds']:.2f} | {r['within-seed SE']:.2f} | {ratio:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a results folder with runs/")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [r for e in sorted((args.results / "runs").iterdir()) for r in experiment_rows(e)]
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, args.results)
    (args.out / "eval-noise.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
