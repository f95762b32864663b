"""The embedded mini benchmark, built from the natural images inside ``skimage.data``.

Classification (``cls/train``, ``cls/val``): one class per source image; a sample is a
random square crop of one tile of that image, resized, flipped, jittered in brightness
and contrast, sometimes turned grey, with noise. Tiles alternate between the train and
the val split like a checkerboard, so validation crops come from unseen regions.

Super-resolution (``sr/train``, ``sr/test/<set>``): HR crops of other images.

Everything is a deterministic function of the seed; nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

CLASS_IMAGES = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "rocket",
)
SR_TRAIN_IMAGES = ("retina", "coffee", "rocket", "astronaut", "chelsea", "hubble_deep_field")
SR_TEST_SETS = {
    "mini_a": ("camera", "coins", "moon", "clock", "page"),
    "mini_b": ("grass", "gravel", "brick", "cell", "text", "colorwheel"),
}
TILES = 4


@dataclass(frozen=True)
class MiniSpec:
    """The sizes of the mini benchmark: the one place its defaults live (the command
    line's options and the workflow's ``mini:`` keys are these fields)."""

    seed: int = field(default=0, metadata={"help": "seed of every random choice"})
    train_per_class: int = field(default=160, metadata={"help": "training images per class"})
    val_per_class: int = field(default=100, metadata={"help": "validation images per class"})
    image_size: int = field(default=40, metadata={"help": "side of a classification image"})
    sr_train_crops: int = field(default=4, metadata={"help": "SR training crops per image"})
    sr_train_size: int = field(default=96, metadata={"help": "side of an SR training crop"})
    sr_test_size: int = field(default=96, metadata={"help": "side of an SR test image"})
    sr_test_crops: int = field(default=4, metadata={"help": "SR test crops per image"})


def source_rgb(name: str) -> np.ndarray:
    """A bundled skimage image as an RGB uint8 array."""
    import skimage.data  # only when the benchmark is written

    image = np.asarray(getattr(skimage.data, name)())
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def _tile_bounds(shape: tuple[int, ...], row: int, col: int) -> tuple[int, int, int, int]:
    height, width = shape[:2]
    top, bottom = row * height // TILES, (row + 1) * height // TILES
    left, right = col * width // TILES, (col + 1) * width // TILES
    return top, bottom, left, right


def _sample(image: np.ndarray, tile: tuple[int, int], size: int, rng: np.random.Generator):
    top, bottom, left, right = _tile_bounds(image.shape, *tile)
    side = min(bottom - top, right - left)
    crop = int(rng.uniform(0.6, 1.0) * side)
    y = int(rng.integers(top, bottom - crop + 1))
    x = int(rng.integers(left, right - crop + 1))
    patch = Image.fromarray(image[y : y + crop, x : x + crop]).resize((size, size), Image.BILINEAR)
    array = np.asarray(patch).astype(np.float32)
    if rng.random() < 0.5:
        array = array[:, ::-1]
    if rng.random() < 0.2:
        array = np.repeat(array.mean(axis=2, keepdims=True), 3, axis=2)
    contrast, brightness = rng.uniform(0.75, 1.25), rng.uniform(-25, 25)
    array = (array - array.mean()) * contrast + array.mean() + brightness
    array = array + rng.normal(0, 6, size=array.shape)
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def _split_tiles(split: str) -> list[tuple[int, int]]:
    parity = 0 if split == "train" else 1
    return [(r, c) for r in range(TILES) for c in range(TILES) if (r + c) % 2 == parity]


def write_classification(
    root: Path, seed: int, per_class: dict[str, int], size: int
) -> dict[str, int]:
    """Write ``root/{train,val}/<class>/*.png``; returns the image count per split."""
    counts = {}
    for split, count in per_class.items():
        tiles = _split_tiles(split)
        for label, name in enumerate(CLASS_IMAGES):
            image = source_rgb(name)
            rng = np.random.default_rng([seed, label, 0 if split == "train" else 1])
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                tile = tiles[int(rng.integers(len(tiles)))]
                _sample(image, tile, size, rng).save(folder / f"{name}_{i:04d}.png")
        counts[split] = count * len(CLASS_IMAGES)
    return counts


def _random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    height, width = image.shape[:2]
    size = min(size, height, width)
    y = int(rng.integers(0, height - size + 1))
    x = int(rng.integers(0, width - size + 1))
    return image[y : y + size, x : x + size]


def write_superres(root: Path, spec: MiniSpec) -> dict[str, int]:
    """Write ``root/train/*.png`` and ``root/test/<set>/*.png`` (``sr_test_crops`` crops
    of every test image); returns the counts."""
    rng = np.random.default_rng([spec.seed, 99])
    train = root / "train"
    train.mkdir(parents=True, exist_ok=True)
    for name in SR_TRAIN_IMAGES:
        image = source_rgb(name)
        for i in range(spec.sr_train_crops):
            crop = _random_crop(image, spec.sr_train_size, rng)
            Image.fromarray(crop).save(train / f"{name}_{i:02d}.png")
    for set_name, names in SR_TEST_SETS.items():
        folder = root / "test" / set_name
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            image = source_rgb(name)
            for i in range(spec.sr_test_crops):
                crop = _random_crop(image, spec.sr_test_size, rng)
                Image.fromarray(crop).save(folder / f"{name}_{i:02d}.png")
    counts = {k: len(v) * spec.sr_test_crops for k, v in SR_TEST_SETS.items()}
    return {"train": spec.sr_train_crops * len(SR_TRAIN_IMAGES), **counts}


def write_mini(root: str | Path, spec: MiniSpec | None = None) -> dict[str, object]:
    """Write the whole mini benchmark under ``root`` atomically (into a temporary sibling
    folder, renamed when complete); returns (and saves) its manifest."""
    spec = spec or MiniSpec()
    final = Path(root)
    root = final.with_name(f".{final.name}.partial")
    shutil.rmtree(root, ignore_errors=True)
    per_class = {"train": spec.train_per_class, "val": spec.val_per_class}
    manifest = {
        "spec": asdict(spec),
        "classes": list(CLASS_IMAGES),
        "classification": write_classification(root / "cls", spec.seed, per_class, spec.image_size),
        "superres": write_superres(root / "sr", spec),
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    root.rename(final)
    return manifest
