"""The six mutations of the test review (issue 17), each applied to a copy of the code in
a temporary folder, the tests that should catch it run there, nothing changed here.

    python tests/review_mutations.py     # one line per mutation: CAUGHT or SURVIVED
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTATIONS = (
    (
        "BN epsilon dropped",
        "repq/reparam/base.py",
        "torch.rsqrt(var + norm.eps)",
        "torch.rsqrt(var)",
        ["tests/test_oracles.py"],
    ),
    (
        "BNest input moments detached",
        "repq/reparam/stats.py",
        "self.mean_x, self.var_x = channel_moments(x)",
        "self.mean_x, self.var_x = channel_moments(x.detach())",
        ["tests/test_oracles.py"],
    ),
    (
        "LSQ backward bounds without the half step",
        "repq/quant/lsq.py",
        "qmin - 0.5, qmax + 0.5",
        "qmin, qmax",
        ["tests/test_quant.py"],
    ),
    (
        "Merged ignores the precision policy",
        "repq/qat/prepare.py",
        "policy = default_policy(model) if policy is None else policy",
        "policy = (PrecisionPolicy() if method == 'merged' else default_policy(model))"
        " if policy is None else policy",
        ["tests/test_paper_setup.py"],
    ),
    (
        "Δ sign flipped",
        "repq/report/tables.py",
        "Cell(tuple(value[s] - base[s] for s in paired))",
        "Cell(tuple(base[s] - value[s] for s in paired))",
        ["tests/test_report.py"],
    ),
    (
        "blank figure",
        "repq/report/figures.py",
        "        _panel(ax, means, spreads)\n",
        "        pass\n",
        ["tests/test_report.py"],
    ),
)


def run_mutation(copy: Path, path: str, old: str, new: str, tests: list[str]) -> tuple[bool, str]:
    """Apply one mutation in ``copy``, run ``tests`` there, revert; (caught, summary)."""
    file = copy / path
    source = file.read_text()
    if source.count(old) != 1:
        raise SystemExit(f"{path}: the code to mutate is not there once: {old!r}")
    file.write_text(source.replace(old, new))
    try:
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
        env = {**os.environ, "PYTHONPATH": str(copy)}
        done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True)
    finally:
        file.write_text(source)
    lines = done.stdout.strip().splitlines()
    failed = [line.split(" ")[1] for line in lines if line.startswith("FAILED ")]
    return done.returncode != 0, f"{lines[-1]}; e.g. {', '.join(failed[:2]) or '-'}"


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder)
        for part in ("repq", "tests", "config", "workflow", "pyproject.toml", "Snakefile"):
            source = ROOT / part
            if source.is_dir():
                shutil.copytree(source, copy / part)
            else:
                shutil.copy(source, copy / part)
        for name, path, old, new, tests in MUTATIONS:
            caught, summary = run_mutation(copy, path, old, new, tests)
            print(f"{name} ({path}): {'CAUGHT' if caught else 'SURVIVED'}: {summary}", flush=True)


if __name__ == "__main__":
    main()
