"""Writing and reading the ONNX files: ``torch.onnx.export`` (the dynamo exporter, opset
21) of a model in integer or float form, and the integer weight codes read back."""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from repq.errors import CheckpointError
from repq.export.ops import translation_table
from repq.files import atomic_write

OPSET = 21
"""The first opset with INT4/UINT4 ``QuantizeLinear``/``DequantizeLinear``."""
CODES, WEIGHT_SCALE, ZERO_POINT = "codes", "weight_scale", "codes_zero_point"
"""Buffer names of :class:`repq.export.qdq.QDQLayer`, which become initializer names."""


def dynamic_shapes(example: Tensor, spatial: bool) -> tuple[dict[int, object]]:
    """A dynamic batch (and height and width when ``spatial``) for the model's input."""
    dims: dict[int, object] = {0: torch.export.Dim("batch")}
    if spatial:
        dims |= {2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    return (dims,)


def export_onnx(
    model: nn.Module,
    example: Tensor,
    path: str | Path,
    spatial: bool,
    graphs: dict[tuple, object] | None = None,
) -> None:
    """Export ``model`` (eval mode) traced on ``example`` to one self-contained ONNX file,
    written atomically, each weight's integer codes stored as ``<layer>.codes`` in their
    quantized type (:func:`_store_codes`).

    ``graphs`` caches traced files by :func:`graph_key`: a model whose graph was traced
    before (another stage of the experiment at the same bit widths) gets a copy of that
    file with its own initializer values, instead of a trace of its own (about 4 s)."""
    import onnx

    graphs = {} if graphs is None else graphs
    key = graph_key(model, example, spatial)
    if key not in graphs:
        graphs[key] = _trace(model, example, spatial)
    proto = _with_values(graphs[key], model)  # also the traced one: one encoding for all
    onnx.checker.check_model(proto)
    atomic_write(path, lambda tmp: onnx.save_model(proto, tmp))


def graph_key(model: nn.Module, example: Tensor, spatial: bool) -> tuple:
    """What the traced graph depends on besides tensor values: the module tree, the
    state's names, shapes and types, the Python attributes that become graph constants
    (input ranges, weight bit widths), the input's shape and which dimensions vary."""
    state = tuple((k, tuple(v.shape), str(v.dtype)) for k, v in model.state_dict().items())
    modules = tuple((name, type(m).__qualname__) for name, m in model.named_modules())
    constants = tuple(
        (name, getattr(m, "input_range", None), getattr(m, "weight_bits", None))
        for name, m in model.named_modules()
    )
    return state, modules, constants, tuple(example.shape), spatial


def _with_values(template, model: nn.Module):
    """A copy of a traced file whose initializers hold ``model``'s state, each in the
    file's type for it (INT4 codes stay INT4)."""
    from onnx import helper, numpy_helper

    proto = type(template)()
    proto.CopyFrom(template)
    state = model.state_dict()
    for index, tensor in enumerate(proto.graph.initializer):
        if tensor.name in state:
            dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
            values = state[tensor.name].detach().cpu().numpy().astype(dtype)
            proto.graph.initializer[index].CopyFrom(numpy_helper.from_array(values, tensor.name))
    return proto


def _trace(model: nn.Module, example: Tensor, spatial: bool):
    """``torch.onnx.export`` of ``model``, codes stored in their types, metadata dropped."""
    with torch.no_grad(), _quiet():
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["output"],
            dynamic_shapes=dynamic_shapes(example, spatial),
            custom_translation_table=translation_table(),
            optimize=False,  # its passes merge equal initializers (two layers' zero codes)
            verbose=False,
        )
    proto = program.model_proto
    _store_codes(proto.graph)
    _drop_metadata(proto)
    return proto


@contextlib.contextmanager
def _quiet():
    """The exporter's progress lines (stdout) and its passes' INFO logs, silenced."""
    logging.disable(logging.INFO)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


def _store_codes(graph) -> None:
    """Give every weight ``DequantizeLinear`` (found by its ``<layer>.weight_scale``
    input) one initializer ``<layer>.codes`` of the quantized type itself: an INT8 code
    tensor that the exporter left behind a ``Cast`` to INT4 becomes packed INT4 data."""
    from onnx import numpy_helper

    initializers = {i.name: i for i in graph.initializer}
    casts = {n.output[0]: n for n in graph.node if n.op_type == "Cast"}
    dead = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or not node.input[1].endswith(WEIGHT_SCALE):
            continue
        name = node.input[1].removesuffix(WEIGHT_SCALE) + CODES
        source, cast = node.input[0], casts.get(node.input[0])
        if cast is not None and cast.input[0] in initializers:
            stored = initializers.pop(cast.input[0])
            values = numpy_helper.to_array(stored).astype(_numpy_type(_to(cast)))
            graph.initializer.remove(stored)
            graph.initializer.append(numpy_helper.from_array(values, name))
            dead.append(cast)
        elif source in initializers:
            initializers.pop(source).name = name
        else:
            continue
        node.input[0] = name
    for cast in dead:
        graph.node.remove(cast)


def _drop_metadata(proto) -> None:
    """The exporter's per-node provenance (stack traces, original names): a third of a
    small model's file."""
    graph = proto.graph
    for item in [*graph.node, *graph.initializer, *graph.value_info, *graph.input, *graph.output]:
        del item.metadata_props[:]
        item.doc_string = ""
    del proto.metadata_props[:]


def _to(cast) -> int:
    return next(a.i for a in cast.attribute if a.name == "to")


def _numpy_type(onnx_type: int) -> np.dtype:
    from onnx import helper

    return helper.tensor_dtype_to_np_dtype(onnx_type)


@dataclass(frozen=True)
class WeightCodes:
    """One quantized layer's weight as the ONNX file stores it."""

    codes: np.ndarray  # the signed codes: stored values less their zero point
    onnx_type: str  # e.g. INT4, UINT8


def weight_codes(path: str | Path) -> dict[str, WeightCodes]:
    """Layer name -> its integer weight codes, read from an exported file."""
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(path)).graph
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable ONNX file: {err}") from err
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    found = {}
    for name, tensor in initializers.items():
        if name.endswith("." + CODES) or name == CODES:
            layer = name.removesuffix(CODES).removesuffix(".")
            codes = numpy_helper.to_array(tensor).astype(np.int16)
            zero = initializers.get(name.removesuffix(CODES) + ZERO_POINT)
            if zero is not None:
                codes -= _per_channel(numpy_helper.to_array(zero), codes)
            type_name = onnx.TensorProto.DataType.Name(tensor.data_type)
            found[layer] = WeightCodes(codes.astype(np.int8), type_name)
    return found


def _per_channel(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    return values.astype(np.int16).reshape(-1, *([1] * (like.ndim - 1)))
