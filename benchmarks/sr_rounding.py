"""How much rounding the SR output to 8 bits before scoring changes PSNR and SSIM.

Official ECBSR scores the clamped, unrounded output (repq's default); rounding first
(``data.round_output: true``) scores the image a user would save. This diagnostic
evaluates every seed's trained model of every stage of an SR architecture in a finished
run, both ways, on every test set, and reports the mean difference (unrounded minus
rounded; the same models, the same images).

    python benchmarks/sr_rounding.py --results results/reproduction --arch ecbsr_x2 \
        --tag sr-rounding-ecbsr_x2
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch
from mini_runs import ROOT, arguments
from record import new_tag, save, stamp

from repq.engine.build import deploy_form, model_from_file
from repq.engine.tasks import make_task


def stage_scores(path: Path) -> dict[str, dict[str, float]]:
    """``{"<metric>/<test set>": {"unrounded": mean, "rounded": mean}}`` of one stage."""
    model, content, stage = model_from_file(path)
    task = make_task(content["config"], train=False)
    deployed = deploy_form(model, stage).eval()
    scores: dict[str, dict[str, float]] = {}
    for convention, rounded in (("unrounded", False), ("rounded", True)):
        task.round_output = rounded
        for key, items in task.scores(deployed, torch.device("cpu")).items():
            scores.setdefault(key, {})[convention] = items.mean().item()
    return scores


def markdown(result: dict) -> str:
    lines = [
        f"PSNR (dB) and SSIM on Y of {result['arch']} ({result['models']} trained models: "
        "every seed and stage), unrounded minus rounded output",
        "",
        "| metric | mean unrounded | mean rounded | mean difference | min | max |",
        "|---|---|---|---|---|---|",
    ]
    for key, row in result["differences"].items():
        digits = 4 if key.startswith("psnr") else 5
        lines.append(
            f"| {key} | {row['unrounded']:.{digits}f} | {row['rounded']:.{digits}f} | "
            f"{row['mean']:+.{digits}f} | {row['min']:+.{digits}f} | {row['max']:+.{digits}f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = arguments(__doc__.splitlines()[0], "sr-rounding")
    parser.add_argument("--tag", required=True, help="name of the result files (a new one)")
    args = parser.parse_args()
    out = ROOT / "benchmarks" / "results"
    new_tag(out, args.tag)
    torch.set_num_threads(args.threads)
    runs = sorted((args.results / "runs" / args.arch / args.variant).glob("seed*/*/model.pt"))
    if not runs:
        raise SystemExit(f"no trained models under {args.results / 'runs' / args.arch}")
    per_model = [stage_scores(path) for path in runs]
    differences = {}
    for key in per_model[0]:
        deltas = [s[key]["unrounded"] - s[key]["rounded"] for s in per_model]
        differences[key] = {
            "unrounded": statistics.fmean(s[key]["unrounded"] for s in per_model),
            "rounded": statistics.fmean(s[key]["rounded"] for s in per_model),
            "mean": statistics.fmean(deltas),
            "min": min(deltas),
            "max": max(deltas),
        }
    result = {
        "provenance": stamp(),
        "arch": args.arch,
        "models": len(runs),
        "stages": sorted({path.parent.name for path in runs}),
        "differences": differences,
    }
    save(out, args.tag, result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
