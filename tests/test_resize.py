"""MATLAB-compatible bicubic resizing and paired LR folders for super-resolution."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from conftest import RECIPES
from PIL import Image

from repq.config import load_config
from repq.data.resize import contributions, cubic, imresize
from repq.data.superres import SRTestSet, SRTrainSet
from repq.errors import ConfigError, DataError

# Keys' kernel (a = -0.5) at the x2 antialiased taps 0.25, 0.75, 1.25, 1.75, halved: the
# weights MATLAB's imresize(I, 0.5, 'bicubic') applies in the interior
HALF = [-0.01171875, -0.03515625, 0.11328125, 0.43359375]
X2_WEIGHTS = HALF + HALF[::-1]


def test_the_kernel_is_keys_cubic_with_a_minus_half():
    x = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    assert cubic(x).tolist() == [1.0, 0.5625, 0.0, -0.0625, 0.0, 0.0]


def test_x2_weights_are_matlabs_and_the_border_is_mirrored():
    weights, indices = contributions(16, 8, 0.5)
    assert weights[3].tolist() == X2_WEIGHTS and indices[3].tolist() == list(range(3, 11))
    assert indices[0].tolist() == [2, 1, 0, 0, 1, 2, 3, 4]  # symmetric: the edge repeated
    assert np.allclose(weights.sum(1), 1.0)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_a_constant_image_stays_constant(scale):
    image = np.full((37, 50, 3), 117, dtype=np.uint8)
    out = imresize(image, 1 / scale)
    assert out.dtype == np.uint8 and (out == 117).all()


@pytest.mark.parametrize(("shape", "scale", "expected"), [((37, 50), 3, (13, 17)),
                                                          ((48, 48), 4, (12, 12)),
                                                          ((5, 9), 2, (3, 5))])  # fmt: skip
def test_the_output_size_is_the_ceiling(shape, scale, expected):
    assert imresize(np.zeros(shape), 1 / scale).shape == expected


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_a_linear_ramp_stays_linear_inside(scale):
    ramp = np.tile(np.arange(60, dtype=np.float64) * 1.5 + 10, (8, 1))
    out = imresize(ramp, 1 / scale)[0]
    centres = np.arange(out.size) * scale + (scale - 1) / 2  # 0-based input coordinates
    inside = slice(2, -2)  # two output pixels (the kernel's reach) from each border
    assert np.allclose(out[inside], centres[inside] * 1.5 + 10, atol=1e-9)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_pil_agrees_inside_within_its_known_difference(scale):
    """PIL's antialiased bicubic uses the same kernel and centres but 8-bit fixed-point
    weights and other borders: measured mean 0.14-0.19 and max 4-6 gray levels inside."""
    size = 510 // scale * scale
    image = skimage.data.astronaut()[:size, :size]
    ours = imresize(image, 1 / scale).astype(int)
    pil = np.asarray(Image.fromarray(image).resize((size // scale,) * 2, Image.BICUBIC))
    inside = np.abs(ours - pil.astype(int))[4:-4, 4:-4]
    assert inside.mean() < 0.25 and inside.max() <= 8


# -- paired LR folders ----------------------------------------------------------------


def _write(path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def paired(tmp_path):
    """Two HR images and their MATLAB x2 LR images named as DIV2K names them."""
    rng = np.random.default_rng(0)
    for name in ("0001", "0002"):
        hr = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
        _write(tmp_path / "HR" / f"{name}.png", hr)
        _write(tmp_path / "LR" / f"{name}x2.png", imresize(hr, 0.5))
    return tmp_path


def test_paired_lr_files_give_what_generating_them_gives(paired):
    generated = SRTestSet(paired / "HR", 2)
    loaded = SRTestSet(paired / "HR", 2, lr_root=paired / "LR")
    for i in range(2):
        (lr_a, hr_a), (lr_b, hr_b) = generated[i], loaded[i]
        assert lr_a.shape == (1, 20, 18) and hr_a.shape == (1, 40, 36)
        assert np.array_equal(lr_a, lr_b) and np.array_equal(hr_a, hr_b)


def test_a_missing_lr_image_is_named(paired):
    (paired / "LR" / "0002x2.png").unlink()
    with pytest.raises(DataError, match=r"no LR image for .*0002\.png .*0002x2\.\*"):
        SRTestSet(paired / "HR", 2, lr_root=paired / "LR")


def test_an_lr_image_of_the_wrong_size_is_named(paired):
    _write(paired / "LR" / "0001x2.png", np.zeros((10, 10, 3), dtype=np.uint8))
    with pytest.raises(DataError, match=r"0001x2\.png \(10x10\) is not the x2 LR image"):
        SRTestSet(paired / "HR", 2, lr_root=paired / "LR")[0]


def test_training_patches_are_cut_from_the_paired_lr_image_in_register(tmp_path):
    """HR images of 2x2 constant blocks, LR = the block values: every patch pair, after
    any flip or transpose, has lr == hr[::2, ::2]."""
    rng = np.random.default_rng(1)
    lr = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
    _write(tmp_path / "HR" / "a.png", lr.repeat(2, 0).repeat(2, 1))
    _write(tmp_path / "LR" / "ax2.png", lr)
    data = SRTrainSet(tmp_path / "HR", 2, 8, lr_root=tmp_path / "LR")
    for seed in range(20):
        lr_patch, hr_patch = data[(0, seed)]
        assert lr_patch.shape == (1, 4, 4) and hr_patch.shape == (1, 8, 8)
        assert np.array_equal(lr_patch, hr_patch[:, ::2, ::2])


def test_test_lr_must_name_configured_test_sets(paired):
    from repq.engine.tasks import make_task

    config = load_config(
        RECIPES / "ecbsr.yaml",
        [
            f"data.train={paired / 'HR'}",
            f"data.test={{a: {paired / 'HR'}}}",
            f"data.test_lr={{b: {paired / 'LR'}}}",
        ],
    )
    with pytest.raises(ConfigError, match=r"data.test_lr names test sets not in data.test"):
        make_task(config, train=False)
