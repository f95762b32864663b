"""PSNR and SSIM on Y: the smallest image the start-up check lets through is scored,
one pixel less is what scikit-image refuses."""

from __future__ import annotations

import math

import pytest
import torch

from repq.engine.metrics import SSIM_WINDOW, min_sr_side, psnr_y, ssim_y


def test_the_ssim_window_is_scikit_images():
    assert SSIM_WINDOW == 11  # 2 * int(3.5 * 1.5 + 0.5) + 1


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_the_smallest_allowed_side_is_scored_and_one_less_is_not(scale):
    side = min_sr_side(scale)
    hr = torch.rand(1, 1, side, side, generator=torch.Generator().manual_seed(0)) * 200
    sr = hr + 3.0
    assert ssim_y(sr, hr, scale) < 1.0
    assert psnr_y(sr.round(), hr.round(), scale) == pytest.approx(10 * math.log10(255**2 / 9))
    with pytest.raises(ValueError, match="win_size exceeds image extent"):
        ssim_y(sr[..., 1:, 1:], hr[..., 1:, 1:], scale)
