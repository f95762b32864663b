"""The one-pass CPU kernel of LSQ (repq/csrc/lsq_cpu.cpp) against the torch-ops
reference of repq/quant/lsq.py: outputs and input gradients bit-equal, step gradients
within a tolerance tied to the measured summation error, on every quantized layer kind;
and the fallback where the kernel cannot build."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import layer_gradients
from lsq_operands import (
    LAYERS,
    LAYOUTS,
    PRECISIONS,
    RANGES,
    calibrated_layer,
    operands,
    repq_block,
    step_terms,
)
from torch import nn

from repq import cpu_kernel
from repq.qat import calibrate
from repq.quant.layers import QuantConv2d, set_recompute
from repq.quant.lsq import (
    fake_quantize,
    lsq_gradients,
    reference_fake_quantize,
    reference_lsq_gradients,
)
from repq.quant.policy import LayerPrecision

pytestmark = pytest.mark.skipif(cpu_kernel.kernel() is None, reason="the kernel did not build")

# Step-gradient error relative to sum(|terms|) against the float64 sum of the same float
# terms, measured over these shapes and ranges (the kernel sums in double, then rounds):
# float32 at most 2.7e-8 (torch's float sum: 4.8e-8), float64 at most 1.6e-16.
STEP_SUM_TOLERANCE = {torch.float32: 3e-7, torch.float64: 2e-15}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("bounds", RANGES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_kernel_quantizes_bit_equal_to_the_reference(layout, bounds, dtype):
    qmin, qmax = RANGES[bounds]
    x, _, step = operands(layout, dtype, qmin, qmax)
    x.view(-1)[3] = float("nan")
    out = fake_quantize(x, step, qmin, qmax)
    torch.testing.assert_close(
        out, reference_fake_quantize(x, step, qmin, qmax), rtol=0, atol=0, equal_nan=True
    )
    codes = torch.round(out.view(-1)[:3] / step.view(-1)[0])
    assert codes.tolist() == [qmax, qmin, 0]  # the infinities clamp, 0 stays 0
    # ties go to the even code, as torch.round
    assert torch.equal(fake_quantize(torch.tensor([0.5, 1.5, -2.5], dtype=dtype),
                                     torch.ones(1, dtype=dtype), -8, 7),
                       torch.tensor([0.0, 2.0, -2.0], dtype=dtype))  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("bounds", RANGES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_kernels_gradients_match_the_reference(layout, bounds, dtype):
    qmin, qmax = RANGES[bounds]
    x, grad, step = operands(layout, dtype, qmin, qmax, seed=1)
    grad_x, grad_step = lsq_gradients(x, grad, step, qmin, qmax, 0.5)
    ref_x, ref_step = reference_lsq_gradients(x, grad, step, qmin, qmax, 0.5)
    assert torch.equal(grad_x, ref_x)
    assert grad_step.shape == ref_step.shape == step.shape and grad_step.dtype == dtype
    terms = step_terms(x, grad, step, qmin, qmax)
    exact, magnitude = terms.sum(1), terms.abs().sum(1)
    error = (grad_step.reshape(-1).double() - 0.5 * exact).abs() / (0.5 * magnitude)
    assert error.max() <= STEP_SUM_TOLERANCE[dtype]
    # the bound is below an average term: one term lost or counted twice breaks it
    assert terms.shape[1] * STEP_SUM_TOLERANCE[dtype] < 1


def test_the_step_gradient_does_not_depend_on_the_number_of_threads():
    x, grad, step = operands("long tensor", torch.float32, -128, 127)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = lsq_gradients(x, grad, step, -128, 127, 1.0)[1]
        torch.set_num_threads(max(2, threads))
        many = lsq_gradients(x, grad, step, -128, 127, 1.0)[1]
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


def test_reusing_the_gradient_writes_the_input_gradient_over_it():
    x, grad, step = operands("activation", torch.float32, 0, 255)
    expected = reference_lsq_gradients(x, grad, step, 0, 255, 1.0)[0]
    grad_x, _ = lsq_gradients(x, grad, step, 0, 255, 1.0, reuse_grad=True)
    assert grad_x is grad and torch.equal(grad, expected)


def test_tensors_the_kernel_does_not_take_run_the_reference():
    x, grad, step = operands("activation", torch.float32, -128, 127)
    transposed = x.transpose(2, 3)  # not contiguous
    assert not cpu_kernel.usable(transposed, step)
    assert not cpu_kernel.usable(x.bfloat16(), step.bfloat16())
    assert not cpu_kernel.usable(x, step.double())
    with cpu_kernel.enabled(False):
        assert cpu_kernel.kernel() is None and not cpu_kernel.usable(x, step)
    assert cpu_kernel.usable(x, grad, step)
    wide_step = step.double()  # a step of another dtype than x: the reference, promoted
    grad_x, grad_step = lsq_gradients(x, grad, wide_step, -128, 127, 1.0)
    ref_x, ref_step = reference_lsq_gradients(x, grad, wide_step, -128, 127, 1.0)
    assert torch.equal(grad_x, ref_x)
    torch.testing.assert_close(grad_step, ref_step, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(
        fake_quantize(transposed, step, -128, 127),
        reference_fake_quantize(x, step, -128, 127).transpose(2, 3),
        rtol=0,
        atol=0,
    )


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("kind", LAYERS)
def test_every_quantized_layer_trains_alike_with_the_kernel_and_with_torch_ops(kind, precision):
    layer, x = calibrated_layer(kind, precision)
    out, grads = layer_gradients(layer, x)
    with cpu_kernel.enabled(False, ("lsq",)):  # BNest's kernels on in both: LSQ's alone differs
        ref_out, ref_grads = layer_gradients(layer, x)
    assert torch.equal(out, ref_out)
    assert grads.keys() == ref_grads.keys() >= {"input", "input_quant.step", "weight_quant.step"}
    for name, grad in ref_grads.items():
        if name.endswith(".step"):  # summed in another order (double, then rounded)
            # measured: at most 1.7e-7 of the largest step gradient of the layer
            error = (grads[name] - grad).abs().max() / grad.abs().max()
            assert error <= 2e-6, name
        else:  # the input gradient and what flows back from the weight: the same floats
            assert torch.equal(grads[name], grad), name


def test_without_a_compiler_the_reference_runs_after_one_warning(tmp_path):
    script = (
        "import warnings, torch\n"
        "from repq import cpu_kernel\n"
        "from repq.quant.lsq import lsq_fake_quantize\n"
        "x = torch.randn(100, requires_grad=True)\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    for _ in range(3):\n"
        "        lsq_fake_quantize(x, torch.tensor([0.1]), -8, 7, 1.0).sum().backward()\n"
        "print(len(caught), str(caught[0].message) if caught else '')\n"
        "print(cpu_kernel.kernel() is None, x.grad.abs().sum().item() > 0)\n"
    )
    env = {
        **os.environ,
        "CXX": str(tmp_path / "no-such-c++"),
        "TORCH_EXTENSIONS_DIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    count_and_message, state = done.stdout.strip().splitlines()
    assert count_and_message.startswith("1 repq: the CPU kernels did not build")
    assert "torch ops run instead" in count_and_message and "\n" not in count_and_message
    assert state == "True True"


def test_the_switch_in_the_environment_turns_the_kernel_off():
    env = {**os.environ, cpu_kernel.ENV: "0"}
    done = subprocess.run(
        [sys.executable, "-m", "repq.cli", "build-kernel"], env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout.strip()
        == "CPU kernels: not in use (REPQ_CPU_KERNEL=0); LSQ and the BNest merge run as torch ops"
    )


def test_a_repq_block_takes_the_fused_path_and_saves_its_floatoperands():
    layer = repq_block("estimate", weight_bits=8, input_bits=8, input_signed=False).train()
    x = torch.randn(3, 8, 10, 10).relu()
    calibrate(layer, [x])
    layer.train()
    assert type(layer(x).grad_fn).__name__ == "QuantizedOpFunctionBackward"


def test_a_frozen_weight_step_still_passes_the_weights_gradient():
    """Without a bias and with the weight's step frozen, the weight still learns."""
    layer = QuantConv2d(nn.Conv2d(8, 16, 3, 1, 1, bias=False), LayerPrecision("c", 8, 8, False))
    x = torch.randn(2, 8, 6, 6).relu()
    calibrate(layer, [x])
    layer.weight_quant.freeze()
    layer.train()(x).square().sum().backward()
    fused = layer.weight.grad.clone()
    layer.zero_grad(set_to_none=True)
    set_recompute(layer, False)
    layer(x).square().sum().backward()
    assert torch.equal(fused, layer.weight.grad)
