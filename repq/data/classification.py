"""ImageNet-style classification from an ImageFolder tree (``train/``, ``val/``)."""

from __future__ import annotations

from pathlib import Path

from torchvision import transforms
from torchvision.datasets import ImageFolder

from repq.data.images import check_readable, list_images, load_rgb, require_dir
from repq.errors import DataError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


CROP_SCALE = (0.08, 1.0)
"""RandomResizedCrop's area range (torchvision's and the reference scripts' default)."""


def train_transform(image_size: int, crop_scale: tuple[float, float]) -> transforms.Compose:
    """RandomResizedCrop (area fraction in ``crop_scale``) and horizontal flip, then the
    usual normalisation."""
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(image_size, scale=crop_scale),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )


def eval_transform(image_size: int, resize: int) -> transforms.Compose:
    """Resize the short side to ``resize`` and centre-crop ``image_size``."""
    return transforms.Compose(
        [
            transforms.Resize(resize),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )


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
) -> ImageFolder:
    """A checked ImageFolder with the train or the eval transform."""
    root = Path(root)
    check_image_folder(root, verify_images)
    if train:
        transform = train_transform(image_size, crop_scale)
    else:
        transform = eval_transform(image_size, resize)
    return ImageFolder(str(root), transform=transform, loader=load_rgb)
