"""Optimiser, parameter groups and LR schedule from a Table S1 recipe.

Weight decay applies to conv and linear weights only: parameters with fewer than two
dimensions (biases, BN affine parameters, OREPA's branch scales, ECB's mask scales and
biases) are exempt, as in timm and torchvision's reference scripts, and LSQ steps are
exempt and get their own LR (``train.step_lr``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from repq.quant.lsq import LSQQuantizer
from repq.vocab import Stage


def lr_scale(train: dict) -> float:
    """``train.lr_scale``: a factor on every LR (weights and steps), e.g. the linear
    scaling rule for a batch smaller than Table S1's."""
    return train.get("lr_scale", 1.0)


def run_lr(train: dict, stage: Stage) -> float:
    """The LR of a job's weights: FP, quantized, or Merged 8-bit (Table S1), scaled, and
    for a QAT stage times its method's ``train.lr_mult`` (default 1)."""
    factor = train.get("lr_mult", {}).get(stage.method, 1.0) if stage.is_qat else 1.0
    return train["lr"][stage.lr_key] * lr_scale(train) * factor


def stage_train(train: dict, stage: Stage) -> dict:
    """The ``train`` section a stage runs with: the recipe's (S1: QAT keeps the FP recipe
    but the LR), with ``train.qat``'s keys replacing their FP values for quantized
    stages, and no epochs for PTQ."""
    if not stage.quantized:
        return train
    resolved = {**train, **train.get("qat", {})}
    return resolved if stage.trains else {**resolved, "epochs": 0}


@dataclass(frozen=True)
class Numerics:
    """How a stage computes on CUDA: bf16 autocast (``amp``) and TF32 (``tf32``)."""

    amp: bool
    tf32: bool


def stage_numerics(train: dict, stage: Stage) -> Numerics:
    """FP stages may use bf16 autocast and TF32 (``train.amp``, ``train.tf32``, default
    on); quantized stages run in fp32 unless ``train.qat`` says otherwise, so that
    ``codes x step`` reaches the conv exactly as the deployed integer model computes it
    (bf16 keeps 8 significant bits, TF32 10: both round an 8-bit code times its step)."""
    if stage.quantized:
        qat = train.get("qat", {})
        return Numerics(amp=qat.get("amp", False), tf32=qat.get("tf32", False))
    return Numerics(amp=train.get("amp", True), tf32=train.get("tf32", True))


def parameter_groups(model: nn.Module, train: dict, lr: float, bits: int | None) -> list[dict]:
    """Decayed weights, exempt parameters, and the quantizer steps with their own LR."""
    decay, exempt, steps = [], [], []
    step_ids = {id(m.step) for m in model.modules() if isinstance(m, LSQQuantizer)}
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if id(param) in step_ids:
            steps.append(param)
        elif param.dim() < 2:
            exempt.append(param)
        else:
            decay.append(param)
    groups = [
        {"params": decay, "lr": lr, "weight_decay": train["weight_decay"], "name": "decay"},
        {"params": exempt, "lr": lr, "weight_decay": 0.0, "name": "no_decay"},
    ]
    if steps:
        step_lr = train["step_lr"][str(bits)] * lr_scale(train)
        groups.append({"params": steps, "lr": step_lr, "weight_decay": 0.0, "name": "steps"})
    return [g for g in groups if g["params"]]


def make_optimizer(groups: list[dict], train: dict) -> torch.optim.Optimizer:
    if train["optimizer"] == "sgd":
        return torch.optim.SGD(groups, momentum=train.get("momentum", 0.9))
    return torch.optim.Adam(groups)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine to zero or constant."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(
    optimizer: torch.optim.Optimizer, train: dict, epochs: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration schedule over ``epochs`` (stepped after every optimiser step)."""
    total = epochs * steps_per_epoch
    warmup = round(train.get("warmup_epochs", 0) * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, train["schedule"])
    )
