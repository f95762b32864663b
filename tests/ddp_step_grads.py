"""Run by ``test_quant.py`` under ``torchrun`` (gloo) or alone: the LSQ step gradients of
a 4-bit RepQ ECBSR for one global batch of 8, split over the processes; rank 0 saves
them to the file named by the first argument."""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import repq.models
import repq.qat


def step_gradients() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = repq.qat.prepare(repq.models.create("ecbsr", m=1, c=8, scale=2), "repq", 4)
    batch = torch.rand(8, 1, 12, 12, generator=torch.Generator().manual_seed(1)) * 255
    repq.qat.calibrate(model, [batch])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
        rank = dist.get_rank()
        model = DistributedDataParallel(model)
        batch = batch.chunk(world)[rank]
    model(batch).square().mean().backward()
    module = model.module if world > 1 else model
    return {n: p.grad.clone() for n, p in module.named_parameters() if n.endswith(".step")}


if __name__ == "__main__":
    grads = step_gradients()
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(grads, sys.argv[1])
    if dist.is_initialized():
        dist.destroy_process_group()
