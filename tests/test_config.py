"""YAML 1.2 scalars where a schema wants them (PyYAML reads YAML 1.1; Snakemake's
``--config`` gives strings)."""

from __future__ import annotations

import math

import pytest

from repq.config import coerce_scalars, yaml12_number

SCHEMA = {
    "type": "object",
    "properties": {
        "lr": {"type": "number"},
        "bits": {"type": "array", "items": {"enum": [4, 8]}},
        "ptq": {"type": "boolean"},
        "name": {"type": "string"},
    },
    "additionalProperties": {"type": "integer"},
}


@pytest.mark.parametrize(
    ("text", "number"),
    [("1e-3", 1e-3), ("1.0e12", 1e12), ("-.inf", -math.inf), ("+7", 7), (".5", 0.5), ("x1", None)],
)
def test_yaml12_numbers(text, number):
    assert yaml12_number(text) == number


def test_strings_become_what_the_schema_wants():
    given = {"lr": "1e-3", "bits": ["4", "8"], "ptq": "false", "name": "1e-3", "seed": "3"}
    assert coerce_scalars(given, SCHEMA) == {
        "lr": 1e-3,
        "bits": [4, 8],
        "ptq": False,
        "name": "1e-3",  # a string stays a string where the schema wants one
        "seed": 3,
    }


@pytest.mark.parametrize(("text", "value"), [("true", True), ("True", True), ("FALSE", False)])
def test_yaml12_booleans(text, value):
    assert coerce_scalars({"ptq": text}, SCHEMA) == {"ptq": value}


@pytest.mark.parametrize("text", ["yes", "off", "tRUE"])
def test_yaml11_booleans_stay_strings_for_the_schema_to_refuse(text):
    assert coerce_scalars({"ptq": text}, SCHEMA) == {"ptq": text}


def test_environment_yml_pins_what_pyproject_pins():
    import tomllib
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    dev = {p for p in extras["dev"] if not p.startswith("repq[")}
    included = [n for e in extras["dev"] if e.startswith("repq[") for n in e[5:-1].split(",")]
    dev |= {p for name in included for p in extras[name]}
    pinned = set(project["dependencies"]) | dev
    environment = yaml.safe_load((root / "environment.yml").read_text())
    pip = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    assert pinned <= set(pip), pinned - set(pip)


def test_every_package_the_code_imports_is_pinned():
    """Each third-party module that repq, the workflow or the benchmarks import comes from
    a distribution pinned (``==``) in pyproject.toml."""
    import ast
    import sys
    import tomllib
    from importlib.metadata import packages_distributions
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    pinned = {r.split("==")[0].split("[")[0].lower().replace("_", "-") for r in requirements}
    assert all("==" in r or r.startswith("repq[") for r in requirements)
    sources = [*(root / "repq").rglob("*.py"), *(root / "benchmarks").glob("*.py")]
    sources += [*(root / "workflow").rglob("*.smk"), *(root / "workflow").rglob("*.py")]
    modules = set()
    for path in sources:
        text = path.read_text()
        if path.suffix == ".smk":  # Snakemake's own syntax: read its import lines only
            text = "\n".join(
                line for line in text.splitlines() if line.startswith(("import", "from"))
            )
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules.add(node.module.split(".")[0])
    local = {"repq", "record", "mini_runs", "train_step"} | set(sys.stdlib_module_names)
    distributions = packages_distributions()
    unpinned = {
        module: distributions.get(module)
        for module in modules - local
        if not {d.lower().replace("_", "-") for d in distributions.get(module, [])} & pinned
    }
    assert unpinned == {}
