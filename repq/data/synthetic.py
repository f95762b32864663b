"""Synthetic data in the real layouts of the paper's datasets, for ``make rehearse``:
every job of the paper's DAG runs on it at full size, in seconds of data generation
instead of a download. The pixels are procedural (smooth random fields with hard-edged
shapes and noise); nothing here is a result.

* ImageNet: ``imagenet/{train,val}/<wnid>/<name>.JPEG``, 1,000 class folders, 500x375
  and 375x500 JPEGs (the median ImageNet size, both orientations);
* DIV2K: ``DIV2K/DIV2K_train_HR/0001.png`` with its MATLAB-bicubic
  ``DIV2K/DIV2K_train_LR_bicubic/X2/0001x2.png`` and ``X4/0001x4.png``;
* the SR benchmarks: ``sr_benchmark/<set>/HR/<name>.png`` and
  ``sr_benchmark/<set>/LR_bicubic/X2|X4/<name>x2|x4.png`` for Set5, Set14, B100 and
  Urban100 with their real image counts.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from repq.data.resize import imresize

SR_SCALES = (2, 4)
SR_SETS = {"Set5": (5, 256), "Set14": (14, 224), "B100": (100, 160), "Urban100": (100, 256)}
"""Each benchmark's image count (as published) and the side of its synthetic images."""
JPEG_SIZES = ((500, 375), (375, 500))


@dataclass(frozen=True)
class SyntheticSpec:
    """The sizes of the synthetic data (the command line's ``--synthetic`` options)."""

    classes: int = field(default=1000, metadata={"help": "ImageNet class folders"})
    imagenet_train_per_class: int = field(default=2, metadata={"help": "training JPEGs a class"})
    imagenet_val_per_class: int = field(default=1, metadata={"help": "validation JPEGs a class"})
    div2k_images: int = field(default=8, metadata={"help": "DIV2K training images"})
    div2k_size: int = field(default=480, metadata={"help": "side of a DIV2K HR image"})


def picture(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth random RGB field with a few hard-edged shapes and a little noise."""
    coarse = rng.integers(0, 256, (height // 32 + 2, width // 32 + 2, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(8, width // 2)), y0 + int(rng.integers(8, height // 2))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)((x0, y0, x1, y1), fill=fill)
    noisy = np.asarray(image, dtype=np.int16) + rng.integers(-6, 7, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def write_imagenet(root: Path, spec: SyntheticSpec, rng: np.random.Generator) -> dict[str, int]:
    """``train/`` and ``val/`` with ``spec.classes`` WordNet-style class folders."""
    counts = {"train": spec.imagenet_train_per_class, "val": spec.imagenet_val_per_class}
    for split, per_class in counts.items():
        for c in range(spec.classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                size = JPEG_SIZES[(c + i) % len(JPEG_SIZES)]
                name = f"n{c:08d}_{i}.JPEG" if split == "train" else f"ILSVRC_val_{c:05d}{i}.JPEG"
                picture(rng, *size).save(folder / name, quality=90)
    return {split: per_class * spec.classes for split, per_class in counts.items()}


def _write_sr_pair(hr: Image.Image, name: str, hr_dir: Path, lr_dirs: dict[int, Path]) -> None:
    """An HR PNG and its MATLAB-bicubic LR PNGs (``<name>x<scale>.png``)."""
    hr.save(hr_dir / f"{name}.png")
    pixels = np.asarray(hr)
    for scale, folder in lr_dirs.items():
        Image.fromarray(imresize(pixels, 1 / scale)).save(folder / f"{name}x{scale}.png")


def _sr_folders(hr_dir: Path, lr_root: Path) -> dict[int, Path]:
    hr_dir.mkdir(parents=True)
    lr_dirs = {scale: lr_root / f"X{scale}" for scale in SR_SCALES}
    for folder in lr_dirs.values():
        folder.mkdir(parents=True)
    return lr_dirs


def write_div2k(root: Path, spec: SyntheticSpec, rng: np.random.Generator) -> int:
    hr_dir = root / "DIV2K_train_HR"
    lr_dirs = _sr_folders(hr_dir, root / "DIV2K_train_LR_bicubic")
    side = spec.div2k_size - spec.div2k_size % 4
    for i in range(1, spec.div2k_images + 1):
        _write_sr_pair(picture(rng, side, side * 3 // 4), f"{i:04d}", hr_dir, lr_dirs)
    return spec.div2k_images


def write_benchmarks(root: Path, rng: np.random.Generator) -> dict[str, int]:
    for name, (count, side) in SR_SETS.items():
        lr_dirs = _sr_folders(root / name / "HR", root / name / "LR_bicubic")
        for i in range(count):
            _write_sr_pair(
                picture(rng, side, side), f"img_{i + 1:03d}", root / name / "HR", lr_dirs
            )
    return {name: count for name, (count, _) in SR_SETS.items()}


def write_synthetic(root: str | Path, spec: SyntheticSpec | None = None, seed: int = 0) -> dict:
    """Write all of it under ``root`` atomically (a temporary sibling folder, renamed when
    complete); returns (and saves as ``manifest.json``) what was written."""
    spec = spec or SyntheticSpec()
    final = Path(root)
    partial = final.with_name(f".{final.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    rng = np.random.default_rng(seed)
    manifest = {
        "spec": {**asdict(spec), "seed": seed},
        "imagenet": write_imagenet(partial / "imagenet", spec, rng),
        "div2k": write_div2k(partial / "DIV2K", spec, rng),
        "sr_benchmark": write_benchmarks(partial / "sr_benchmark", rng),
    }
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    return manifest
