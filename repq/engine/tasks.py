"""The two tasks of the paper: ImageNet classification and ECBSR super-resolution.

A task owns its data, its loss and its evaluation; its metrics and its model-selection
rule (S1: classification keeps the best validation top-1, super-resolution the last
epoch) are the facts of :data:`repq.vocab.TASKS`.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from repq.data.identity import EVALUATION, TRAINING, DataRef, data_ref
from repq.data.sampling import FixedSeed
from repq.data.superres import SRTestSet, SRTrainSet
from repq.engine.metrics import min_sr_side, psnr_y, ssim_y
from repq.errors import ConfigError, DataError
from repq.vocab import TASKS


def evenly_spaced(count: int, keep: int) -> list[int]:
    """``keep`` indices of ``range(count)`` spread evenly from the first (all if fewer)."""
    if keep >= count:
        return list(range(count))
    return [i * count // keep for i in range(keep)]


def means(scores: dict[str, torch.Tensor]) -> dict[str, float]:
    """The metrics of per-item ``scores``: the mean of each."""
    return {name: items.mean().item() for name, items in scores.items()}


class Task(ABC):
    """Data, loss and evaluation of one kind of experiment. With ``train=False`` (an
    evaluation job) the training set is neither built nor checked."""

    any_input_size = False
    """Whether the task's models take inputs of any height and width (whole images)."""

    def __init__(self, config: dict, train: bool = True) -> None:
        self.config = config
        self.data = config["data"]
        self.facts = TASKS[config["task"]]
        self.select = self.facts.selection
        self.primary = self.facts.primary
        self.limits = config.get("limits", {})

    @abstractmethod
    def train_set(self) -> Dataset:
        """The training set, keyed by ``(index, seed)``."""

    @property
    def samples_per_epoch(self) -> int | None:
        return None

    def batch_size(self, device: torch.device) -> int:
        """``train.batch_size``, or ``limits.cpu_batch_size`` where that is smaller and
        the job runs on the CPU (a rehearsal: the recipe's own batch on a GPU)."""
        batch = self.config["train"]["batch_size"]
        cpu_batch = self.limits.get("cpu_batch_size")
        return min(batch, cpu_batch) if cpu_batch and device.type == "cpu" else batch

    def epoch_samples(self, length: int, batch_size: int) -> int:
        """Samples an epoch draws from a training set of ``length``: the task's, or
        ``limits.steps_per_epoch`` batches of ``batch_size`` where that is fewer."""
        steps = self.limits.get("steps_per_epoch")
        samples = self.samples_per_epoch or length
        return samples if steps is None else min(samples, steps * batch_size)

    def _eval_indices(self, count: int) -> list[int]:
        """The evaluation items kept of ``count``: all, or ``limits.eval_items`` of them
        evenly spaced (so a capped ImageNet val still spans the classes)."""
        keep = self.limits.get("eval_items")
        return list(range(count)) if keep is None else evenly_spaced(count, keep)

    @staticmethod
    @abstractmethod
    def example_input(config: dict) -> torch.Tensor:
        """A batch of two inputs of the shape the config's model takes (values random)."""

    @abstractmethod
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def scores(self, model: nn.Module, device: torch.device) -> dict[str, torch.Tensor]:
        """Every metric of a model (already in its deploy form and eval mode), per
        validation or test item in the data's order (float64, on the CPU): a metric is
        the mean of its items."""

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Metrics of a model (already in its deploy form and eval mode)."""
        return means(self.scores(model, device))

    def is_better(self, metrics: dict[str, float], best: float | None) -> bool:
        return best is None or self.select == "last" or metrics[self.primary] > best

    @functools.cached_property
    def data_refs(self) -> list[DataRef]:
        """The data sets the task reads (the training set only if built), for the runs'
        dataset inputs; listed once however many runs log them."""
        return self._data_refs()

    @abstractmethod
    def _data_refs(self) -> list[DataRef]: ...


class ClassificationTask(Task):
    def __init__(self, config: dict, train: bool = True) -> None:
        super().__init__(config, train)
        root = Path(self.data.get("root", ""))
        self.cache = bool(self.data.get("cache", False))
        self._val_batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._train = self._folder(root / "train", True) if train else None  # checked
        self._val = self._folder(root / "val", False)
        self._keep_eval_items(self._val)
        classes = self._val.classes
        if self._train is not None and self._train.classes != classes:
            raise DataError(f"{root}/val has classes {classes}, train has {self._train.classes}")
        expected = config["model"].get("kwargs", {}).get("num_classes", 1000)
        if expected != len(classes):
            raise DataError(
                f"model.kwargs.num_classes is {expected} but {root}/val has {len(classes)} classes"
            )

    def _folder(self, root: Path, train: bool):
        from repq.data.classification import CROP_SCALE, image_folder  # torchvision: here only

        size = self.data.get("image_size", 224)
        return image_folder(
            root,
            train,
            size,
            self.data.get("resize", round(size * 256 / 224)),
            verify_images=self.data.get("verify_images", True),
            crop_scale=tuple(self.data.get("crop_scale", CROP_SCALE)),
            cache=self.cache,
        )

    def _keep_eval_items(self, folder) -> None:
        if "eval_items" not in self.limits:  # the whole split: nothing to copy
            return
        from repq.data.classification import keep_samples

        keep_samples(folder, self._eval_indices(len(folder)))

    def _split(self, folder) -> Dataset:
        from repq.data.classification import seeded_split

        return seeded_split(folder, self.data.get("decode", "workers"), self.cache)

    def train_set(self) -> Dataset:
        return self._split(self._train)

    def _data_refs(self) -> list[DataRef]:
        root = Path(self.data.get("root", ""))
        splits = [("train", self._train, TRAINING), ("val", self._val, EVALUATION)]
        return [
            data_ref(f"{root.name}/{split}", folder.root, (p for p, _ in folder.samples), use)
            for split, folder, use in splits
            if folder is not None
        ]

    @staticmethod
    def example_input(config: dict) -> torch.Tensor:
        size = config["data"].get("image_size", 224)
        return torch.randn(2, 3, size, size)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        smoothing = self.config["train"].get("label_smoothing", 0.0)
        return F.cross_entropy(output, target, label_smoothing=smoothing)

    def _val_loader(self) -> DataLoader:
        val = FixedSeed(self._split(self._val))
        return DataLoader(
            val,
            batch_size=self.batch_size(torch.device("cpu")),
            num_workers=self.data.get("workers", 0),
            collate_fn=val.collate,
        )

    def _val_data(self):
        """The validation batches; under ``data.cache`` made once and kept (the eval
        transform is deterministic)."""
        if not self.cache:
            return self._val_loader()
        if self._val_batches is None:
            self._val_batches = list(self._val_loader())
        return self._val_batches

    @torch.no_grad()
    def predict(self, model: nn.Module, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The arg-max class and the label of every validation image, in the split's
        order (on ``device``)."""
        predicted, labels = [], []
        for images, target in self._val_data():
            predicted.append(model(images.to(device, non_blocking=True)).argmax(dim=1))
            labels.append(target.to(device))
        return torch.cat(predicted), torch.cat(labels)

    def scores(self, model: nn.Module, device: torch.device) -> dict[str, torch.Tensor]:
        """Top-1 per image: 100 where the arg-max is the label, else 0."""
        predicted, labels = self.predict(model, device)
        return {self.primary: 100.0 * (predicted == labels).cpu().double()}


