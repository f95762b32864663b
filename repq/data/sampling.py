"""Deterministic, resumable, shardable sampling.

Every sample's randomness (its augmentation) is a function of ``(seed, epoch, index)``
alone, so an epoch produces the same batches whatever the number of DataLoader workers,
whether the job was resumed, and (sharded by rank) whatever the number of processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample of one epoch."""
    return (seed * 1_000_003 + epoch * 7_919 + index * 104_729) % (2**63 - 1)


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, sample_seed)`` for one rank's share of an epoch.

    The epoch's permutation depends on ``(seed, epoch)``; rank ``r`` of ``world`` takes
    every ``world``-th position starting at ``r``, so the ranks' batches at one step
    together are the single-process batch of ``world x`` the size.
    """

    def __init__(
        self,
        length: int,
        seed: int,
        shuffle: bool,
        rank: int = 0,
        world: int = 1,
        samples_per_epoch: int | None = None,
    ) -> None:
        self.length, self.seed, self.shuffle = length, seed, shuffle
        self.rank, self.world = rank, world
        self.total = samples_per_epoch or length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list[int]:
        if not self.shuffle:
            return [i % self.length for i in range(self.total)]
        gen = torch.Generator().manual_seed(self.seed * 9_973 + self.epoch)
        repeats = -(-self.total // self.length)
        order = torch.cat([torch.randperm(self.length, generator=gen) for _ in range(repeats)])
        return order[: self.total].tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self._order()
        for position in range(self.rank, len(order), self.world):
            index = order[position]
            yield index, sample_seed(self.seed, self.epoch, position)

    def __len__(self) -> int:
        return len(range(self.rank, self.total, self.world))


@contextlib.contextmanager
def cpu_rng_seeded(seed: int) -> Iterator[None]:
    """Torch's CPU generator seeded with ``seed`` inside the block, its state restored
    after. Not ``torch.manual_seed``: without CUDA initialised, each call also queues a
    CUDA, XPU and MTIA seeding with a formatted stack trace (``benchmarks/input_pipeline.py``
    measures the cost per sample)."""
    generator = torch.default_generator
    state = generator.get_state()
    generator.manual_seed(seed)
    try:
        yield
    finally:
        generator.set_state(state)


class Seeded(Dataset):
    """Wraps a dataset whose transforms draw from torch's global RNG: each item is
    produced under its own seed, in a forked RNG state."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        with cpu_rng_seeded(seed):
            return self.dataset[index]


class FixedSeed(Dataset):
    """An ``(index, seed)``-keyed dataset read by index alone, at seed 0 (evaluation data
    are not augmented)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.collate = getattr(dataset, "collate", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index, 0]
