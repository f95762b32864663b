"""Seconds per FP epoch of the mini benchmark's classification (the training pass and the
validation), with and without ``data.cache``, interleaved (each once per round) in one
process on one thread, after one warm-up round that fills the cache.

The data are the mini benchmark at its default size (1,920 training and 1,200 validation
images of 40x40, cropped to 32), the model RepVGG-A0 at width 1/4 as in ``config/mini.yaml``,
the loader the trainer's (``EpochSampler``, batch 64, no workers).

    python benchmarks/mini_epoch.py --rounds 5      # writes benchmarks/results/mini-epoch.*
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from record import new_tag, save, stamp
from torch.utils.data import DataLoader

from repq.config import load_config
from repq.data.mini import MiniSpec, write_mini
from repq.data.sampling import EpochSampler
from repq.engine.tasks import ClassificationTask
from repq.models import create

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "config" / "recipes" / "repvgg_a0.yaml"
BATCH = 64


def mini_config(root: Path, cache: bool) -> dict:
    overrides = [
        f"data.root={root / 'cls'}",
        "data.image_size=32",
        "data.resize=36",
        "data.crop_scale=[0.35, 1.0]",
        "data.workers=0",
        f"data.cache={str(cache).lower()}",
        "model.kwargs.num_classes=12",
        "model.kwargs.width_mult=0.25",
        f"train.batch_size={BATCH}",
    ]
    return load_config(RECIPE, overrides)


class Variant:
    """One pipeline with its own copy of the model and optimiser."""

    def __init__(self, config: dict, model: torch.nn.Module) -> None:
        self.task = ClassificationTask(config)
        data = self.task.train_set()
        self.sampler = EpochSampler(len(data), seed=0, shuffle=True)
        self.loader = DataLoader(data, BATCH, sampler=self.sampler, drop_last=True)
        self.model = copy.deepcopy(model)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.epoch = 0

    def run_epoch(self) -> dict[str, float]:
        self.sampler.set_epoch(self.epoch)
        self.epoch += 1
        self.model.train()
        start = time.perf_counter()
        for images, target in self.loader:
            loss = torch.nn.functional.cross_entropy(self.model(images), target)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        trained = time.perf_counter()
        self.model.eval()
        self.task.evaluate(self.model, torch.device("cpu"))
        done = time.perf_counter()
        return {"train": trained - start, "validate": done - trained, "epoch": done - start}


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(rounds: int, spec: MiniSpec) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create("repvgg_a0", num_classes=12, width_mult=0.25)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_mini(root, spec)
        variants = {
            "read every epoch": Variant(mini_config(root, False), model),
            "data.cache": Variant(mini_config(root, True), model),
        }
        for variant in variants.values():
            variant.run_epoch()  # warm-up; fills the cache
        times: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, variant in variants.items():
                times[name].append(variant.run_epoch())
    ratios = [c["epoch"] / r["epoch"] for r, c in zip(*times.values(), strict=True)]
    return {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "rounds": rounds,
        "images": {"train": spec.train_per_class * 12, "val": spec.val_per_class * 12},
        "seconds": {
            name: {part: spread([t[part] for t in rows]) for part in rows[0]}
            for name, rows in times.items()
        },
        "epoch_time_cached_vs_read": spread(ratios),
    }


def markdown(result: dict) -> str:
    images = result["images"]
    lines = [
        f"One core, {result['rounds']} rounds, one FP epoch of RepVGG-A0 (width 1/4) on the "
        f"mini benchmark ({images['train']} training, {images['val']} validation images; "
        f"torch {result['torch']}); seconds, median (min-max)",
        "",
        "| pipeline | training pass | validation | epoch |",
        "|---|---|---|---|",
    ]
    for name, parts in result["seconds"].items():
        cells = [f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})" for s in parts.values()]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    ratio = result["epoch_time_cached_vs_read"]
    lines += [
        "",
        f"Epoch time with `data.cache` / without: {ratio['median']:.2f} "
        f"({ratio['min']:.2f}-{ratio['max']:.2f})",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--train-per-class", type=int, default=MiniSpec.train_per_class)
    parser.add_argument("--val-per-class", type=int, default=MiniSpec.val_per_class)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--tag", required=True, help="name of the result files (a new one)")
    args = parser.parse_args()
    new_tag(args.out, args.tag)
    spec = MiniSpec(train_per_class=args.train_per_class, val_per_class=args.val_per_class)
    result = {"provenance": stamp(), **measure(args.rounds, spec)}
    save(args.out, args.tag, result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
