"""onnxruntime latency (CPU provider) of a deploy model in FP32 and as the QDQ file that
``repq export`` writes, at the paper's input sizes: RepVGG-A0 (1000 classes) on one
224x224 image and ECBSR-M4C16 x2 on a 640x360 luma frame (1280x720 out).

Each model is exported from calibrated models of one float model (its initial weights:
latency does not depend on the values): its FP32 deploy form and its
integer form at 8 and at 4 bits. Sessions use onnxruntime's default graph optimisation,
which fuses QDQ groups into integer kernels (``QLinearConv``, ``QGemm``) where it can;
the table counts them. Runs are interleaved (every variant once per round) and the
median, min and max over rounds are reported, with ratios to FP32 in one process.

    python benchmarks/onnx_latency.py --rounds 20 --threads 1
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
from record import new_tag, save, stamp

from repq.export import export_onnx, float_form, integer_form
from repq.models import create
from repq.qat import calibrate, prepare

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "repvgg_a0": ({"num_classes": 1000}, (1, 3, 224, 224), False),
    "ecbsr": ({"m": 4, "c": 16, "scale": 2}, (1, 1, 360, 640), True),
}
INTEGER_OPS = ("QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger")


def sample(shape: tuple[int, ...], sr: bool) -> torch.Tensor:
    return torch.rand(shape) * 255 if sr else torch.randn(shape)


def files(name: str, folder: Path) -> dict[str, Path]:
    """FP32, 8-bit and 4-bit QDQ files of one model (Merged at each bit width)."""
    kwargs, shape, sr = MODELS[name]
    float_model = create(name, **kwargs).eval()
    example = sample((2, *shape[1:]), sr)
    out = {}
    for bits in (8, 4):
        model = prepare(float_model, "merged", bits)
        calibrate(model, [sample((2, *shape[1:]), sr) for _ in range(2)])
        model.eval()
        if bits == 8:
            out["FP32"] = folder / f"{name}-fp32.onnx"
            export_onnx(float_form(model), example, out["FP32"], sr)
        out[f"QDQ {bits}-bit"] = folder / f"{name}-qdq{bits}.onnx"
        export_onnx(integer_form(model), example, out[f"QDQ {bits}-bit"], sr)
    return out


def session(path: Path, threads: int, optimized: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.optimized_model_filepath = str(optimized)
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure(name: str, rounds: int, threads: int, warmup: int) -> list[dict]:
    _, shape, sr = MODELS[name]
    with tempfile.TemporaryDirectory() as tmp:
        paths = files(name, Path(tmp))
        sessions = {v: session(p, threads, Path(tmp) / f"opt-{p.name}") for v, p in paths.items()}
        kernels = {
            v: Counter(n.op_type for n in onnx.load(str(Path(tmp) / f"opt-{p.name}")).graph.node)
            for v, p in paths.items()
        }
        feed = {"input": sample(shape, sr).numpy()}
        times: dict[str, list[float]] = {v: [] for v in sessions}
        for round_ in range(warmup + rounds):
            for variant, s in sessions.items():
                began = time.perf_counter()
                s.run(None, feed)
                if round_ >= warmup:
                    times[variant].append(1000 * (time.perf_counter() - began))
        sizes = {v: p.stat().st_size for v, p in paths.items()}
    fp32 = statistics.median(times["FP32"])
    return [
        {
            "model": name,
            "input": "x".join(map(str, shape)),
            "variant": variant,
            "median_ms": statistics.median(values),
            "min_ms": min(values),
            "max_ms": max(values),
            "ratio_to_fp32": statistics.median(values) / fp32,
            "bytes": sizes[variant],
            "integer_kernels": sum(kernels[variant][op] for op in INTEGER_OPS),
            "convs": kernels[variant]["Conv"] + kernels[variant]["FusedConv"],
        }
        for variant, values in times.items()
    ]


def markdown(rows: list[dict], threads: int) -> str:
    lines = [
        f"onnxruntime {ort.__version__}, CPU provider, {threads} thread(s); "
        f"{platform.processor() or platform.machine()}",
        "",
        "| model | input | variant | median ms (min-max) | / FP32 | MiB | integer kernels "
        "| float convs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['input']} | {r['variant']} | {r['median_ms']:.1f} "
            f"({r['min_ms']:.1f}-{r['max_ms']:.1f}) | {r['ratio_to_fp32']:.2f} "
            f"| {r['bytes'] / 2**20:.2f} | {r['integer_kernels']} | {r['convs']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", required=True, help="name of the result files (a new one)")
    args = parser.parse_args()
    out = ROOT / "benchmarks" / "results"
    new_tag(out, args.tag)
    torch.manual_seed(0)
    rows = [
        r for name in args.models for r in measure(name, args.rounds, args.threads, args.warmup)
    ]
    text = markdown(rows, args.threads)
    print(text)
    environment = {"onnxruntime": ort.__version__, "torch": torch.__version__}
    payload = {"provenance": stamp(), "environment": environment, "threads": args.threads}
    save(out, args.tag, {**payload, "rows": rows}, text)


if __name__ == "__main__":
    main()
