"""Job configuration: a YAML recipe, ``key.path=value`` overrides and validation."""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import json
import math
import os
import re
import urllib.parse
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from repq.errors import ConfigError


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    key, value = text.split("=", 1)
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        return key.split("."), yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise ConfigError(
            f"override {text!r}: the value is not valid YAML ({yaml_problem(err)})"
        ) from None


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where (line and column, from 1)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or type(err).__name__
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{problem}{where}"


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """A copy of ``config`` with each ``a.b.c=value`` set (value parsed as YAML)."""
    config = copy.deepcopy(config)
    for text in overrides:
        keys, value = _parse_override(text)
        node = config
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {key!r} is not a section")
            node = child
        node[keys[-1]] = value
    return config


YAML12_INT = re.compile(r"[-+]?[0-9]+")
YAML12_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
YAML12_SPECIAL = {".inf": math.inf, "+.inf": math.inf, "-.inf": -math.inf, ".nan": math.nan}


def yaml12_number(text: str) -> int | float | None:
    """The number ``text`` spells in YAML 1.2 (``1e-3``, ``1.0e12``, ``-.inf``), else None.

    PyYAML follows YAML 1.1, which reads ``1e-3`` as a string; Snakemake's ``--config``
    reads list items as strings."""
    if YAML12_INT.fullmatch(text):
        return int(text)
    if YAML12_FLOAT.fullmatch(text):
        return float(text)
    return YAML12_SPECIAL.get(text.lower())


YAML12_BOOL = {
    spelling: value
    for value in (True, False)
    for spelling in (str(value).lower(), str(value), str(value).upper())
}
"""The YAML 1.2 core schema's booleans: ``true``, ``True``, ``TRUE`` and the same of false."""


def _kinds(schema: dict) -> list[str]:
    kinds = schema.get("type", [])
    return [kinds] if isinstance(kinds, str) else kinds


def _wants_number(schema: dict) -> bool:
    enum = schema.get("enum", [])
    numeric_enum = bool(enum) and all(isinstance(v, int | float) for v in enum)
    return numeric_enum or bool({"number", "integer"} & set(_kinds(schema)))


def yaml12_scalar(text: str, schema: dict) -> int | float | bool | None:
    """The number or boolean ``text`` spells in YAML 1.2 where ``schema`` wants one."""
    if _wants_number(schema):
        return yaml12_number(text)
    return YAML12_BOOL.get(text) if "boolean" in _kinds(schema) else None


def coerce_scalars(instance: Any, schema: dict) -> Any:
    """``instance`` with every string that ``schema`` wants as a number (a ``number`` or
    ``integer`` type, or a numeric enum) or a boolean, and that spells one in YAML 1.2,
    replaced by it; everything else unchanged (Snakemake's ``--config ptq=false`` and
    ``bits=[4]`` arrive as strings)."""
    if isinstance(instance, str):
        value = yaml12_scalar(instance, schema)
        return instance if value is None else value
    if isinstance(instance, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {
            key: coerce_scalars(
                value, properties.get(key, extra if isinstance(extra, dict) else {})
            )
            for key, value in instance.items()
        }
    if isinstance(instance, list):
        items = schema.get("items", {})
        return [coerce_scalars(value, items) for value in instance]
    return instance


@functools.cache
def _schema() -> dict:
    text = resources.files("repq").joinpath("recipe.schema.yaml").read_text()
    return yaml.safe_load(text)


def validate(config: dict) -> dict:
    """Check a resolved job config against ``repq/recipe.schema.yaml`` (YAML 1.2 numbers
    written as strings are read as numbers first); returns the checked config."""
    schema = _schema()
    config = coerce_scalars(config, schema)
    problems = schema_problems(config, schema)
    if problems:
        raise ConfigError("invalid configuration: " + "; ".join(problems))
    return config


StrictValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool)
    ),
)
"""JSON Schema 2020-12, except that an integer is an ``int``: JSON Schema counts 64.0 as
an integer, which the DataLoader then refuses as a batch size."""


