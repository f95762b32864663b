"""``torch.compile`` and ``torch.export`` of repq's QAT. LSQ, RepQ-BNest's channel moments
and its block merge are ``torch.library`` ops (``repq::lsq``, ``repq::channel_moments``,
``repq::estimated_merge`` and their backward ops; the C++ kernels on the CPU) with fake
implementations and registered autograd: a RepQ and a RepQ-BNest block compile as one
graph forward and backward, a QAT model exports, and both compute what eager mode does."""

from __future__ import annotations

import pytest
import torch
from conftest import layer_gradients, rel_err
from lsq_operands import repq_block

from repq.models import create
from repq.qat import bnest_fp, calibrate, prepare

PRECISION = {"weight_bits": 4, "input_bits": 4, "input_signed": False}
BLOCKS = {"RepQ": "batch", "RepQ-BNest": "estimate"}


def _graph_ops(graph: torch.fx.Graph) -> set[str]:
    return {str(node.target) for node in graph.nodes if node.op == "call_function"}


@pytest.mark.parametrize("block", BLOCKS)
def test_a_block_compiles_as_one_graph_forward_and_backward(block):
    """``fullgraph=True`` fails on any graph break; AOTAutograd traces the backward
    through the ops' fake implementations and registered autograd."""
    torch.manual_seed(0)
    layer = repq_block(BLOCKS[block], **PRECISION).train()
    x = torch.randn(3, 8, 10, 10).relu()
    calibrate(layer, [x])
    layer.train()
    graphs: list[torch.fx.GraphModule] = []

    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def record(gm: torch.fx.GraphModule, inputs):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    backend = aot_autograd(fw_compiler=record, bw_compiler=record)
    compiled = torch.compile(layer, fullgraph=True, backend=backend)
    out, grads = layer_gradients(layer, x, forward=lambda _, inputs: compiled(inputs))
    ref_out, ref_grads = layer_gradients(layer, x)
    forward_ops, backward_ops = _graph_ops(graphs[0].graph), _graph_ops(graphs[1].graph)
    assert "repq.lsq.default" in forward_ops and "repq.lsq_backward.default" in backward_ops
    if block == "RepQ-BNest":
        assert {"repq.channel_moments.default", "repq.estimated_merge.default"} <= forward_ops
        assert "repq.estimated_merge_backward.default" in backward_ops
    assert rel_err(out, ref_out) < 1e-6
    assert grads.keys() == ref_grads.keys()
    for name, grad in ref_grads.items():
        assert rel_err(grads[name], grad) < 1e-5, name


def test_inductor_compiles_a_repq_block_with_repqs_ops():
    torch.manual_seed(0)
    layer = repq_block("estimate", **PRECISION).train()
    x = torch.randn(3, 8, 10, 10).relu()
    calibrate(layer, [x])
    layer.train()
    compiled = torch.compile(layer, fullgraph=True)
    out, grads = layer_gradients(layer, x, forward=lambda _, inputs: compiled(inputs))
    ref_out, ref_grads = layer_gradients(layer, x)
    assert rel_err(out, ref_out) < 1e-6
    for name, grad in ref_grads.items():
        assert rel_err(grads[name], grad) < 1e-5, name


@pytest.mark.parametrize("method", ["repq", "bnest"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_qat_model_exports_and_runs_as_in_eager_mode(method, mode):
    torch.manual_seed(0)
    model = create("repvgg_a0", num_classes=10, width_mult=0.25)
    model = prepare(bnest_fp(model) if method == "bnest" else model, method, 4)
    x = torch.randn(2, 3, 32, 32)
    calibrate(model, [x])
    model.train(mode == "train")
    exported = torch.export.export(model, (x,))
    ops = _graph_ops(exported.graph)
    assert "repq.lsq.default" in ops
    folded_in_training = mode == "train" and method == "bnest"
    assert ("repq.estimated_merge.default" in ops) == folded_in_training
    state = {k: v.clone() for k, v in model.state_dict().items()}
    expected = model(x)
    model.load_state_dict(state)  # the eager pass moved the BN running statistics
    assert torch.allclose(exported.module()(x), expected, rtol=1e-5, atol=1e-5)
