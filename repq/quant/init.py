"""Initial LSQ steps: the rules, and the per-run choice of rule and calibration size.

The supplementary material does not say how the steps were initialised. Three rules:

* ``lsq``: ``2 mean|x| / sqrt(Qp)`` (the LSQ paper). It ignores the largest values, so
  it clips a merged RepVGG kernel's identity tap, which is 20-100x the mean weight;
* ``minmax``: the smallest step that clips nothing, ``max(max x / Qp, min x / -Qn)``;
* ``mse``: the step, among ``k / 100`` of the min-max step (``k = 1..100``), that
  minimises the squared quantization error (per output channel for weights), as the
  MSE observers of MQBench-style toolkits do.

Weights are initialised from the deploy weight itself; activations from several
calibration batches (the mean of each batch's step; MSE on a strided sample of at
most ``ACT_SAMPLE`` values of each batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

INIT_RULES = ("lsq", "minmax", "mse")
MSE_GRID = 100
ACT_SAMPLE = 1 << 16


@dataclass(frozen=True)
class QuantInit:
    """How a run initialises its steps: a rule for weights, one for activations, and the
    number of calibration batches (the recipe's ``quant`` section; these are the
    defaults, chosen by measuring every pair of rules as post-training quantization:
    docs/choices.md)."""

    weight: str = "minmax"
    activation: str = "mse"
    calibration_batches: int = 8

    def rule(self, weight: bool) -> str:
        return self.weight if weight else self.activation

    @classmethod
    def from_config(cls, config: dict) -> QuantInit:
        section = config.get("quant", {})
        keys = {"weight_init": "weight", "act_init": "activation"}
        fields = ("weight_init", "act_init", "calibration_batches")
        return cls(**{keys.get(k, k): v for k, v in section.items() if k in fields})


def _rows(x: Tensor, per_channel: bool) -> Tensor:
    """``x`` as float ``[steps, values]``: one row per output channel, or one row."""
    x = x.detach().float()
    return x.reshape(x.shape[0], -1) if per_channel else x.reshape(1, -1)


def lsq_step(rows: Tensor, qmin: int, qmax: int) -> Tensor:
    """``2 mean|x| / sqrt(Qp)`` per row."""
    return 2 * rows.abs().mean(1) / math.sqrt(qmax)


def minmax_step(rows: Tensor, qmin: int, qmax: int) -> Tensor:
    """The smallest step per row with ``qmin <= x / s <= qmax`` for every value."""
    step = rows.amax(1).clamp_min(0) / qmax
    if qmin < 0:
        step = torch.maximum(step, rows.amin(1).clamp_max(0) / qmin)
    return step


def mse_step(rows: Tensor, qmin: int, qmax: int) -> Tensor:
    """The step among ``k / MSE_GRID`` of the min-max step with the least squared error
    per row (the largest such step on a tie)."""
    top = minmax_step(rows, qmin, qmax).clamp_min(1e-12)
    best_error = torch.full_like(top, math.inf)
    best = top.clone()
    for k in range(MSE_GRID, 0, -1):
        step = (top * (k / MSE_GRID))[:, None]
        error = (torch.clamp(torch.round(rows / step), qmin, qmax) * step - rows).square_().sum(1)
        better = error < best_error
        best = torch.where(better, step[:, 0], best)
        best_error = torch.where(better, error, best_error)
    return best


RULES = {"lsq": lsq_step, "minmax": minmax_step, "mse": mse_step}


def initial_step(x: Tensor, rule: str, qmin: int, qmax: int, per_channel: bool) -> Tensor:
    """The initial step of ``x`` by ``rule`` (one per output channel if ``per_channel``);
    an activation is sampled with a stride when it holds more than ``ACT_SAMPLE`` values."""
    rows = _rows(x, per_channel)
    if not per_channel and rows.shape[1] > ACT_SAMPLE:
        rows = rows[:, :: -(-rows.shape[1] // ACT_SAMPLE)]
    return RULES[rule](rows, qmin, qmax)
