"""Training-step cost of RepQ and RepQ-BNest against Merged LSQ and PyTorch's own QAT:
torch.ao's eager QAT (``torch_ao``, deprecated) and torchao's pt2e QAT (``torchao_pt2e``:
the exported deploy model prepared by ``prepare_qat_pt2e`` with the x86 inductor
quantizer, ``is_qat=True``; torchao pinned in the ``bench`` extra), both 8-bit on the
deploy form.

For each model, every variant's training step (forward, backward, optimiser) is timed
in one process, interleaved (A B C ... A B C ...), and the median is reported with its
ratio to Merged: the median over rounds of each round's ratio (a variant against the
Merged step of the same round), with the min and max over rounds beside both, so that
a ratio is read with its noise. Memory is the peak allocated during one step with the variant's live
state counted: the bytes live before the step (parameters, buffers, optimiser state, the
batch) plus the rise of the peak during it, read from ``torch.cuda.max_memory_allocated``
on CUDA and from the profiler's allocation and free events on the CPU (where torch keeps
no allocator statistics). The JSON also keeps
the bytes autograd saves for backward (``saved_bytes``).

    python benchmarks/train_step.py                 # CPU, writes benchmarks/results/cpu.*
    make bench-gpu                                  # the GPU throughput run, then
                                                    # the CUDA tests
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.ao.quantization as ao
from record import new_tag, save, stamp
from torch import nn
from torch.profiler import ProfilerActivity, profile

from repq import cpu_kernel
from repq.models import create
from repq.qat import bnest_fp, prepare
from repq.quant import set_recompute
from repq.reparam import reparameterize

VARIANTS = (
    "float",
    "float_deploy",
    "merged",
    "merged_torch_ops",
    "merged_stored",
    "repq",
    "bnest",
    "bnest_torch_ops",
    "torch_ao",
    "torchao_pt2e",
)
TORCH_OPS = ("merged_torch_ops", "bnest_torch_ops")
"""Variants whose LSQ and RepQ-BNest merge run as torch ops (the references) instead of
the CPU kernels."""


def models(
    size: int, sr_size: int = 64
) -> dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], str]]:
    """name -> (factory, input shape without batch, loss kind); ``size`` is the side of
    the classifiers' images, ``sr_size`` the low-resolution side of ECBSR's patches."""
    return {
        "repvgg_a0": (lambda: create("repvgg_a0", num_classes=1000), (3, size, size), "ce"),
        "orepa_resnet18": (
            lambda: create("orepa_resnet18", num_classes=1000),
            (3, size, size),
            "ce",
        ),
        "ecbsr_m4c16": (
            lambda: create("ecbsr", m=4, c=16, scale=2),
            (1, sr_size, sr_size),
            "l1",
        ),
    }


def torch_ao_qat(model: nn.Module) -> nn.Module:
    """torch.ao eager-mode QAT on the deploy model (8-bit, x86 qconfig)."""
    deploy = reparameterize(model).train()
    deploy.qconfig = ao.get_default_qat_qconfig("x86")
    return ao.prepare_qat(deploy)


def torchao_pt2e_qat(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """torchao's pt2e QAT (today's PyTorch QAT) on the deploy model: exported, prepared
    with the x86 inductor quantizer's 8-bit QAT config, in training mode."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
    from torchao.quantization.pt2e import move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    deploy = reparameterize(model).train()
    exported = torch.export.export(deploy, (example,)).module()
    config = x86.get_default_x86_inductor_quantization_config(is_qat=True)
    prepared = prepare_qat_pt2e(exported, x86.X86InductorQuantizer().set_global(config))
    return move_exported_model_to_train(prepared)


def storing(model: nn.Module) -> nn.Module:
    """The model with ``train.recompute_quantized: false``: Q(x), Q(W) stored for
    backward (the separate LSQ functions, then the conv)."""
    set_recompute(model, False)
    return model


