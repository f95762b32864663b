"""The CUDA path (runs where a GPU is present; see benchmarks/README.md for the GPU run)."""

from __future__ import annotations

import pytest
import torch
from conftest import rel_err

from repq.models import create
from repq.qat import prepare, to_deploy

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("method", ["merged", "repq", "bnest"])
def test_qat_step_has_no_host_synchronisation(method):
    model = prepare(create("repvgg_a0", num_classes=10, width_mult=0.25), method, 4).cuda()
    x = torch.randn(8, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    model = model.to(memory_format=torch.channels_last).train()
    model(x)  # initialises the steps (a one-off)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x)
        out.float().logsumexp(1).mean().backward()
        optimizer.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@cuda
@pytest.mark.parametrize("channels", [None, 32], ids=["per tensor", "per channel"])
def test_lsq_runs_on_torchs_fused_kernels_and_matches_the_cpu_reference(channels):
    """On CUDA, LSQ is torch's learnable fake-quant op: outputs and input gradients as
    the CPU reference wherever ``x * (1 / s)`` and ``x / s`` give the same code, the step
    gradient within float32 summation error."""
    from repq.quant.lsq import LSQQuantizer, torch_kernel_takes

    quantizer = LSQQuantizer(4, signed=True, channels=channels)
    x = torch.randn(32, 16, 9, 9) if channels else torch.randn(8, 16, 28, 28)
    quantizer(x)  # initialises the step
    grad = torch.randn_like(x)
    results = []
    for device in ("cpu", "cuda"):
        q = quantizer.to(device)
        q.step.grad = None
        x_in = x.to(device).requires_grad_(True)
        out = q(x_in)
        out.backward(grad.to(device))
        results.append((out.cpu(), x_in.grad.cpu(), q.step.grad.cpu()))
    assert torch_kernel_takes(x.cuda(), quantizer.to("cuda")._shaped_step(x.cuda()))
    (out, grad_x, grad_step), (out_c, grad_x_c, grad_step_c) = results
    step = quantizer.to("cpu")._shaped_step(x)
    same = torch.round(x / step) == torch.round(x * (1 / step))
    assert same.float().mean() > 0.999
    assert torch.equal(out[same], out_c[same]) and torch.equal(grad_x[same], grad_x_c[same])
    assert rel_err(grad_step_c, grad_step) < 1e-5


@cuda
@pytest.mark.parametrize("name", ["repvgg_a0", "orepa_resnet18", "ecbsr"])
def test_eval_equals_deploy_on_cuda(name):
    kwargs = {"m": 2, "c": 8} if name == "ecbsr" else {"num_classes": 10, "width_mult": 0.25}
    qat = prepare(create(name, **kwargs), "repq", 4).cuda()
    channels = 1 if name == "ecbsr" else 3
    x = torch.rand(2, channels, 32, 32, device="cuda") * (255 if name == "ecbsr" else 1)
    with torch.no_grad():
        qat.train()(x)
        assert rel_err(to_deploy(qat)(x), qat.eval()(x)) <= 1e-5


@cuda
def test_qat_trains_in_fp32_by_default_so_codes_times_steps_reach_the_conv_exactly():
    """The trainer's QAT default (no bf16, no TF32) puts the 8-bit grid on CUDA exactly
    where the CPU puts it: a QuantConv's output matches float64 within fp32 error."""
    import torch.backends

    from repq.engine.optim import stage_numerics
    from repq.vocab import Stage

    numerics = stage_numerics({"amp": True, "tf32": True}, Stage.parse("qat-repq-8"))
    assert not numerics.amp and not numerics.tf32
    torch.backends.cudnn.allow_tf32 = numerics.tf32
    torch.backends.cuda.matmul.allow_tf32 = numerics.tf32
    model = prepare(create("repvgg_a0", num_classes=10, width_mult=0.25), "repq", 8)
    x = torch.randn(4, 3, 32, 32)
    model.train()(x)  # initialises the steps
    deploy = to_deploy(model).eval()
    reference = deploy.double()(x.double())
    out = deploy.float().cuda()(x.cuda())
    assert rel_err(out.double().cpu(), reference) < 1e-5


@cuda
def test_device_decoding_on_cuda_matches_the_workers_batches(mini_data, tmp_path):
    """nvJPEG and the CUDA resampling against the CPU path, same seeds: the same crops and
    flips, pixels within a few levels (JPEG decoders differ in their IDCT rounding)."""
    from PIL import Image

    from repq.data.classification import image_folder, seeded_split

    for path in sorted((mini_data / "cls" / "train").rglob("*.png"))[::4]:
        target = tmp_path / path.parent.name / path.with_suffix(".jpg").name
        target.parent.mkdir(exist_ok=True)
        Image.open(path).save(target, quality=90)
    folder = image_folder(tmp_path, True, 24, 28, verify_images=False, crop_scale=(0.35, 1.0))
    workers, device = seeded_split(folder, "workers"), seeded_split(folder, "device")
    keys = [(i, 7 * i + 1) for i in range(len(folder))]
    expected = torch.stack([workers[k][0] for k in keys])
    batch, _ = device.collate([device[k] for k in keys])
    decoded = batch.to("cuda")
    assert decoded.is_cuda and decoded.shape == expected.shape
    difference = (decoded.cpu() - expected).abs()
    assert difference.mean() < 0.02 and difference.max() < 0.5
