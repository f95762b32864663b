"""The classification input pipeline: TorchCodec decoding and transforms.v2 on uint8,
against the PIL + transforms v1 pipeline it replaced (statistics, not bit-equality), and
decoding on the device against decoding in the workers."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import RECIPES, as_args, cls_overrides, tracking_overrides
from PIL import Image
from torchvision import transforms as v1
from torchvision.datasets import ImageFolder

from repq.cli import main
from repq.data.classification import (
    DECODE_WHERE,
    MEAN,
    STD,
    image_folder,
    read_image,
    seeded_split,
)
from repq.data.images import load_rgb
from repq.data.sampling import FixedSeed, Seeded
from repq.errors import ConfigError, DataError

SIZE, RESIZE, SCALE = 24, 28, (0.35, 1.0)  # resampled both ways from the 32-pixel files
LEVEL = 1 / 255 / min(STD)  # one uint8 level after normalisation


def v1_train() -> v1.Compose:
    """The pipeline before: PIL images and transforms v1."""
    return v1.Compose(
        [
            v1.RandomResizedCrop(SIZE, scale=SCALE),
            v1.RandomHorizontalFlip(),
            v1.ToTensor(),
            v1.Normalize(MEAN, STD),
        ]
    )


def v1_eval() -> v1.Compose:
    return v1.Compose(
        [v1.Resize(RESIZE), v1.CenterCrop(SIZE), v1.ToTensor(), v1.Normalize(MEAN, STD)]
    )


def _pair(root: Path, train: bool) -> tuple[Seeded, Seeded]:
    new = image_folder(root, train, SIZE, RESIZE, verify_images=False, crop_scale=SCALE)
    old = ImageFolder(str(root), transform=v1_train() if train else v1_eval(), loader=load_rgb)
    return Seeded(new), Seeded(old)


@pytest.mark.parametrize("split", ["train", "val"])
def test_the_pipeline_agrees_with_pil_and_transforms_v1(mini_data, split):
    """Same seeds, same crops and flips (both draw their parameters alike from torch's
    RNG); only the resampling differs. Measured on the mini data (train; val agrees to
    6e-8): mean |difference| 9.6e-4, at most 2 levels per pixel, channel means within
    1.8e-5 and standard deviations within 8e-6. Bounds: 10x those, 3 levels."""
    new, old = _pair(mini_data / "cls" / split, split == "train")
    keys = [(i, 31 * i + 7) for i in range(len(new))]
    a = torch.stack([new[k][0] for k in keys])
    b = torch.stack([old[k][0] for k in keys])
    assert [new[k][1] for k in keys] == [old[k][1] for k in keys]
    difference = (a - b).abs()
    assert difference.mean() < 1e-2
    assert difference.max() <= 3 * LEVEL  # a wrong crop, flip or scale moves whole images
    assert torch.allclose(a.mean((0, 2, 3)), b.mean((0, 2, 3)), atol=2e-4)
    assert torch.allclose(a.std((0, 2, 3)), b.std((0, 2, 3)), atol=1e-4)


def test_a_flip_the_pipelines_disagree_on_would_be_seen(mini_data):
    """The bounds above can fail: an image and its mirror differ by 205 levels at most
    and 0.69 on average (measured)."""
    new, _ = _pair(mini_data / "cls" / "val", False)
    image = new[0, 0][0]
    assert (image - image.flip(-1)).abs().max() > 3 * LEVEL
    assert (image - image.flip(-1)).abs().mean() > 1e-2


def _jpeg_copy(root: Path, tmp_path: Path) -> Path:
    """The split with every second image re-encoded as JPEG (a mixed folder)."""
    for i, path in enumerate(sorted(root.rglob("*.png"))):
        target = tmp_path / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        if i % 2:
            Image.open(path).save(target.with_suffix(".jpg"), quality=90)
        else:
            target.write_bytes(path.read_bytes())
    return tmp_path


@pytest.mark.parametrize("train", [True, False])
def test_decoding_on_the_device_gives_the_workers_batches(mini_data, tmp_path, train):
    """``data.decode: device`` on the CPU: bit for bit the batch the workers make, PNG and
    JPEG alike, with the per-sample seeds of training."""
    root = _jpeg_copy(mini_data / "cls" / ("train" if train else "val"), tmp_path)
    folder = image_folder(root, train, SIZE, RESIZE, verify_images=True, crop_scale=SCALE)
    workers, device = seeded_split(folder, "workers"), seeded_split(folder, "device")
    keys = [(i, 1_000 + 13 * i) for i in range(0, len(folder), 3)]
    expected = torch.stack([workers[k][0] for k in keys])
    batch, labels = device.collate([device[k] for k in keys])
    assert torch.equal(batch.to("cpu"), expected)
    assert labels.tolist() == [workers[k][1] for k in keys]


def test_evaluation_data_decoded_on_the_device_batch_as_in_the_workers(mini_data):
    val = image_folder(mini_data / "cls" / "val", False, SIZE, RESIZE, verify_images=False)
    data = FixedSeed(seeded_split(val, "device"))
    loader = torch.utils.data.DataLoader(data, batch_size=8, collate_fn=data.collate)
    images, labels = next(iter(loader))
    assert torch.equal(images.to("cpu"), torch.stack([val[i][0] for i in range(8)]))
    assert labels.tolist() == [val[i][1] for i in range(8)]


def test_cached_images_give_the_items_read_from_disk(mini_data):
    """``data.cache``: the same augmented items as reading each file every time, also on
    the second pass, when every image comes from memory (the transforms leave the kept
    image alone)."""
    root = mini_data / "cls" / "train"
    plain = seeded_split(image_folder(root, True, SIZE, RESIZE, False, SCALE), "workers")
    cached = seeded_split(
        image_folder(root, True, SIZE, RESIZE, False, SCALE, cache=True), "workers"
    )
    keys = [(i, 7 * i + 1) for i in range(0, len(plain), 5)]
    for _ in range(2):
        for key in keys:
            assert torch.equal(cached[key][0], plain[key][0])


def test_cached_evaluation_batches_are_kept_and_equal_the_read_ones(tmp_path):
    """The second evaluation under ``data.cache`` reads no file (the split is gone from
    disk by then) and gives the top-1 of an uncached evaluation."""
    from repq.config import load_config
    from repq.data.mini import MiniSpec, write_mini
    from repq.engine.tasks import make_task
    from repq.models import create

    write_mini(tmp_path / "mini", MiniSpec(train_per_class=2, val_per_class=6, image_size=32))
    base = load_config(RECIPES / "repvgg_a0.yaml", cls_overrides(tmp_path / "mini"))
    plain = make_task(base, train=False)
    cached = make_task({**base, "data": {**base["data"], "cache": True}}, train=False)
    torch.manual_seed(0)
    model = create("repvgg_a0", num_classes=12, width_mult=0.25).eval()
    expected = plain.evaluate(model, torch.device("cpu"))
    assert cached.evaluate(model, torch.device("cpu")) == expected
    (tmp_path / "mini" / "cls" / "val").rename(tmp_path / "moved")
    assert cached.evaluate(model, torch.device("cpu")) == expected
    with pytest.raises((DataError, FileNotFoundError, RuntimeError)):
        plain.evaluate(model, torch.device("cpu"))


def test_caching_and_decoding_on_the_device_is_a_config_error(mini_data):
    val = image_folder(mini_data / "cls" / "val", False, SIZE, RESIZE, verify_images=False)
    with pytest.raises(ConfigError, match=r"data\.cache .* data\.decode: device"):
        seeded_split(val, "device", cache=True)


def _torchvision_decode(path: Path) -> torch.Tensor:
    """torchvision's own decoder (deprecated since 0.29): the oracle TorchCodec replaces."""
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.io import read_file as tv_read_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_image(tv_read_file(str(path)), mode=ImageReadMode.RGB)


