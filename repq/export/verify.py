"""An exported file run by onnxruntime (CPU provider, its default graph optimisation,
which turns QDQ groups into integer kernels where it can), measured against the
PyTorch deploy model on the same inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from repq.errors import CheckpointError
from repq.export.onnx_model import weight_codes
from repq.quant.layers import QuantLayer


class OnnxRunner:
    """An ONNX file in an onnxruntime session, called like a module (input ``input``)."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:
            raise CheckpointError(f"onnxruntime cannot load {path}: {err}") from err

    def __call__(self, x: Tensor) -> Tensor:
        (out,) = self.session.run(["output"], {"input": x.detach().cpu().float().numpy()})
        return torch.from_numpy(out)


class Comparison:
    """Runs the ONNX model and the PyTorch ``reference`` on every input, returns the
    ONNX output and records the largest absolute difference, the largest reference
    output and, for ``[batch, classes]`` outputs, how often the top-1 class agrees.
    :meth:`replay` then gives the reference's outputs again, in the same order, so that
    one pass over the data measures both models."""

    def __init__(self, runner: OnnxRunner, reference: nn.Module) -> None:
        self.runner, self.reference = runner, reference
        self.max_abs_diff = self.max_abs_reference = 0.0
        self.agreeing = self.compared = 0
        self.references: list[Tensor] = []

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        out = self.runner(x)
        ref = self.reference(x).float().cpu()
        self.references.append(ref)
        self.max_abs_diff = max(self.max_abs_diff, (out - ref).abs().max().item())
        self.max_abs_reference = max(self.max_abs_reference, ref.abs().max().item())
        if out.dim() == 2:
            self.agreeing += int((out.argmax(1) == ref.argmax(1)).sum())
            self.compared += out.shape[0]
        return out

    def replay(self):
        """A callable that returns the recorded reference outputs one by one, for a second
        pass over the same inputs in the same order (it checks the shapes)."""
        recorded = iter(self.references)

        def reference(x: Tensor) -> Tensor:
            out = next(recorded)
            if out.shape[0] != x.shape[0]:
                raise RuntimeError("the replayed pass does not follow the recorded one")
            return out

        return reference

    def summary(self) -> dict[str, float]:
        found = {"max_abs_diff": self.max_abs_diff, "max_abs_output": self.max_abs_reference}
        if self.compared:
            found["top1_agreement"] = 100.0 * self.agreeing / self.compared
        return found


def codes_check(model: nn.Module, path: str | Path) -> dict[str, object]:
    """Whether every quantized layer's weight codes in the file equal
    ``weight_quant.integers`` of the PyTorch model (exactly), and how many layers each
    ONNX type stores."""
    stored = weight_codes(path)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}
    mismatched = sorted(set(layers) ^ set(stored))
    for name in sorted(set(layers) & set(stored)):
        layer = layers[name]
        expected = layer.weight_quant.integers(layer.float_weight()[0].detach()).cpu().numpy()
        if not np.array_equal(stored[name].codes, expected.astype(np.int8)):
            mismatched.append(name)
    types: dict[str, int] = {}
    for codes in stored.values():
        types[codes.onnx_type] = types.get(codes.onnx_type, 0) + 1
    return {"weight_codes_equal": not mismatched, "mismatched": mismatched, "layers": types}
