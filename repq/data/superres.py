"""Super-resolution data: HR image folders with paired LR folders or MATLAB-bicubic LR
made from them (:mod:`repq.data.resize`), the Y channel on 0-255 computed from each RGB
image (as official ECBSR computes it from the LR and HR files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from repq.data.images import check_readable, list_images, load_rgb, require_dir, rgb_to_y
from repq.data.resize import imresize
from repq.errors import ConfigError, DataError


def mod_crop(image: np.ndarray, scale: int) -> np.ndarray:
    """Crop to a multiple of ``scale`` in both dimensions."""
    height, width = image.shape[:2]
    return image[: height - height % scale, : width - width % scale]


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array, dtype=np.float32)).unsqueeze(0)


def lr_candidates(hr: Path, scale: int) -> list[str]:
    """File stems an LR image of ``hr`` may have: ``0001x2`` (DIV2K, the benchmark sets'
    ``LR_bicubic/X2``) or the HR stem itself."""
    return [f"{hr.stem}x{scale}", hr.stem]


def pair_lr(hr_files: list[Path], lr_root: str | Path, scale: int) -> list[Path]:
    """The LR file of every HR file in ``lr_root``; a DataError names the first HR image
    without one."""
    lr_files = {p.stem: p for p in list_images(require_dir(lr_root, "LR image folder"))}
    pairs = []
    for hr in hr_files:
        found = next((lr_files[s] for s in lr_candidates(hr, scale) if s in lr_files), None)
        if found is None:
            looked = " or ".join(f"{s}.*" for s in lr_candidates(hr, scale))
            raise DataError(f"no LR image for {hr} in {lr_root} (looked for {looked})")
        pairs.append(found)
    return pairs


def rgb_array(path: Path) -> np.ndarray:
    return np.asarray(load_rgb(path))


def generated_pair(hr_path: Path, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """``(lr, hr)`` RGB uint8: the mod-cropped HR image and its MATLAB-bicubic LR."""
    hr = mod_crop(rgb_array(hr_path), scale)
    return imresize(hr, 1 / scale), hr


def loaded_pair(hr_path: Path, lr_path: Path, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """``(lr, hr)`` RGB uint8 from files: the HR image cropped to ``scale`` times the LR
    size; a DataError names both files if their sizes do not pair."""
    hr, lr = rgb_array(hr_path), rgb_array(lr_path)
    (height, width), (lr_height, lr_width) = hr.shape[:2], lr.shape[:2]
    if (lr_height, lr_width) != (height // scale, width // scale):
        raise DataError(
            f"{lr_path} ({lr_width}x{lr_height}) is not the x{scale} LR image of {hr_path} "
            f"({width}x{height}: expected {width // scale}x{height // scale})"
        )
    return lr, hr[: lr_height * scale, : lr_width * scale]


class SRTrainSet(Dataset):
    """Random HR patches (``patch`` pixels, a multiple of ``scale``) and their LR patches,
    with flips and transposes. The LR patch is cut from the paired LR image when
    ``lr_root`` is given (DIV2K's ``LR_bicubic``), else made from the HR patch with
    MATLAB's bicubic. Items are keyed by ``(index, seed)`` (see
    :class:`repq.data.sampling.EpochSampler`)."""

    def __init__(
        self,
        root: str | Path,
        scale: int,
        patch: int,
        verify_images: bool = True,
        lr_root: str | Path | None = None,
    ) -> None:
        if patch % scale:
            raise ConfigError(f"data.patch {patch} is not a multiple of data.scale {scale}")
        self.files = list_images(require_dir(root, "super-resolution training set"))
        self.lr_files = pair_lr(self.files, lr_root, scale) if lr_root else None
        if verify_images:
            check_readable(self.files + (self.lr_files or []))
        self.scale, self.patch = scale, patch

    def __len__(self) -> int:
        return len(self.files)

    def _corner(self, height: int, width: int, rng: np.random.Generator, path: Path):
        """Top-left corner of a random patch, on the LR grid (``scale`` HR pixels)."""
        if height < self.patch or width < self.patch:
            raise DataError(f"{path} ({width}x{height}) is smaller than the {self.patch} patch")
        top = int(rng.integers(0, (height - self.patch) // self.scale + 1))
        left = int(rng.integers(0, (width - self.patch) // self.scale + 1))
        return top, left

    def _patches(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        path, s, size = self.files[index], self.scale, self.patch
        if self.lr_files is None:
            hr = rgb_array(path)
            top, left = self._corner(*hr.shape[:2], rng, path)
            hr = hr[top * s : top * s + size, left * s : left * s + size]
            return imresize(hr, 1 / s), hr
        lr, hr = loaded_pair(path, self.lr_files[index], s)
        top, left = self._corner(*hr.shape[:2], rng, path)
        lr = lr[top : top + size // s, left : left + size // s]
        return lr, hr[top * s : top * s + size, left * s : left * s + size]

    @staticmethod
    def _augment(patches: tuple[np.ndarray, ...], rng: np.random.Generator):
        flip_h, flip_v, transpose = rng.integers(0, 2, size=3)
        if flip_h:
            patches = tuple(p[:, ::-1] for p in patches)
        if flip_v:
            patches = tuple(p[::-1, :] for p in patches)
        if transpose:
            patches = tuple(p.T for p in patches)
        return patches

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = key
        rng = np.random.default_rng(seed)
        lr, hr = (rgb_to_y(p) for p in self._patches(index, rng))
        lr, hr = self._augment((lr, hr), rng)
        return _as_tensor(lr), _as_tensor(hr)


def check_test_sizes(files: list[Path], scale: int, min_side: int) -> None:
    """A DataError names the first image whose mod-cropped side is under ``min_side``
    (what the metrics need: SSIM's window inside the border)."""
    for path in files:
        with Image.open(path) as image:
            width, height = image.size
        if min(width - width % scale, height - height % scale) < min_side:
            raise DataError(
                f"{path} ({width}x{height}) is too small to score at x{scale}: PSNR and SSIM "
                f"need at least {min_side}x{min_side} pixels (SSIM's window inside the border)"
            )


class SRTestSet(Dataset):
    """A test set folder of HR images (Set5, Set14, B100, Urban100), whole images (batch
    size 1): the mod-cropped HR image and its LR image, read from ``lr_root`` when given
    (the sets' ``LR_bicubic/X<scale>``), else made with MATLAB's bicubic. Every image is
    at least ``min_side`` pixels a side after the mod-crop (checked here, from the
    headers)."""

    def __init__(
        self,
        root: str | Path,
        scale: int,
        verify_images: bool = True,
        min_side: int = 1,
        lr_root: str | Path | None = None,
    ) -> None:
        self.files = list_images(require_dir(root, "super-resolution test set"))
        self.lr_files = pair_lr(self.files, lr_root, scale) if lr_root else None
        if verify_images:
            check_readable(self.files + (self.lr_files or []))
        check_test_sizes(self.files, scale, min_side)
        self.scale = scale

    def __len__(self) -> int:
        return len(self.files)

    def keep(self, indices: list[int]) -> None:
        """Keep only these images (``limits.eval_items``)."""
        self.files = [self.files[i] for i in indices]
        if self.lr_files is not None:
            self.lr_files = [self.lr_files[i] for i in indices]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.files[index]
        if self.lr_files is None:
            lr, hr = generated_pair(path, self.scale)
        else:
            lr, hr = loaded_pair(path, self.lr_files[index], self.scale)
        return _as_tensor(rgb_to_y(lr)), _as_tensor(rgb_to_y(hr))