def build_variants(
    factory: Callable[[], nn.Module], example: torch.Tensor, wanted: Iterable[str] = VARIANTS
) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """The ``wanted`` variants of one model (``example``: an input, for torch.export),
    and the error of each that could not be built (a quantizer that refuses the graph;
    Merged may not fail)."""
    torch.manual_seed(0)
    model = factory().train()
    bnest_model = bnest_fp(copy.deepcopy(model))
    builders: dict[str, Callable[[], nn.Module]] = {
        "float": lambda: model,
        "float_deploy": lambda: reparameterize(model).train(),
        "merged": lambda: prepare(model, "merged", 8).train(),
        "merged_torch_ops": lambda: prepare(model, "merged", 8).train(),
        "merged_stored": lambda: storing(prepare(model, "merged", 8).train()),
        "repq": lambda: prepare(model, "repq", 8).train(),
        "bnest": lambda: prepare(bnest_model, "bnest", 8).train(),
        "bnest_torch_ops": lambda: prepare(copy.deepcopy(bnest_model), "bnest", 8).train(),
        "torch_ao": lambda: torch_ao_qat(model).train(),
        "torchao_pt2e": lambda: torchao_pt2e_qat(model, example),
    }
    built, failed = {}, {}
    for name in (n for n in builders if n in wanted):
        try:
            built[name] = builders[name]()
        except (RuntimeError, ValueError) as error:
            if name == "merged":
                raise
            failed[name] = _one_line(error)
    return built, failed


def _one_line(error: Exception) -> str:
    """An error as one table cell: its type and first line."""
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first_line}"[:300].replace("|", "/")


