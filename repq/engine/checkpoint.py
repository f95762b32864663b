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


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` with an error that names the checkpoint on any mismatch."""
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {source} does not fit this model: {err}") from err
