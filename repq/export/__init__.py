"""Deployment: a trained quantized model as an ONNX QDQ file (integer weight codes with
per-output-channel steps: INT4, or UINT8 with zero point 128; per-tensor activation
steps), verified in onnxruntime against the PyTorch deploy model."""

from repq.export.job import export_files, export_model, float_bytes, verify
from repq.export.onnx_model import export_onnx, weight_codes
from repq.export.qdq import float_form, integer_form
from repq.export.verify import OnnxRunner

__all__ = [
    "OnnxRunner",
    "export_files",
    "export_model",
    "export_onnx",
    "float_bytes",
    "float_form",
    "integer_form",
    "verify",
    "weight_codes",
]
