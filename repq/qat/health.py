"""Per-layer quantization health: why a layer fails, in numbers.

For every quantized layer of a model (its deploy weight, eval-mode statistics):

* ``weight_outlier_ratio``: the largest ``max|w| / mean|w|`` over output channels (a
  merged RepVGG kernel's identity tap makes it large);
* ``weight_clipped_init``, ``weight_clipped_end``: the fraction of weights outside the
  quantizer's range (``round(w / s)`` beyond ``[-Qn, Qp]``), after calibration and after
  training;
* ``weight_sqnr_db``, ``input_sqnr_db``: signal-to-quantization-noise ratio
  ``10 log10(sum x^2 / sum (x - Q(x))^2)`` of the weight and of the layer's input on a
  batch.
"""

from __future__ import annotations

import csv
import io
import math

import torch
from torch import Tensor, nn

from repq.quant.layers import QuantLayer
from repq.reparam.surgery import outermost, reparameterize
from repq.vocab import FP_BITS

COLUMNS = (
    "layer",
    "weight_bits",
    "input_bits",
    "weight_outlier_ratio",
    "weight_clipped_init",
    "weight_clipped_end",
    "weight_sqnr_db",
    "input_sqnr_db",
)


def quant_layers(model: nn.Module) -> list[tuple[str, QuantLayer]]:
    return outermost(model, lambda m: isinstance(m, QuantLayer))


def sqnr_db(signal: float, noise: float) -> float:
    """``10 log10(signal / noise)``; infinite without noise."""
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def outlier_ratio(weight: Tensor) -> float:
    """The largest ``max|w| / mean|w|`` over output channels."""
    magnitude = weight.detach().abs().float().reshape(weight.shape[0], -1)
    ratios = magnitude.amax(1) / magnitude.mean(1).clamp_min(1e-30)
    return float(ratios.max())


@torch.no_grad()
def clipped_fraction(layer: QuantLayer) -> float:
    """The fraction of the layer's deploy weights that its quantizer clips."""
    weight, _ = layer.float_weight()
    quantizer = layer.weight_quant
    codes = quantizer.integers(weight, clamp=False)
    outside = (codes < quantizer.qmin) | (codes > quantizer.qmax)
    return float(outside.float().mean())


def clipped_fractions(model: nn.Module) -> dict[str, float]:
    """Layer name -> :func:`clipped_fraction` (recorded after calibration)."""
    return {name: clipped_fraction(layer) for name, layer in quant_layers(model)}


@torch.no_grad()
def _weight_sqnr(layer: QuantLayer) -> float:
    weight, _ = layer.float_weight()
    noise = (layer.weight_quant(weight) - weight).square().sum()
    return sqnr_db(float(weight.square().sum()), float(noise))


@torch.no_grad()
def input_sqnr(model: nn.Module, batch: Tensor) -> dict[str, float]:
    """Layer name -> SQNR (dB) of its input quantizer on ``batch`` (eval mode)."""
    sums: dict[str, list[float]] = {}
    hooks = []
    for name, layer in quant_layers(model):

        def record(module, inputs, name=name) -> None:
            (x,) = inputs  # what the layer quantizes: its quantizer's output is computed
            error = module.input_quant(x) - x  # here, as a fused layer never calls it
            sums[name] = [float(x.float().square().sum()), float(error.square().sum())]

        hooks.append(layer.register_forward_pre_hook(record))
    training = model.training
    try:
        model.eval()(batch)
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    return {name: sqnr_db(*sums[name]) for name in sums}


@torch.no_grad()
def health_rows(model: nn.Module, clipped_init: dict[str, float], batch: Tensor) -> list[dict]:
    """One row of :data:`COLUMNS` per quantized layer of ``model``, in forward order."""
    inputs = input_sqnr(model, batch)
    rows = []
    for name, layer in quant_layers(model):
        weight, _ = layer.float_weight()
        rows.append(
            {
                "layer": name,
                "weight_bits": layer.precision.weight_bits,
                "input_bits": layer.precision.input_bits,
                "weight_outlier_ratio": outlier_ratio(weight),
                "weight_clipped_init": clipped_init.get(name, math.nan),
                "weight_clipped_end": clipped_fraction(layer),
                "weight_sqnr_db": _weight_sqnr(layer),
                "input_sqnr_db": inputs.get(name, math.nan),
            }
        )
    return rows


@torch.no_grad()
def float_health_rows(model: nn.Module) -> list[dict]:
    """The rows of a float model: its deploy weights' outlier ratios (what PTQ meets)."""
    deploy = reparameterize(model)
    layers = outermost(deploy, lambda m: isinstance(m, nn.Conv2d | nn.Linear))
    blank = dict.fromkeys(COLUMNS[4:], math.nan)
    return [
        {
            "layer": name,
            "weight_bits": FP_BITS,
            "input_bits": FP_BITS,
            "weight_outlier_ratio": outlier_ratio(layer.weight),
            **blank,
        }
        for name, layer in layers
    ]


def health_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
