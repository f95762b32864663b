"""Image files: listing, checking and reading (RGB, or luma Y on a 0-255 scale)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from repq.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


def require_dir(path: str | Path, what: str) -> Path:
    """``path`` as a ``Path``, or a :class:`DataError` naming the missing folder."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{what}: folder {path} does not exist")
    return path


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (sorted), or a DataError if none."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"folder {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


def check_readable(files: list[Path]) -> None:
    """Open and verify every image header; a DataError names the first bad file."""
    for path in files:
        try:
            with Image.open(path) as image:
                image.verify()
        except (OSError, UnidentifiedImageError, SyntaxError) as err:
            raise DataError(f"unreadable image {path}: {err}") from err


def load_rgb(path: str | Path) -> Image.Image:
    """Read an image as RGB; a DataError names the file if it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise DataError(f"unreadable image {path}: {err}") from err


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an RGB uint8 array on a 0-255 scale (Y in [16, 235]), as
    the ECBSR code computes it: ``16 + (65.481 R + 128.553 G + 24.966 B) / 255``."""
    rgb = rgb.astype(np.float32)
    return 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0