def schema_problems(instance: Any, schema: dict) -> list[str]:
    """What ``instance`` breaks of ``schema``, one line each (``key.path: message``),
    ordered by key."""
    errors = sorted(
        StrictValidator(schema).iter_errors(instance),
        key=lambda e: [str(p) for p in e.absolute_path],
    )
    return list(
        dict.fromkeys(
            f"{'.'.join(map(str, e.absolute_path)) or '<top level>'}: {_message(e)}" for e in errors
        )
    )


def with_defaults(instance: dict, schema: dict) -> dict:
    """A copy of ``instance`` with the ``default`` of every property ``schema`` names
    and it lacks, in it and in every mapping below it that the schema describes."""
    filled = copy.deepcopy(instance)
    for key, child in schema.get("properties", {}).items():
        if key not in filled and "default" in child:
            filled[key] = copy.deepcopy(child["default"])
        elif isinstance(filled.get(key), dict):
            filled[key] = with_defaults(filled[key], child)
    return filled


def recipe_keys(schema: dict | None = None, prefix: str = "") -> list[str]:
    """Every dotted key the recipe schema names (a free-form section, such as
    ``model.kwargs``, as itself: any key below it is accepted)."""
    schema = _schema() if schema is None else schema
    keys = []
    for name, child in schema.get("properties", {}).items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        keys += recipe_keys(child, f"{dotted}.")
    return keys


def is_recipe_key(key: str) -> bool:
    """Whether ``key`` (``train.qat.epochs``, ``model.kwargs.width_mult``) is a key of
    the recipe schema, or lies below a free-form section of it (``model.kwargs``)."""
    node = _schema()
    for part in key.split("."):
        properties, extra = node.get("properties", {}), node.get("additionalProperties")
        if part in properties:
            node = properties[part]
        elif isinstance(extra, dict):
            node = extra
        else:
            return not properties and node.get("type") == "object" and extra is not False
    return True


def check_keys(overrides: dict, where: str) -> None:
    """A one-line ConfigError for the first dotted key of ``overrides`` that is not a
    recipe key (with the closest recipe keys)."""
    for key in overrides:
        if not is_recipe_key(key):
            close = difflib.get_close_matches(key, recipe_keys(), n=2, cutoff=0.8)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ConfigError(
                f"{where}: {key!r} is not a recipe key (repq/recipe.schema.yaml){hint}"
            )


def _message(error: jsonschema.ValidationError) -> str:
    """The error's message; for a value that fits none of ``anyOf``/``oneOf``, what each
    alternative asks (e.g. a zoo name, or ``timm/<name>``)."""
    if error.validator not in ("anyOf", "oneOf") or not error.context:
        return error.message
    asks = dict.fromkeys(sub.message for sub in error.context)
    return f"{error.instance!r} fits none of the alternatives: " + "; or ".join(asks)


def adopt_credentials(uri: str) -> str:
    """A tracking URI without its user and password (``https://user:pw@host`` gives
    ``https://host``), which go to MLflow's own variables ``MLFLOW_TRACKING_USERNAME``
    and ``MLFLOW_TRACKING_PASSWORD`` instead: no config, parameter or journal that a job
    writes ever holds them."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None:
        return uri
    os.environ["MLFLOW_TRACKING_USERNAME"] = urllib.parse.unquote(parts.username)
    if parts.password is not None:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = urllib.parse.unquote(parts.password)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=host))


def _adopt_tracking_credentials(config: dict) -> dict:
    tracking = config.get("tracking") or {}
    if tracking.get("uri"):
        tracking["uri"] = adopt_credentials(tracking["uri"])
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> dict:
    """Read a YAML recipe, apply overrides and validate it; a tracking URI's credentials
    are taken out (:func:`adopt_credentials`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {yaml_problem(err)}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return _adopt_tracking_credentials(validate(apply_overrides(config, overrides or [])))


def config_hash(config: dict) -> str:
    """A short stable digest of a config (to tell whether a checkpoint belongs to it)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": 1}`` from ``{"a": {"b": 1}}``."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
