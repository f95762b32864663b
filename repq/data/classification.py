"""ImageNet-style classification from an ImageFolder tree (``train/``, ``val/``).

Images are decoded by TorchCodec (torchvision 0.29 deprecates its own decoders in its
favour; the two decode JPEG bit for bit) to uint8 tensors and augmented by
``transforms.v2`` on uint8 (resampling before the float conversion), which
``benchmarks/input_pipeline.py`` measures against PIL with ``transforms`` v1. With
``data.decode: device`` the loader only reads the files and each batch is decoded on the
training device (nvJPEG on CUDA), under the same per-sample seeds, so a GPU job needs
fewer CPU cores. With ``data.cache`` a
small dataset (the mini benchmark) is read and decoded once per process and its
evaluation split is transformed once (``benchmarks/mini_epoch.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchcodec.decoders import decode_image, decode_jpeg
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from repq.data.images import check_readable, list_images, require_dir
from repq.data.sampling import Seeded, cpu_rng_seeded
from repq.errors import ConfigError, DataError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

CROP_SCALE = (0.08, 1.0)
"""RandomResizedCrop's area range (torchvision's and the reference scripts' default)."""

DECODE_WHERE = ("workers", "device")
"""``data.decode``: in the loader's workers (default), or per batch on the training device."""

JPEG_MAGIC = b"\xff\xd8"

Transform = Callable[[torch.Tensor], torch.Tensor]


def _to_normalised_float() -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]


def train_transform(image_size: int, crop_scale: tuple[float, float]) -> v2.Compose:
    """RandomResizedCrop (area fraction in ``crop_scale``, antialiased) and horizontal flip
    on the uint8 image, then the usual normalisation."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, scale=crop_scale, antialias=True),
            v2.RandomHorizontalFlip(),
            *_to_normalised_float(),
        ]
    )


def eval_transform(image_size: int, resize: int) -> v2.Compose:
    """Resize the short side to ``resize`` (antialiased) and centre-crop ``image_size``."""
    return v2.Compose(
        [
            v2.Resize(resize, antialias=True),
            v2.CenterCrop(image_size),
            *_to_normalised_float(),
        ]
    )


def read_image(path: str | Path) -> torch.Tensor:
    """An image file as an RGB uint8 tensor (C, H, W); a DataError names the file if it
    cannot be decoded."""
    try:
        return decode_image(read_file(path), mode="RGB")
    except (RuntimeError, ValueError) as err:
        raise DataError(f"unreadable image {path}: {err}") from err


def read_file(path: str | Path) -> torch.Tensor:
    """A file's bytes as a 1-D uint8 tensor (what the decoders take)."""
    return torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)


def decode_batch(encoded: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Decode encoded files to RGB uint8 tensors on ``device``: JPEGs in one call (nvJPEG
    on CUDA), other formats on the CPU and then moved."""
    jpeg = [i for i, data in enumerate(encoded) if bytes(data[:2].tolist()) == JPEG_MAGIC]
    images: list[torch.Tensor | None] = [None] * len(encoded)
    if jpeg:
        decoded = decode_jpeg([encoded[i] for i in jpeg], mode="RGB", device=device)
        for i, image in zip(jpeg, decoded, strict=True):
            images[i] = image
    for i, image in enumerate(images):
        if image is None:
            images[i] = decode_image(encoded[i], mode="RGB").to(device)
    return images


class MemoizedReader:
    """:func:`read_image` that keeps each decoded image in memory (``data.cache``); the
    transforms make new tensors, so the kept image is never changed."""

    def __init__(self) -> None:
        self._images: dict[str, torch.Tensor] = {}

    def __call__(self, path: str) -> torch.Tensor:
        image = self._images.get(path)
        if image is None:
            image = self._images[path] = read_image(path)
        return image


@dataclass
class EncodedBatch:
    """A batch of still-encoded images with the seed of each sample's augmentation;
    ``.to(device)`` decodes and transforms it there, as the trainer moves any batch."""

    encoded: list[torch.Tensor]
    seeds: list[int]
    transform: Transform

    def to(self, device: torch.device | str, non_blocking: bool = False) -> torch.Tensor:
        images = decode_batch(self.encoded, torch.device(device))
        out = []
        for image, seed in zip(images, self.seeds, strict=True):
            with cpu_rng_seeded(seed):  # v2 draws its parameters on the CPU
                out.append(self.transform(image))
        return torch.stack(out)


class EncodedFolder(Dataset):
    """An ImageFolder whose items are the encoded file and its label, keyed by ``(index,
    seed)`` (the seed of the sample's augmentation, applied when the batch is decoded);
    :meth:`collate` makes the :class:`EncodedBatch`."""

    def __init__(self, folder: ImageFolder) -> None:
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        index, seed = key
        path, label = self.folder.samples[index]
        return read_file(path), seed, label

    def collate(self, items: list[tuple[torch.Tensor, int, int]]):
        encoded, seeds, labels = zip(*items, strict=True)
        batch = EncodedBatch(list(encoded), list(seeds), self.folder.transform)
        return batch, torch.tensor(labels)


def check_image_folder(root: Path, verify_images: bool) -> list[str]:
    """Check an ImageFolder split: it exists, every class holds images, and (if asked)
    every image can be read. Returns the class names."""
    require_dir(root, "classification split")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"classification split {root} has no class folders")
    for name in classes:
        try:
            files = list_images(root / name)
        except DataError as err:
            raise DataError(f"empty class {name!r}: {err}") from err
        if verify_images:
            check_readable(files)
    return classes


def image_folder(
    root: str | Path,
    train: bool,
    image_size: int,
    resize: int,
    verify_images: bool = True,
    crop_scale: tuple[float, float] = CROP_SCALE,
    cache: bool = False,
) -> ImageFolder:
    """A checked ImageFolder with the train or the eval transform (decoded images kept in
    memory if ``cache``)."""
    root = Path(root)
    check_image_folder(root, verify_images)
    if train:
        transform = train_transform(image_size, crop_scale)
    else:
        transform = eval_transform(image_size, resize)
    loader = MemoizedReader() if cache else read_image
    return ImageFolder(str(root), transform=transform, loader=loader)


def keep_samples(folder: ImageFolder, indices: list[int]) -> None:
    """Keep only these samples of ``folder`` (``limits.eval_items``)."""
    folder.samples = folder.imgs = [folder.samples[i] for i in indices]
    folder.targets = [folder.targets[i] for i in indices]


def seeded_split(folder: ImageFolder, decode: str, cache: bool = False) -> Dataset:
    """A split keyed by ``(index, seed)``, decoded in the workers or on the device."""
    if decode not in DECODE_WHERE:
        raise ConfigError(f"data.decode is {decode!r}; expected one of {', '.join(DECODE_WHERE)}")
    if cache and decode == "device":
        raise ConfigError(
            "data.cache keeps decoded images on the CPU and data.decode: device decodes "
            "each batch on the device: set one of them"
        )
    return EncodedFolder(folder) if decode == "device" else Seeded(folder)
