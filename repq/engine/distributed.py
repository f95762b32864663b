"""Process-group set-up for ``torchrun`` (NCCL on GPU, gloo on CPU) and device choice."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """Where this process runs: its rank, the world size and its device."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup(device: str = "auto") -> Context:
    """Join the process group that ``torchrun`` describes in the environment (if any)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Context(rank, world, local_rank, chosen)


def peak_memory(ctx: Context) -> dict[str, float]:
    """This process's peak device memory so far, ``{"cuda_max_allocated_mb": ...}`` on
    CUDA (the job's peak RSS is Snakemake's ``benchmark:``), nothing on the CPU."""
    if ctx.device.type != "cuda":
        return {}
    return {"cuda_max_allocated_mb": torch.cuda.max_memory_allocated(ctx.device) / 2**20}


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(ctx: Context, tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks (in place); a no-op for one process."""
    if ctx.distributed:
        dist.all_reduce(tensor)
    return tensor
