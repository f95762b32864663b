"""repq's C++ kernels for the CPU, which the package builds on first use (or ``make
setup``) with torch's extension builder, cached per source, CPU and torch version:

* LSQ's forward and backward as one pass each (``csrc/lsq_cpu.cpp``), for
  :mod:`repq.quant.lsq`, whose eager torch ops stay the reference: the kernel's outputs
  and input gradients are bit-equal to it and its step gradient is summed in double
  (``tests/test_cpu_kernel.py``);
* RepQ-BNest's per-channel moments of a block's input and their gradient, one pass each
  (``csrc/moments_cpu.cpp``), and its merge of a block and the merge's backward, one task
  per output channel (``csrc/merge_cpu.cpp``), for :mod:`repq.reparam.stats` and
  :mod:`repq.reparam.estimate`, whose torch ops stay the reference
  (``tests/test_estimate.py``).

Where the kernels cannot build (no C++ compiler), or with ``REPQ_CPU_KERNEL=0``, the
references run instead, after a one-line warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import sys
import warnings
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType

import torch

CSRC = Path(__file__).with_name("csrc")
SOURCES = tuple(CSRC / f"{n}.cpp" for n in ("lsq_cpu", "moments_cpu", "merge_cpu", "bindings"))
FLAGS = ["-O3", "-march=native", "-fopenmp"]
"""``-fopenmp`` compiles ATen's ``parallel_for``, which is inline OpenMP (without it the
kernels run on one thread); the OpenMP runtime is torch's own, which ``import torch``
loads for the whole process, so the build links none."""
DTYPES = (torch.float32, torch.float64)
ENV = "REPQ_CPU_KERNEL"
FAMILIES = ("lsq", "bnest")
"""The kernels, by what they replace: LSQ's quantizer, RepQ-BNest's moments and merge."""
_state = {"enabled": set(FAMILIES) if os.environ.get(ENV, "1") != "0" else set()}


def _cpu_signature() -> str:
    """What a ``-march=native`` build depends on: the CPU's model and instruction sets."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    keys = ("model name", "flags")
    return "\n".join(sorted({line for line in lines if line.startswith(keys)}))


def extension_name() -> str:
    """The build's name: a digest of the source and where it lies, flags, CPU and torch
    (its version and where it is installed). Two environments, or two checkouts sharing
    one, would otherwise rebuild it in turn: torch's builder rewrites ``build.ninja`` with
    the sources' paths, and ninja then compiles everything again (about a minute)."""
    digest = hashlib.sha256()
    torch_build = f"{torch.__version__} {Path(torch.__file__).parent}"
    sources = [source.read_text() for source in SOURCES]
    for part in (*sources, str(CSRC), " ".join(FLAGS), _cpu_signature(), torch_build):
        digest.update(part.encode())
    return f"repq_cpu_{digest.hexdigest()[:16]}"


def _find_ninja() -> None:
    """Put this environment's ``bin`` (where pip installs ``ninja``) on ``PATH``, as
    activating it would: torch's extension builder looks for ninja there."""
    bin_dir = Path(sys.executable).parent
    path = os.environ.get("PATH", "")
    if (bin_dir / "ninja").exists() and str(bin_dir) not in path.split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([str(bin_dir), path]) if path else str(bin_dir)


@cache
def _build(verbose: bool = False) -> ModuleType | None:
    # its import logs a warning when a CUDA toolkit lies about without a CUDA runtime
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils.cpp_extension import load

    _find_ninja()

    try:
        return load(
            extension_name(), [str(s) for s in SOURCES], extra_cflags=FLAGS, verbose=verbose
        )
    except Exception as error:  # a missing compiler, headers or ninja: fall back
        lines = str(error).strip().splitlines() or [type(error).__name__]
        warnings.warn(
            f"repq: the CPU kernels did not build ({lines[0][:100]}); torch ops run "
            f"instead (repq build-kernel shows the compiler's output)",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def kernel() -> ModuleType | None:
    """The built kernels' module; None where they are disabled or cannot build."""
    return _build() if _state["enabled"] else None


def usable(*tensors: torch.Tensor, family: str = "lsq") -> bool:
    """Whether the ``family``'s kernels are on and take these tensors (contiguous, CPU,
    float32/64, one dtype). Each kernel runs inside a ``torch.library`` op with a fake
    implementation, so a compiled or exported graph calls it too."""
    first = tensors[0]
    if first.dtype not in DTYPES or not _available(family):
        return False
    if any(t.device.type != "cpu" or t.dtype != first.dtype for t in tensors):
        return False
    return all(t.is_contiguous() for t in tensors)


@torch.compiler.assume_constant_result
def _available(family: str) -> bool:
    """Whether the ``family``'s kernels are on and built (a constant to a compiled
    graph, which does not trace the build)."""
    return family in _state["enabled"] and kernel() is not None


@contextlib.contextmanager
def enabled(on: bool, families: tuple[str, ...] = FAMILIES) -> Iterator[None]:
    """Use (or not) these families' kernels inside the block (benchmarks and tests
    compare both in one process)."""
    before = set(_state["enabled"])
    _state["enabled"] = before | set(families) if on else before - set(families)
    try:
        yield
    finally:
        _state["enabled"] = before


def build_and_report() -> str:
    """Build the kernels now, with the compiler's output (``repq build-kernel``, run by
    ``make setup``); say where it is or that torch ops run instead."""
    module = _build(verbose=True) if _state["enabled"] else None
    if module is not None:
        return f"CPU kernels: {module.__file__}"
    reason = f"{ENV}=0" if not _state["enabled"] else "it did not build"
    return f"CPU kernels: not in use ({reason}); LSQ and the BNest merge run as torch ops"
