"""Super-resolution data: HR image folders, bicubic LR, the Y channel on 0-255."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from repq.data.images import check_readable, list_images, load_y, require_dir
from repq.errors import ConfigError, DataError


def bicubic_downscale(hr: np.ndarray, scale: int) -> np.ndarray:
    """Bicubic downscaling (PIL, antialiased) of a float ``[H, W]`` array by ``scale``."""
    height, width = hr.shape
    image = Image.fromarray(hr.astype(np.float32), mode="F")
    return np.asarray(image.resize((width // scale, height // scale), Image.BICUBIC))


def mod_crop(image: np.ndarray, scale: int) -> np.ndarray:
    """Crop to a multiple of ``scale`` in both dimensions."""
    height, width = image.shape
    return image[: height - height % scale, : width - width % scale]


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array, dtype=np.float32)).unsqueeze(0)


class SRTrainSet(Dataset):
    """Random HR patches (``patch`` pixels, a multiple of ``scale``) with flips and
    transposes; LR made by bicubic downscaling of the patch. Items are keyed by
    ``(index, seed)`` (see :class:`repq.data.sampling.EpochSampler`)."""

    def __init__(self, root: str | Path, scale: int, patch: int, verify_images: bool = True):
        if patch % scale:
            raise ConfigError(f"data.patch {patch} is not a multiple of data.scale {scale}")
        self.files = list_images(require_dir(root, "super-resolution training set"))
        if verify_images:
            check_readable(self.files)
        self.scale, self.patch = scale, patch

    def __len__(self) -> int:
        return len(self.files)

    def _crop(self, hr: np.ndarray, rng: np.random.Generator, path: Path) -> np.ndarray:
        height, width = hr.shape
        if height < self.patch or width < self.patch:
            raise DataError(f"{path} ({width}x{height}) is smaller than the {self.patch} patch")
        top = int(rng.integers(0, (height - self.patch) // self.scale + 1)) * self.scale
        left = int(rng.integers(0, (width - self.patch) // self.scale + 1)) * self.scale
        return hr[top : top + self.patch, left : left + self.patch]

    @staticmethod
    def _augment(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        flip_h, flip_v, transpose = rng.integers(0, 2, size=3)
        if flip_h:
            patch = patch[:, ::-1]
        if flip_v:
            patch = patch[::-1, :]
        if transpose:
            patch = patch.T
        return patch

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = key
        rng = np.random.default_rng(seed)
        path = self.files[index]
        hr = self._augment(self._crop(load_y(path), rng, path), rng)
        return _as_tensor(bicubic_downscale(hr, self.scale)), _as_tensor(hr)


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
    """A test set folder of HR images (Set5, Set14, B100, Urban100): mod-cropped HR and
    its bicubic LR, whole images (batch size 1). Every image is at least ``min_side``
    pixels a side after the mod-crop (checked here, from the headers)."""

    def __init__(
        self, root: str | Path, scale: int, verify_images: bool = True, min_side: int = 1
    ) -> None:
        self.files = list_images(require_dir(root, "super-resolution test set"))
        if verify_images:
            check_readable(self.files)
        check_test_sizes(self.files, scale, min_side)
        self.scale = scale

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        hr = mod_crop(load_y(self.files[index]), self.scale)
        return _as_tensor(bicubic_downscale(hr, self.scale)), _as_tensor(hr)
