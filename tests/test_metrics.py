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


def test_the_output_is_scored_clamped_and_unrounded_unless_asked():
    """Official ECBSR's convention: clamp to [0, 255], no rounding; ``round_output``
    scores the 8-bit image instead."""
    side = min_sr_side(2)
    hr = torch.randint(0, 200, (1, 1, side, side), generator=torch.Generator().manual_seed(1))
    hr = hr.double()
    sr = hr + 0.3
    sr[..., 0, 0] = 300.0  # clamped to 255 either way (inside the 2-pixel border it's cropped)
    assert psnr_y(sr, hr, 2) == pytest.approx(10 * math.log10(255**2 / 0.09))
    assert psnr_y(sr, hr, 2, round_output=True) == math.inf
    assert ssim_y(sr, hr, 2, round_output=True) == pytest.approx(1.0)
    assert ssim_y(sr, hr, 2) < 1.0
    clipped = hr.clone()
    clipped[..., 5, 5] = 255.0
    over = clipped.clone()
    over[..., 5, 5] = 400.0
    assert psnr_y(over, clipped, 2) == math.inf