class SuperResTask(Task):
    any_input_size = True

    def __init__(self, config: dict, train: bool = True) -> None:
        super().__init__(config, train)
        if not self.data.get("test"):
            raise DataError("data.test names no super-resolution test set")
        self.scale = self.data.get("scale", 2)
        model_scale = config["model"].get("kwargs", {}).get("scale", 2)
        if model_scale != self.scale:
            raise DataError(f"data.scale is {self.scale} but model.kwargs.scale is {model_scale}")
        verify = self.data.get("verify_images", True)
        self.round_output = bool(self.data.get("round_output", False))
        test_lr = self.data.get("test_lr") or {}
        unknown = sorted(set(test_lr) - set(self.data["test"]))
        if unknown:
            raise ConfigError(f"data.test_lr names test sets not in data.test: {unknown}")
        self._train = (
            SRTrainSet(
                self.data.get("train", ""),
                self.scale,
                self.data["patch"],
                verify,
                self.data.get("train_lr"),
            )
            if train
            else None
        )
        self._tests = {
            name: SRTestSet(path, self.scale, verify, min_sr_side(self.scale), test_lr.get(name))
            for name, path in self.data["test"].items()
        }
        for test in self._tests.values():
            test.keep(self._eval_indices(len(test)))
        self.primary = f"{self.facts.primary}/{next(iter(self._tests))}"

    def train_set(self) -> Dataset:
        return self._train

    def _data_refs(self) -> list[DataRef]:
        refs = [
            data_ref(name, self.data["test"][name], test.files, EVALUATION)
            for name, test in self._tests.items()
        ]
        if self._train is None:
            return refs
        train = data_ref(
            Path(self.data["train"]).name, self.data["train"], self._train.files, TRAINING
        )
        return [train, *refs]

    @staticmethod
    def example_input(config: dict) -> torch.Tensor:
        colors = config["model"].get("kwargs", {}).get("colors", 1)
        return torch.rand(2, colors, 32, 32) * 255

    @property
    def samples_per_epoch(self) -> int:
        return len(self._train) * self.data.get("repeat", 1)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(output, target)

    @torch.no_grad()
    def scores(self, model: nn.Module, device: torch.device) -> dict[str, torch.Tensor]:
        """PSNR and SSIM (on Y) per test image, keyed ``<metric>/<test set>``; the
        output clamped, and rounded to 8 bits under ``data.round_output``."""
        score = {"psnr": psnr_y, "ssim": ssim_y}
        found: dict[str, list[float]] = {}
        for name, dataset in self._tests.items():
            for lr, hr in DataLoader(dataset, batch_size=1):
                sr = model(lr.to(device)).float().cpu()
                for metric in self.facts.metrics:
                    found.setdefault(f"{metric}/{name}", []).append(
                        score[metric](sr, hr, self.scale, self.round_output)
                    )
        return {key: torch.tensor(items, dtype=torch.float64) for key, items in found.items()}


ENGINES: dict[str, type[Task]] = {
    "classification": ClassificationTask,
    "superres": SuperResTask,
}
"""The engine side of every task of :data:`repq.vocab.TASKS`."""


def make_task(config: dict, train: bool = True) -> Task:
    """The task a config describes (its data checked at once; the training set only
    when ``train``)."""
    return ENGINES[config["task"]](config, train)
