"""The per-layer quantization health artefact against values computed by hand."""

from __future__ import annotations

import csv
import io
import math

import pytest
import torch
from torch import nn

from repq.qat import health
from repq.quant.layers import QuantConv2d, QuantLinear
from repq.quant.policy import LayerPrecision
from repq.reparam.repvgg import RepVGGBlock
from repq.vocab import FP_BITS

# 4-bit signed weights with step 1: the codes are round(w), the range [-8, 7].
WEIGHTS = [-9.0, -8.4, 0.0, 7.4, 7.6, 20.0]
CLIPPED = 3 / 6  # -9, 7.6 (rounds to 8) and 20 fall outside
# 4-bit unsigned inputs with step 0.5: the codes are round(2x), the range [0, 15].
INPUTS = [0.0, 0.2, 1.0, 3.0, 9.0, -1.0]


def sqnr_by_hand(values: list[float], step: float, low: int, high: int) -> float:
    quantized = [min(max(round(v / step), low), high) * step for v in values]
    signal = sum(v * v for v in values)
    noise = sum((q - v) ** 2 for q, v in zip(quantized, values, strict=True))
    return 10 * math.log10(signal / noise)


def quant_conv() -> QuantConv2d:
    """A 1x6 conv holding :data:`WEIGHTS`, its steps set by hand (no calibration)."""
    conv = nn.Conv2d(1, 1, (1, 6), bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(WEIGHTS).reshape(1, 1, 1, 6))
    layer = QuantConv2d(conv, LayerPrecision("conv", 4, 4, input_signed=False))
    layer.weight_quant._set_step(torch.tensor([1.0]))
    layer.input_quant._set_step(torch.tensor([0.5]))
    return layer


def test_the_outlier_ratio_is_the_worst_channels_max_over_mean():
    weight = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0], [-2.0, 2.0, 0.0, 0.0]])
    assert health.outlier_ratio(weight) == pytest.approx(4.0)  # channel 1: 4 / 1
    assert health.outlier_ratio(weight[:1]) == pytest.approx(1.0)
    # a large but flat channel: its max is the tensor's, its ratio 1; the worst is still 4
    flat = torch.cat([weight, torch.full((1, 4), 10.0)])
    assert health.outlier_ratio(flat) == pytest.approx(4.0)


@pytest.mark.parametrize(
    ("signal", "noise", "expected"), [(100.0, 1.0, 20.0), (1.0, 10.0, -10.0), (5.0, 0.0, math.inf)]
)
def test_sqnr_in_decibels(signal, noise, expected):
    assert health.sqnr_db(signal, noise) == pytest.approx(expected)


def test_a_silent_signal_has_no_sqnr():
    assert health.sqnr_db(0.0, 1.0) == -math.inf


def test_the_clipped_fraction_counts_weights_outside_the_integer_range():
    assert health.clipped_fraction(quant_conv()) == pytest.approx(CLIPPED)
    assert health.clipped_fractions(nn.Sequential(quant_conv())) == {"0": pytest.approx(CLIPPED)}


def test_the_rows_hold_the_hand_computed_numbers():
    model = nn.Sequential(quant_conv()).train()
    batch = torch.tensor(INPUTS).reshape(1, 1, 1, 6)
    (row,) = health.health_rows(model, {"0": 0.25}, batch)
    assert model.training  # measured in eval mode, the mode restored
    assert row["layer"] == "0"
    assert (row["weight_bits"], row["input_bits"]) == (4, 4)
    assert row["weight_outlier_ratio"] == pytest.approx(20.0 / (sum(map(abs, WEIGHTS)) / 6))
    assert row["weight_clipped_init"] == 0.25
    assert row["weight_clipped_end"] == pytest.approx(CLIPPED)
    assert row["weight_sqnr_db"] == pytest.approx(sqnr_by_hand(WEIGHTS, 1.0, -8, 7), rel=1e-6)
    assert row["input_sqnr_db"] == pytest.approx(sqnr_by_hand(INPUTS, 0.5, 0, 15), rel=1e-6)


def test_a_layer_without_an_initial_record_gets_nan():
    (row,) = health.health_rows(nn.Sequential(quant_conv()), {}, torch.ones(1, 1, 1, 6))
    assert math.isnan(row["weight_clipped_init"])


def test_rows_follow_the_forward_order():
    linear = QuantLinear(nn.Linear(1, 2), LayerPrecision("fc", 8, 8, input_signed=True))
    model = nn.Sequential(quant_conv(), nn.Flatten(), linear)
    rows = health.health_rows(model, {}, torch.rand(2, 1, 1, 6))
    assert [r["layer"] for r in rows] == ["0", "2"]
    assert rows[1]["weight_bits"] == 8


def test_float_rows_are_the_deploy_kernels_outlier_ratios():
    block = RepVGGBlock(4, 4, stride=1)
    model = nn.Sequential(block, nn.Flatten(), nn.Linear(4 * 5 * 5, 3)).eval()
    rows = health.float_health_rows(model)
    assert [r["layer"] for r in rows] == ["0", "2"]
    kernel, _ = block.eval().kernel_bias()
    assert rows[0]["weight_outlier_ratio"] == pytest.approx(health.outlier_ratio(kernel))
    assert all(r["weight_bits"] == FP_BITS == r["input_bits"] for r in rows)
    assert all(math.isnan(r[c]) for r in rows for c in health.COLUMNS[4:])


def test_the_csv_has_one_row_per_layer_under_the_columns():
    rows = health.health_rows(nn.Sequential(quant_conv()), {"0": 0.5}, torch.rand(1, 1, 1, 6))
    parsed = list(csv.DictReader(io.StringIO(health.health_csv(rows))))
    assert list(parsed[0]) == list(health.COLUMNS)
    assert float(parsed[0]["weight_clipped_end"]) == pytest.approx(CLIPPED)
    assert "\r" not in health.health_csv(rows)  # plain newlines, as every file we write
