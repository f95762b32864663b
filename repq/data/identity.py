"""Which data a run used: a data set's name, folder, file count and digest, as MLflow's
dataset inputs show them (the UI's Dataset column tells which runs share data)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

TRAINING, EVALUATION = "training", "evaluation"
"""MLflow's ``mlflow.data.context`` of a data set: what the run did with it."""


@dataclass(frozen=True)
class DataRef:
    """A data set folder as a run used it."""

    name: str
    source: str
    digest: str
    files: int
    context: str


def file_list_digest(root: Path, files: Iterable[str | Path]) -> tuple[str, int]:
    """The digest of a folder's file list (paths relative to ``root``, sorted; a
    ``manifest.json`` beside or above ``root`` too, such as the mini benchmark's) and
    how many files it names. Names, not contents: an ImageNet folder's 1.28M files are
    listed, not read."""
    prefix = len(os.fspath(root).rstrip(os.sep)) + 1
    names = sorted(os.fspath(f)[prefix:] for f in files)
    digest = hashlib.sha256("\n".join(names).encode())
    for folder in (root, *root.parents[:2]):
        manifest = folder / "manifest.json"
        if manifest.is_file():
            digest.update(manifest.read_bytes())
            break
    return digest.hexdigest()[:12], len(names)


def data_ref(name: str, root: str | Path, files: Iterable[str | Path], context: str) -> DataRef:
    """The :class:`DataRef` of the files under ``root`` (paths that start with ``root``
    as given) a run used for ``context``."""
    digest, count = file_list_digest(Path(root), files)
    return DataRef(name, Path(root).resolve().as_uri(), digest, count, context)
