"""LSQ on torch's own fused learnable fake-quant kernels (the CUDA path), run here on
the CPU against repq's torch-ops reference.

torch's kernels compute the code as ``round(x * (1 / s))`` where the reference (and
ONNX's QuantizeLinear) divides, ``round(x / s)``: the two give the same code except where
``x / s`` lies within a rounding error of a half-integer, where they may differ by one.
So outputs and input gradients are bit-equal wherever the two codes agree, and the step
gradient matches the exact sum of torch's own terms within the float32 summation error.
"""

from __future__ import annotations

import pytest
import torch
from conftest import layer_gradients
from lsq_operands import LAYERS, LAYOUTS, PRECISIONS, RANGES, calibrated_layer, operands, step_terms

from repq import cpu_kernel
from repq.quant.lsq import (
    fake_quantize,
    lsq_gradients,
    reference_fake_quantize,
    reference_lsq_gradients,
    torch_kernel_takes,
    torch_kernels_on,
)

# Step-gradient error relative to sum(|terms|) against the float64 sum of torch's float
# terms (x * (1 / s)), measured over these layouts, ranges and three seeds: at most
# 4.2e-7 (64 steps of 144 weights each, 4 bits; the reference's float sum: 1.6e-7).
STEP_SUM_TOLERANCE = 1e-6


def _codes_agree(x: torch.Tensor, step: torch.Tensor, bounds=(-torch.inf, torch.inf)):
    """Where dividing and multiplying by the reciprocal give the same code (clamped to
    ``bounds``: the output's; unclamped: whether the input's gradient passes)."""
    divided = torch.round(x / step).clamp(*bounds)
    return divided == torch.round(x * (1 / step)).clamp(*bounds)


@pytest.mark.parametrize("bounds", RANGES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_torch_kernels_quantize_as_the_reference_wherever_the_codes_agree(layout, bounds):
    """With exact ties in ``x``: equal outputs and input gradients where the codes agree;
    one step apart, at ties only, where they do not (at ``qmax + 0.5`` the clamped codes
    agree but the gradient passes on one side only). Infinities are left out: the
    per-channel kernel casts the rounded code to an integer first, so +inf lands on qmin."""
    qmin, qmax = RANGES[bounds]
    x, grad, step = operands(layout, torch.float32, qmin, qmax, seed=1)
    x[x.isinf()] = 0.0
    with torch_kernels_on({"cpu"}):
        assert torch_kernel_takes(x, step, grad)
        out = fake_quantize(x, step, qmin, qmax)
        grad_x, _ = lsq_gradients(x, grad, step, qmin, qmax, 0.5)
    ref_out = reference_fake_quantize(x, step, qmin, qmax)
    ref_x, _ = reference_lsq_gradients(x, grad, step, qmin, qmax, 0.5)
    agree, passes = _codes_agree(x, step, (qmin, qmax)), _codes_agree(x, step)
    assert torch.equal(out[agree], ref_out[agree]) and torch.equal(grad_x[passes], ref_x[passes])
    apart = ((out - ref_out) / step.expand_as(x))[~agree]
    assert torch.allclose(apart.abs(), torch.ones_like(apart), rtol=1e-5, atol=0)
    ratio = (x / step)[~agree]
    assert torch.allclose((ratio - ratio.floor()), torch.full_like(ratio, 0.5), atol=1e-4)
    assert agree.float().mean() > 0.9  # the ties are the 10% of x put on them


@pytest.mark.parametrize("bounds", RANGES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_torch_kernels_step_gradient_is_the_exact_sum_within_float32_error(layout, bounds, seed):
    qmin, qmax = RANGES[bounds]
    x, grad, step = operands(layout, torch.float32, qmin, qmax, seed=seed, edges=False)
    with torch_kernels_on({"cpu"}):
        _, grad_step = lsq_gradients(x, grad, step, qmin, qmax, 0.5)
    assert grad_step.shape == step.shape and grad_step.dtype == torch.float32
    terms = step_terms(x, grad, step, qmin, qmax, reciprocal=True)
    exact, magnitude = terms.sum(1), terms.abs().sum(1)
    error = (grad_step.reshape(-1).double() - 0.5 * exact).abs() / (0.5 * magnitude)
    assert error.max() <= STEP_SUM_TOLERANCE
    assert terms.shape[1] * STEP_SUM_TOLERANCE < 1  # below one average term


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("kind", LAYERS)
def test_every_quantized_layer_trains_alike_on_torch_kernels_and_on_the_reference(kind, precision):
    """A training step of every quantized layer kind, fused path and stored operands."""
    layer, x = calibrated_layer(kind, precision)
    with cpu_kernel.enabled(False, ("lsq",)):
        ref_out, ref_grads = layer_gradients(layer, x)
        with torch_kernels_on({"cpu"}):
            out, grads = layer_gradients(layer, x)
    assert torch.equal(out, ref_out)
    assert grads.keys() == ref_grads.keys() >= {"input", "input_quant.step", "weight_quant.step"}
    for name, grad in ref_grads.items():
        if name.endswith(".step"):
            # measured: at most 9.3e-6 of the largest step gradient of the layer. Each
            # term has the error of x * (1 / s) against x / s, up to an ulp of the code
            # (1.5e-5 near 255), and is summed in another order
            error = (grads[name] - grad).abs().max() / grad.abs().max()
            assert error <= 2e-5, name
        else:
            assert torch.equal(grads[name], grad), name


def test_what_the_torch_kernels_take():
    """float32, one step per tensor or per row; by default only on CUDA."""
    x, grad, step = operands("weight", torch.float32, -8, 7)
    assert not torch_kernel_takes(x, step)  # the CPU is not among the default devices
    with torch_kernels_on({"cpu"}):
        assert torch_kernel_takes(x, step, grad)
        assert not torch_kernel_takes(x.double(), step.double())
        assert not torch_kernel_takes(x, step[:1].expand(2, 1, 1, 1))
        assert not torch_kernel_takes(x[:0], step[:0])
    assert not torch_kernel_takes(x, step)