class Step:
    """One training step of a model on a fixed batch."""

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        target: torch.Tensor,
        loss: str,
        amp: bool,
        cpu_kernel_on: bool = True,
    ):
        self.model, self.x, self.target, self.amp = model, x, target, amp
        self.cpu_kernel_on = cpu_kernel_on
        self.loss = nn.functional.cross_entropy if loss == "ce" else nn.functional.l1_loss
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def __call__(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with cpu_kernel.enabled(self.cpu_kernel_on):
            with torch.autocast(self.x.device.type, dtype=torch.bfloat16, enabled=self.amp):
                out = self.model(self.x)
            loss = self.loss(out.float(), self.target)
            loss.backward()
        self.optimizer.step()


def saved_bytes(step: Step) -> int:
    """Bytes of the distinct tensor storages autograd saves during one step."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def live_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def step_state(step: Step) -> list[torch.Tensor]:
    """What stays allocated between steps (gradients are freed as a step starts)."""
    state = [v for s in step.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return [*step.model.parameters(), *step.model.buffers(), *state, step.x, step.target]


def cpu_peak_bytes(step: Step) -> int:
    """Peak bytes allocated during one step on the CPU: the live state plus the peak of
    the running sum of the profiler's allocation and free events."""
    step.optimizer.zero_grad(set_to_none=True)
    live = live_bytes(step_state(step))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return live + peak


def cuda_peak_bytes(step: Step) -> int:
    """Peak bytes of one step on CUDA: the live state plus the rise of the allocator's
    peak during the step (the other variants' models share the device)."""
    step.optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return live_bytes(step_state(step)) + torch.cuda.max_memory_allocated() - before


def peak_memory(step: Step, device: torch.device) -> int:
    return cuda_peak_bytes(step) if device.type == "cuda" else cpu_peak_bytes(step)


def timed(step: Step, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def warm_up(steps: dict[str, Step], rounds: int) -> tuple[dict[str, float], dict[str, str]]:
    """Run each step ``rounds`` times (compiling where asked); a variant other than Merged
    that fails (an op without this device or dtype) is dropped and its error kept."""
    seconds, failed = {}, {}
    for key, step in list(steps.items()):
        start = time.perf_counter()
        try:
            for _ in range(rounds):
                step()
        except RuntimeError as error:
            if key == "merged":
                raise
            failed[key] = _one_line(error)
            del steps[key]
            continue
        seconds[key] = time.perf_counter() - start
    return seconds, failed


def bench_model(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    factory, shape, loss = models(args.size, args.sr_size)[name]
    x = torch.randn(args.batch, *shape, device=device)
    built, unbuilt = build_variants(factory, x.cpu(), args.variants)
    variants = {k: v.to(device) for k, v in built.items()}
    if name.startswith("ecbsr"):
        x = x.abs() * 60 + 16
        target = torch.randn(args.batch, 1, shape[1] * 2, shape[2] * 2, device=device)
    else:
        target = torch.randint(0, 1000, (args.batch,), device=device)
    if args.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
        variants = {k: v.to(memory_format=torch.channels_last) for k, v in variants.items()}
    if args.compile:
        variants = {k: torch.compile(v) for k, v in variants.items()}
    steps = {
        k: Step(m, x, target, loss, args.amp, cpu_kernel_on=k not in TORCH_OPS)
        for k, m in variants.items()
    }
    compile_s, failed = warm_up(steps, args.warmup)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.rounds):
        for key, step in steps.items():
            times[key].append(timed(step, device))
    memory = {k: peak_memory(s, device) for k, s in steps.items()}
    saved = {k: saved_bytes(s) for k, s in steps.items()}
    median = {k: statistics.median(v) for k, v in times.items()}
    ratios = {k: [t / m for t, m in zip(v, times["merged"], strict=True)] for k, v in times.items()}
    return {
        "batch": args.batch,
        "input": list(shape),
        "rounds": args.rounds,
        "step_s": median,
        "step_s_spread": {k: spread(v) for k, v in times.items()},
        "images_per_s": {k: args.batch / v for k, v in median.items()},
        "memory_bytes": memory,
        "saved_bytes": saved,
        "warmup_s": compile_s,
        "failed": {**unbuilt, **failed},
        "time_vs_merged": {k: statistics.median(v) for k, v in ratios.items()},
        "time_vs_merged_spread": {k: spread(v) for k, v in ratios.items()},
        "memory_vs_merged": {k: v / memory["merged"] for k, v in memory.items()},
    }


def spread(values: list[float]) -> dict[str, float]:
    """Min, median and max of one variant's rounds."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _range(values: dict[str, float], scale: float, digits: int) -> str:
    return f"{scale * values['min']:.{digits}f}-{scale * values['max']:.{digits}f}"


def markdown(results: dict) -> str:
    lines = []
    for name, r in results["models"].items():
        lines += [
            f"### {name} (batch {r['batch']}, input {'x'.join(map(str, r['input']))})",
            "",
            f"{r['rounds']} rounds: median (min-max over rounds); time / Merged is the "
            "median of each round's ratio",
            "",
            "| variant | step (ms) | images/s | time / Merged | peak memory (MiB) "
            "| memory / Merged | saved for backward (MiB) |",
            "|---|---|---|---|---|---|---|",
        ]
        for key in r["step_s"]:
            step = f"{1000 * r['step_s'][key]:.1f} ({_range(r['step_s_spread'][key], 1000, 1)})"
            ratio = (
                f"{r['time_vs_merged'][key]:.2f} ({_range(r['time_vs_merged_spread'][key], 1, 2)})"
            )
            lines.append(
                f"| {key} | {step} | {r['images_per_s'][key]:.1f} | {ratio} | "
                f"{r['memory_bytes'][key] / 2**20:.1f} | "
                f"{r['memory_vs_merged'][key]:.2f} | {r['saved_bytes'][key] / 2**20:.1f} |"
            )
        lines += [f"| {key} | failed: {error} | | | | | |" for key, error in r["failed"].items()]
        lines.append("")
    return "\n".join(lines)


def environment(device: torch.device) -> dict:
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=64, help="image side of the classifiers")
    parser.add_argument("--sr-size", type=int, default=64, help="LR patch side of ECBSR")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile every variant")
    parser.add_argument("--models", nargs="+", default=list(models(64)))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--tag", required=True, help="name of the result files (a new one)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    new_tag(args.out, args.tag)
    device = torch.device(args.device)
    results = {
        "provenance": stamp(),
        "environment": environment(device),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "models": {},
    }
    for name in args.models:  # written after every model: a later failure keeps them
        results["models"][name] = bench_model(name, args, device)
        save(args.out, args.tag, results, markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
