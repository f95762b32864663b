"""ONNX QDQ export: every architecture, method and bit width against onnxruntime, the
integer codes and types node by node, the int32 bias, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import RECIPES, as_args, cls_overrides, randomize, tracking_overrides
from mlflow.tracking import MlflowClient
from onnx import numpy_helper
from torch import nn

from repq.cli import main
from repq.export import export_model, integer_form, weight_codes
from repq.models import create
from repq.qat import calibrate, prepare, to_deploy
from repq.quant.layers import QuantConv2d, QuantLayer
from repq.quant.policy import LayerPrecision

SMALL = {
    "repvgg_a0": {"num_classes": 12, "width_mult": 0.25},
    "repvgg_b0": {"num_classes": 12, "width_mult": 0.25},
    "ac_resnet18": {"num_classes": 12, "width_mult": 0.25},
    "orepa_resnet18": {"num_classes": 12, "width_mult": 0.25},
    "ecbsr": {"m": 1, "c": 8},
}
CASES = [
    (arch, method, bits)
    for arch in SMALL
    for method in ("merged", "repq", "bnest")
    for bits in (8, 4)
    if not (arch == "ecbsr" and method == "bnest")
]
# onnxruntime against the PyTorch deploy model, max |diff| / max |output|, both graph
# optimisation levels: at most 5.7e-7 over CASES (2.4e-7 median) on an AVX-512 host
ORT_RTOL = 6e-6


def _inputs(arch: str, n: int) -> torch.Tensor:
    if arch == "ecbsr":  # luma on 0-255, an odd size: the file takes any height and width
        return torch.rand(n, 1, 20, 27) * 255
    return torch.randn(n, 3, 32, 32)


def _prepared(arch: str, method: str, bits: int) -> nn.Module:
    model = prepare(randomize(create(arch, **SMALL[arch])), method, bits)
    calibrate(model, [_inputs(arch, 4) for _ in range(2)])
    return model.eval()


def _session(path: Path, level: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "method", "bits"), CASES)
def test_every_model_exports_and_onnxruntime_gives_the_deploy_output(arch, method, bits, tmp_path):
    model = _prepared(arch, method, bits)
    path = tmp_path / "model.onnx"
    report = export_model(model, _inputs(arch, 2), path, any_size=arch == "ecbsr")
    assert report["weight_codes_equal"] and report["mismatched"] == []
    # the integer form computes in PyTorch exactly what the deploy model does
    x = _inputs(arch, 5)
    reference = to_deploy(model)(x).detach()
    assert torch.equal(integer_form(model)(x), reference)
    # onnxruntime's integer kernels sum exactly and its float kernels in float32 like
    # PyTorch, and a float32 sum moves a code at a rounding boundary now and then; so
    # its output must equal the float32 deploy model or the exact integer model (float64):
    # measured on an AVX2 host, the nearer of the two at most 5.0e-7 over CASES, where
    # one reference alone gave 1.9e-2 (float32) and 1.9e-2 (float64)
    exact = integer_form(model).double()(x.double()).detach()
    for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_ALL"):
        (out,) = _session(path, level).run(None, {"input": x.numpy()})
        error = min(np.abs(out - ref.numpy()).max() for ref in (reference, exact))
        assert error / exact.abs().max().item() < ORT_RTOL, (level, error)
    # one type per quantized layer, the one its precision says
    layers = [m for m in model.modules() if isinstance(m, QuantLayer)]
    containers = {4: "INT4", 8: "UINT8"}  # 8-bit codes offset by 128 (qdq.UNSIGNED_OFFSET)
    expected = {t: sum(m.precision.weight_bits == b for m in layers) for b, t in containers.items()}
    assert report["layers"] == {k: v for k, v in expected.items() if v}


def _layer(weight_bits: int, input_bits: int, signed: bool) -> nn.Module:
    conv = nn.Conv2d(3, 5, 3, padding=1)
    with torch.no_grad():
        conv.bias.copy_(torch.randn(5))
    precision = LayerPrecision("conv", weight_bits, input_bits, signed)
    layer = QuantConv2d(conv, precision).eval()
    calibrate(layer, [torch.randn(4, 3, 8, 8).relu() if not signed else torch.randn(4, 3, 8, 8)])
    return nn.Sequential(layer).eval()


def _nodes(path: Path) -> tuple[dict, dict]:
    graph = onnx.load(str(path)).graph
    return {n.output[0]: n for n in graph.node}, {i.name: i for i in graph.initializer}


def _type(tensor) -> str:
    return onnx.TensorProto.DataType.Name(tensor.data_type)


def _constant_type(nodes: dict, name: str) -> str:
    node = nodes[name]
    return _type(next(a.t for a in node.attribute if a.name == "value"))


@pytest.mark.parametrize(
    ("weight_bits", "input_bits", "signed", "input_type", "weight_type"),
    [
        (4, 4, False, "UINT4", "INT4"),
        (8, 8, False, "UINT8", "UINT8"),
        (8, 4, True, "INT4", "UINT8"),
    ],
)
def test_a_layer_exports_node_by_node(weight_bits, input_bits, signed, input_type, weight_type,
                                      tmp_path):  # fmt: skip
    model = _layer(weight_bits, input_bits, signed)
    layer = model[0]
    path = tmp_path / "layer.onnx"
    export_model(model, torch.randn(2, 3, 8, 8), path, any_size=True)
    nodes, initializers = _nodes(path)
    (conv,) = [n for n in nodes.values() if n.op_type == "Conv"]
    x_dq, w_dq, b_dq = (nodes[name] for name in conv.input)
    assert {x_dq.op_type, w_dq.op_type, b_dq.op_type} == {"DequantizeLinear"}
    # the input: QuantizeLinear -> DequantizeLinear, per-tensor step, zero point 0 of the type
    x_q = nodes[x_dq.input[0]]
    assert x_q.op_type == "QuantizeLinear" and x_q.input[0] == "input"
    assert _constant_type(nodes, x_q.input[2]) == input_type
    step = numpy_helper.to_array(initializers[x_q.input[1]])
    assert step.item() == layer.input_quant.scale.item()
    # the weight: an integer initializer holding the codes, one step per output channel
    codes = initializers[w_dq.input[0]]
    assert w_dq.input[0] == "0.codes" and _type(codes) == weight_type
    assert [a.i for a in w_dq.attribute if a.name == "axis"] == [0]
    expected = layer.weight_quant.integers(layer.weight).numpy().astype(np.int8)
    stored = numpy_helper.to_array(codes).astype(np.int16)
    if weight_bits == 8:  # UINT8 code + 128 with a zero point of 128 per output channel
        assert w_dq.input[2] == "0.codes_zero_point"
        zero = numpy_helper.to_array(initializers[w_dq.input[2]])
        assert zero.dtype == np.uint8 and zero.tolist() == [128] * 5
        stored -= 128
    else:
        assert len(w_dq.input) == 2  # no zero point: 0 of the codes' type
    assert np.array_equal(stored, expected)
    assert np.array_equal(weight_codes(path)["0"].codes, expected)
    assert np.array_equal(numpy_helper.to_array(initializers[w_dq.input[1]]),
                          layer.weight_quant.scale.detach().numpy())  # fmt: skip
    # the bias: int32 codes of step s_x * s_w per output channel
    bias_codes = numpy_helper.to_array(initializers[b_dq.input[0]])
    bias_step = (layer.input_quant.scale * layer.weight_quant.scale).detach().numpy()
    assert bias_codes.dtype == np.int32
    assert np.allclose(numpy_helper.to_array(initializers[b_dq.input[1]]), bias_step)
    assert np.array_equal(bias_codes, np.round(layer.bias.detach().numpy() / bias_step))
    # 4 bits are stored packed: two codes a byte
    if weight_bits == 4:
        assert len(codes.raw_data) == (layer.weight.numel() + 1) // 2


def test_the_bias_is_on_the_accumulator_grid_in_eval_and_deploy_and_float_in_training():
    layer = _layer(4, 4, False)[0]
    x = torch.randn(2, 3, 8, 8).relu()
    step = (layer.input_quant.scale * layer.weight_quant.scale).detach()
    codes = torch.round(layer.bias.detach() / step)
    assert not torch.equal(codes * step, layer.bias.detach())  # a random bias is off the grid
    expected = torch.nn.functional.conv2d(
        layer.input_quant(x), layer.weight_quant(layer.weight), codes * step, padding=1
    )
    assert torch.equal(layer(x), expected)
    assert torch.equal(to_deploy(nn.Sequential(layer))(x), expected)
    # straight through in eval mode: the bias gets the gradient a float bias would
    layer(x).square().sum().backward()
    assert torch.allclose(layer.bias.grad, (2 * expected).sum((0, 2, 3)), rtol=1e-5)
    layer.train()
    float_bias = torch.nn.functional.conv2d(
        layer.input_quant(x), layer.weight_quant(layer.weight), layer.bias, padding=1
    )
    assert torch.equal(layer(x), float_bias)


def test_calibration_passes_keep_the_float_bias():
    conv = nn.Conv2d(3, 5, 3, padding=1)
    layer = QuantConv2d(conv, LayerPrecision("conv", 4, 4, True))
    seen = []
    layer.register_forward_hook(lambda m, i, o: seen.append(o))
    x = torch.randn(2, 3, 8, 8)
    calibrate(layer, [x])
    assert torch.equal(seen[0], conv(x))  # both quantizers pass through while calibrating


def test_a_model_with_its_weight_quantizers_off_is_refused(tmp_path):
    model = _layer(8, 8, True)
    model[0].weight_quant.enabled = False
    with pytest.raises(Exception, match="weight quantizers are disabled in"):
        integer_form(model)
    with pytest.raises(Exception, match="no quantized layer"):
        integer_form(nn.Sequential(nn.Conv2d(3, 3, 1)))


def test_a_bit_width_without_an_onnx_type_is_a_clear_error():
    model = _layer(6, 8, True)
    with pytest.raises(Exception, match="conv's weight is 6-bit; ONNX QDQ export supports"):
        integer_form(model)


@pytest.mark.slow
def test_repq_export_verifies_a_trained_model_and_logs_it(mini_data, tmp_path, capsys):
    overrides = cls_overrides(mini_data, epochs=1) + tracking_overrides(tmp_path)
    recipe = str(RECIPES / "repvgg_a0.yaml")
    fp, qat = tmp_path / "fp", tmp_path / "qat"
    assert main(["train", recipe, "--stage", "fp", "--out", str(fp), *as_args(overrides)]) == 0
    stage = ["--stage", "qat-repq-4", "--init", str(fp / "model.pt")]
    assert main(["train", recipe, *stage, "--out", str(qat), *as_args(overrides)]) == 0
    summary = tmp_path / "export.json"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["export", str(qat / "model.pt"), "--summary", str(summary), "--tracking-uri", uri]
    assert main(args) == 0
    (report,) = json.loads(summary.read_text())["results"]
    assert report == json.loads((qat / "export.json").read_text())
    trained = json.loads((qat / "metrics.json").read_text())["metrics"]
    # the PyTorch deploy model is the trained model's; onnxruntime agrees with it image
    # by image up to the order of float sums (measured: 48 of 48, max |diff| 1.4e-6)
    assert report["reference_metrics"] == pytest.approx(trained)
    assert report["top1_agreement"] >= 100 * 47 / 48
    assert report["metrics"]["top1"] == pytest.approx(trained["top1"], abs=100 / 48 + 1e-9)
    assert report["weight_codes_equal"] and report["layers"] == {"INT4": 23}
    assert report["bytes"] < 0.3 * report["fp32_bytes"]
    assert report["bytes"] == (qat / "model.onnx").stat().st_size
    client = MlflowClient(uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("repq").experiment_id], "tags.job = 'export'"
    )
    assert run.data.metrics["onnx/top1"] == report["metrics"]["top1"]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
        "model.onnx",
        "export.json",
    }
    # a float model, a corrupt file and a missing one: one line each, exit status 2, and
    # nothing written beside them (the journal's state and lock were) nor any folder made
    before = {p: p.read_bytes() for p in fp.rglob("*") if p.is_file()}
    assert main(["export", str(fp / "model.pt"), "--no-verify"]) == 2
    assert {p: p.read_bytes() for p in fp.rglob("*") if p.is_file()} == before
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    assert main(["export", str(corrupt)]) == 2
    missing = tmp_path / "nowhere" / "model.pt"
    assert main(["export", str(missing)]) == 2
    assert not missing.parent.exists()
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors[-3].startswith("repq export: error: ") and "holds a float fp model" in errors[-3]
    assert "is corrupt or unreadable" in errors[-2]
    assert errors[-1] == f"repq export: error: checkpoint {missing} does not exist"


def test_a_graph_traced_once_serves_every_model_of_its_shape(tmp_path):
    graphs: dict = {}
    first, second, other = _layer(4, 4, False), _layer(4, 4, False), _layer(8, 8, False)
    example = torch.randn(2, 3, 8, 8)
    paths = [tmp_path / f"{i}.onnx" for i in range(3)]
    reports = [
        export_model(m, example, p, any_size=True, graphs=graphs)
        for m, p in zip((first, second, other), paths, strict=True)
    ]
    assert len(graphs) == 2  # 4-bit (traced once for two models) and 8-bit
    assert all(r["weight_codes_equal"] for r in reports)
    assert reports[0]["bytes"] == reports[1]["bytes"]
    x = torch.randn(3, 3, 8, 8).relu()
    for model, path in zip((first, second, other), paths, strict=True):
        (out,) = _session(path, "ORT_DISABLE_ALL").run(None, {"input": x.numpy()})
        reference = to_deploy(model)(x).detach()
        assert np.abs(out - reference.numpy()).max() <= ORT_RTOL * reference.abs().max().item()


def test_8_bit_codes_that_saturate_u8_by_s8_kernels_run_exactly_in_onnxruntime(tmp_path):
    """Merged RepVGG kernels put large codes side by side; on x86 CPUs without VNNI, an
    u8 x s8 kernel adds two products in int16 and saturates (the demo's 8-bit RepVGG-A0
    agreed with PyTorch on 91.3% of images with INT8 codes on such a CPU). UINT8 codes
    with zero point 128 run on u8 x u8 kernels, which do not."""
    torch.manual_seed(0)
    first = QuantConv2d(nn.Conv2d(32, 32, 3, padding=1), LayerPrecision("a", 8, 8, False))
    second = QuantConv2d(nn.Conv2d(32, 8, 1), LayerPrecision("b", 8, 8, False))
    model = nn.Sequential(first, nn.ReLU(), second)
    with torch.no_grad():
        first.weight.copy_(torch.randn_like(first.weight).sign())
    x = torch.rand(4, 32, 8, 8)
    calibrate(model, [x])
    with torch.no_grad():
        first.weight_quant.step.fill_(1 / 127)  # every code +-127, the inputs' up to 255
    model.eval()
    path = tmp_path / "model.onnx"
    export_model(model, x, path, any_size=False)
    reference = to_deploy(model)(x).detach().numpy()
    (out,) = _session(path, "ORT_ENABLE_ALL").run(None, {"input": x.numpy()})
    # rounding ties of the requantised first output move a code of the second input by
    # one step at most (bound 0.46): measured 9.5e-7; INT8 codes on an AVX2 CPU gave 3.1
    step = second.input_quant.scale.item()
    assert np.abs(out - reference).max() <= step * second.weight.abs().sum(1).max().item()