@pytest.mark.parametrize(
    ("suffix", "mode", "options"),
    [
        ("jpg", "RGB", {"quality": 90}),
        ("jpg", "L", {"quality": 75}),
        ("png", "RGBA", {}),
        ("png", "L", {}),
    ],
)
def test_torchcodec_decodes_as_torchvision_did(tmp_path, suffix, mode, options):
    """Colour and grey JPEGs, PNGs with alpha or grey: the same RGB pixels, bit for bit."""
    pixels = torch.randint(0, 256, (37, 53, 4), generator=torch.Generator().manual_seed(3))
    image = Image.fromarray(pixels.to(torch.uint8).numpy(), "RGBA").convert(mode)
    path = tmp_path / f"image.{suffix}"
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG" if suffix == "jpg" else "PNG", **options)
    path.write_bytes(buffer.getvalue())
    decoded = read_image(path)
    assert decoded.dtype == torch.uint8 and decoded.shape == (3, 37, 53)
    assert torch.equal(decoded, _torchvision_decode(path))


def test_an_undecodable_file_names_itself(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(DataError, match=r"broken\.jpg"):
        read_image(path)


def test_an_unknown_decode_place_is_a_config_error(mini_data):
    val = image_folder(mini_data / "cls" / "val", False, SIZE, RESIZE, verify_images=False)
    expected = r"data\.decode is 'gpu'; expected one of workers, device"
    with pytest.raises(ConfigError, match=expected):
        seeded_split(val, "gpu")


def test_the_recipe_schema_names_the_decode_places():
    schema = yaml.safe_load((Path(__file__).parents[1] / "repq" / "recipe.schema.yaml").read_text())
    assert tuple(schema["properties"]["data"]["properties"]["decode"]["enum"]) == DECODE_WHERE


@pytest.mark.slow
def test_training_with_device_decoding_equals_training_with_worker_decoding(mini_data, tmp_path):
    """One FP epoch each way on the CPU: the same loss and the same top-1."""
    results = []
    for decode in DECODE_WHERE:
        out = tmp_path / decode
        overrides = [*cls_overrides(mini_data, epochs=1), f"data.decode={decode}"]
        overrides += tracking_overrides(tmp_path / f"{decode}-tracking")
        args = ["train", str(RECIPES / "repvgg_a0.yaml"), "--stage", "fp", "--out", str(out)]
        assert main(args + as_args(overrides)) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        history = pd.read_csv(out / "history.csv")
        results.append((metrics["metrics"], history["train_loss"].tolist()))
    assert results[0] == results[1]
