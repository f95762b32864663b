"""The floors of ARCHITECTURE.md, enforced: `make lint` runs import-linter's contracts
(pyproject.toml), and a module that imports from a floor above its own breaks them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(tree: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the package in ``tree`` (its pyproject.toml's contracts)."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def tree(tmp_path) -> Path:
    shutil.copytree(ROOT / "repq", tmp_path / "repq", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_package_keeps_its_contracts(tree):
    result = _lint_imports(tree)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Contracts: 4 kept, 0 broken." in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("quant/lsq.py", "from repq.engine import build", "the floors of repq"),
        ("tracking/store.py", "from repq.tracking import mlflow_tracker", "tracking:"),
        ("reparam/stats.py", "from repq.reparam import base", "reparam: a statistics source"),
        ("pipeline.py", "import torch", "the workflow plans without torch"),
    ],
)
def test_a_planted_import_breaks_its_contract(tree, module, line, broken):
    path = tree / "repq" / module
    path.write_text(path.read_text() + f"\n{line}  # planted\n")
    result = _lint_imports(tree)
    assert result.returncode == 1
    assert "Contracts: 3 kept, 1 broken." in result.stdout
    assert f"{broken}" in result.stdout.split("Broken contracts")[1]
