"""Atomic checkpoint files that load with ``torch.load(weights_only=True)``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from repq.errors import CheckpointError, first_line
from repq.files import atomic_write

FORMAT = "repq-checkpoint-1"


def save_checkpoint(path: str | Path, kind: str, **content: Any) -> None:
    """Save ``content`` (tensors, numbers, strings, lists, dicts) atomically."""
    atomic_write(path, lambda tmp: torch.save({"format": FORMAT, "kind": kind, **content}, tmp))


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``) and check its format and kind."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = f"{type(err).__name__}: {first_line(err)}"
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({reason})") from err
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a repq checkpoint (format {FORMAT})")
    if kind is not None and content.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {content.get('kind')!r} checkpoint, not {kind!r}")
    return content


def _some(keys: list[str], shown: int = 3) -> str:
    """The first ``shown`` keys and how many more."""
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def state_mismatch(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """What keeps ``state`` from loading into ``model``, in one line (the first keys
    missing, unexpected and of another shape, each with how many more), or None."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} for {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and getattr(state[k], "shape", None) != v.shape
    ]
    parts = [
        f"{label} {_some(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
        if keys
    ]
    return "; ".join(parts) or None


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` with a one-line error that names the checkpoint and
    summarises the mismatch."""
    problem = state_mismatch(model, state)
    if problem is None:
        try:
            model.load_state_dict(state)
            return
        except RuntimeError as err:
            problem = first_line(err)
    raise CheckpointError(f"checkpoint {source} does not fit this model: {problem}")
