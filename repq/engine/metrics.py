"""Evaluation metrics: top-1 accuracy, and PSNR / SSIM on Y with a border crop.

The SR output is scored as official ECBSR scores it: clamped to [0, 255], not rounded
(``round_output=True``, the recipe key ``data.round_output``, rounds it to 8 bits first,
as a saved image would be; ``benchmarks/sr_rounding.py`` measures the difference)."""

from __future__ import annotations

import math

import numpy as np
import torch

SSIM_SIGMA = 1.5
SSIM_WINDOW = 2 * int(3.5 * SSIM_SIGMA + 0.5) + 1
"""The side of SSIM's Gaussian window (scikit-image truncates at 3.5 sigma): 11."""


def min_sr_side(scale: int) -> int:
    """The smallest mod-cropped HR side that both metrics can score: SSIM's window
    inside the ``scale``-pixel border."""
    return SSIM_WINDOW + 2 * scale


def _crop(image: torch.Tensor, border: int) -> np.ndarray:
    array = image.detach().float().cpu().squeeze().numpy().astype(np.float64)
    return array[border:-border, border:-border] if border > 0 else array


def output_pixels(image: torch.Tensor, round_output: bool = False) -> torch.Tensor:
    """The SR output as scored: clamped to [0, 255], and rounded (as an 8-bit image
    would store it) only with ``round_output``."""
    image = image.clamp(0, 255)
    return image.round() if round_output else image


def psnr_y(sr: torch.Tensor, hr: torch.Tensor, border: int, round_output: bool = False) -> float:
    """PSNR (dB) of 0-255 Y images with ``border`` pixels cropped on each side."""
    a, b = _crop(output_pixels(sr, round_output), border), _crop(hr, border)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def ssim_y(sr: torch.Tensor, hr: torch.Tensor, border: int, round_output: bool = False) -> float:
    """SSIM of 0-255 Y images (Gaussian window, sigma 1.5, as the usual SR code)."""
    from skimage.metrics import structural_similarity  # evaluation of this task only

    a, b = _crop(output_pixels(sr, round_output), border), _crop(hr, border)
    return float(
        structural_similarity(
            a,
            b,
            data_range=255.0,
            gaussian_weights=True,
            sigma=SSIM_SIGMA,
            use_sample_covariance=False,
        )
    )
