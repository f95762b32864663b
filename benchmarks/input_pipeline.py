"""Images per second per core of the ImageNet training input pipeline: decode a 500x375
JPEG (the median ImageNet size), RandomResizedCrop 224, flip, to float, normalise.

Variants, interleaved (each once per round) in one process on one thread: PIL decoding with
``transforms`` v1 (repq's first pipeline), ``torchvision.io`` decoding with
``transforms.v2`` on uint8 (its second; torchvision 0.29 deprecates that decoder) and
TorchCodec decoding with the same transforms (repq's now, ``repq.data.classification``),
each sample under
its own seed as the trainer draws it, plus the cost of seeding itself:
``torch.manual_seed`` against ``repq.data.sampling.cpu_rng_seeded``. The JPEGs are
scikit-image's ``coffee`` and ``chelsea`` (shipped with the package) resized to 500x375.

    python benchmarks/input_pipeline.py --rounds 7 --tag input-pipeline-torchcodec
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from record import new_tag, save, stamp
from skimage import data as skdata
from torchvision import transforms as v1

from repq.data.classification import MEAN, STD, read_file, read_image, train_transform
from repq.data.images import load_rgb
from repq.data.sampling import cpu_rng_seeded

ROOT = Path(__file__).resolve().parents[1]
SIZE, JPEG_SIZE = 224, (500, 375)


def write_jpegs(folder: Path) -> list[Path]:
    paths = []
    for name in ("coffee", "chelsea"):
        path = folder / f"{name}.jpg"
        image = Image.fromarray(getattr(skdata, name)()).resize(JPEG_SIZE, Image.BICUBIC)
        image.save(path, quality=90)
        paths.append(path)
    return paths


def pil_v1() -> Callable[[Path], torch.Tensor]:
    transform = v1.Compose(
        [
            v1.RandomResizedCrop(SIZE),
            v1.RandomHorizontalFlip(),
            v1.ToTensor(),
            v1.Normalize(MEAN, STD),
        ]
    )
    return lambda path: transform(load_rgb(path))


def tensor_v2() -> Callable[[Path], torch.Tensor]:
    transform = train_transform(SIZE, (0.08, 1.0))
    return lambda path: transform(read_image(path))


def torchvision_v2() -> Callable[[Path], torch.Tensor]:
    """The pipeline with torchvision's own decoder, which 0.29 deprecates for TorchCodec."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
    transform = train_transform(SIZE, (0.08, 1.0))
    return lambda path: transform(decode_image(read_file(str(path)), mode=ImageReadMode.RGB))


def decoders() -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """JPEG bytes to an RGB uint8 tensor: torchvision's decoder and TorchCodec's."""
    from torchcodec.decoders import decode_image as codec_decode
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_image as tv_decode

    warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
    return {
        "torchvision.io": lambda data: tv_decode(data, mode=ImageReadMode.RGB),
        "torchcodec": lambda data: codec_decode(data, mode="RGB"),
    }


def decode_rates(paths: list[Path], rounds: int, n: int) -> dict[str, list[float]]:
    """Images decoded per second by each decoder, from bytes in memory, interleaved."""
    encoded = [read_file(path) for path in paths]
    runs = decoders()
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(rounds + 1):  # the first round warms up
        for name, decode in runs.items():
            start = time.perf_counter()
            for i in range(n):
                decode(encoded[i % len(encoded)])
            if round_:
                rates[name].append(n / (time.perf_counter() - start))
    return rates


def seeded(pipeline: Callable[[Path], torch.Tensor]) -> Callable[[Path, int], torch.Tensor]:
    def run(path: Path, seed: int) -> torch.Tensor:
        with cpu_rng_seeded(seed):
            return pipeline(path)

    return run


def images_per_second(run: Callable[[Path, int], object], paths: list[Path], n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        run(paths[i % len(paths)], i)
    return n / (time.perf_counter() - start)


def seed_cost(n: int) -> dict[str, float]:
    """Microseconds per sample of seeding torch's CPU RNG, each way, inside a deep stack
    (the DataLoader's), where ``torch.manual_seed`` formats a stack trace per device."""

    def deep(depth: int, fn: Callable[[], float]) -> float:
        return fn() if depth == 0 else deep(depth - 1, fn)

    def manual() -> float:
        start = time.perf_counter()
        for i in range(n):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(i)
        return (time.perf_counter() - start) / n * 1e6

    def cpu_only() -> float:
        start = time.perf_counter()
        for i in range(n):
            with cpu_rng_seeded(i):
                pass
        return (time.perf_counter() - start) / n * 1e6

    return {"torch.manual_seed": deep(40, manual), "cpu_rng_seeded": deep(40, cpu_only)}


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--images", type=int, default=200, help="images per variant per round")
    parser.add_argument("--seedings", type=int, default=20_000, help="samples seeded each way")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--tag", required=True, help="name of the result files (a new one)")
    args = parser.parse_args()
    new_tag(args.out, args.tag)
    torch.set_num_threads(1)
    variants = {
        "PIL + transforms v1": seeded(pil_v1()),
        "torchvision.io + v2": seeded(torchvision_v2()),
        "torchcodec + v2": seeded(tensor_v2()),
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as folder:
        paths = write_jpegs(Path(folder))
        for run in variants.values():
            images_per_second(run, paths, 20)  # warm-up
        for _ in range(args.rounds):
            for name, run in variants.items():
                rates[name].append(images_per_second(run, paths, args.images))
        decoding = decode_rates(paths, args.rounds, args.images * 4)
    codec, torchvision = decoding["torchcodec"], decoding["torchvision.io"]
    paired = [c / t for c, t in zip(codec, torchvision, strict=True)]
    reference = statistics.median(rates["PIL + transforms v1"])
    result = {
        "provenance": stamp(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "rounds": args.rounds,
        "images_per_round": args.images,
        "images_per_second_per_core": {name: spread(r) for name, r in rates.items()},
        "speed_vs_v1": {n: statistics.median(r) / reference for n, r in rates.items()},
        "decoded_per_second_per_core": {name: spread(r) for name, r in decoding.items()},
        "torchcodec_vs_torchvision_decoding": spread(paired),
        "seeding_us_per_sample": seed_cost(args.seedings),
    }
    save(args.out, args.tag, result, markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    lines = [
        f"One core, {result['rounds']} rounds of {result['images_per_round']} images, "
        f"a 500x375 JPEG to a normalised 224x224 crop (torch {result['torch']})",
        "",
        "| pipeline | images/s per core (median) | min | max | vs v1 |",
        "|---|---|---|---|---|",
    ]
    for name, s in result["images_per_second_per_core"].items():
        ratio = result["speed_vs_v1"][name]
        rates = f"{s['median']:.0f} | {s['min']:.0f} | {s['max']:.0f}"
        lines.append(f"| {name} | {rates} | {ratio:.2f}x |")
    lines += ["", "| decoder (JPEG bytes to RGB) | images/s per core (median) | min | max |"]
    lines.append("|---|---|---|---|")
    for name, s in result["decoded_per_second_per_core"].items():
        lines.append(f"| {name} | {s['median']:.0f} | {s['min']:.0f} | {s['max']:.0f} |")
    paired = result["torchcodec_vs_torchvision_decoding"]
    lines.append(
        f"\nTorchCodec against torchvision, round by round: {paired['median']:.3f}x "
        f"(min {paired['min']:.3f}, max {paired['max']:.3f})"
    )
    seeding = result["seeding_us_per_sample"]
    lines += [
        "",
        "| seeding one sample | µs |",
        "|---|---|",
        *(f"| `{name}` | {us:.1f} |" for name, us in seeding.items()),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
