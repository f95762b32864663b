"""Run by ``benchmarks/gpu_check.py`` under ``torchrun --nproc-per-node 2``: one DDP
training step of a 4-bit RepQ RepVGG-A0 over NCCL, each rank on its own GPU with its own
half of the batch; after the all-reduce every rank must hold the same gradients (checked
by gathering their norms)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from repq.models import create
from repq.qat import calibrate, prepare


def main() -> None:
    dist.init_process_group("nccl")
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(device)
    torch.manual_seed(0)
    model = prepare(create("repvgg_a0", num_classes=10, width_mult=0.25), "repq", 4).to(device)
    batch = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(device)
    calibrate(model, [batch])
    model = DistributedDataParallel(model.train(), device_ids=[device.index])
    half = batch.chunk(dist.get_world_size())[rank]
    model(half).logsumexp(1).mean().backward()
    norms = torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])
    gathered = [torch.empty_like(norms) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, norms)
    if not all(torch.equal(gathered[0], g) for g in gathered):
        raise SystemExit("ddp nccl: the ranks' gradients differ after the all-reduce")
    if rank == 0:
        print(f"ddp nccl: {norms.numel()} gradients equal on {len(gathered)} ranks")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
