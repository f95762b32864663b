"""What every benchmark result file holds besides its numbers, and the rule that a
measurement never replaces another: ``<tag>.json`` carries its provenance (the command,
the commit, the date, the host's CPU and cores, torch and Python), and a tag that
already has a file is refused (a new measurement is a new file)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from repq.files import atomic_write
from repq.report.docs import provenance


def new_tag(out: Path, tag: str) -> None:
    """Exit in one line if ``out/<tag>.json`` exists: a tag is never overwritten."""
    if (out / f"{tag}.json").exists():
        sys.exit(f"{out / tag}.json exists: a measurement never replaces another; use a new --tag")


def stamp() -> dict:
    """The provenance of the running measurement (the command as it was typed)."""
    return provenance(" ".join(["python", *sys.argv]))


def save(out: Path, tag: str, result: dict, text: str) -> None:
    """``<tag>.json`` (``result``) and ``<tag>.md`` (``text``) under ``out``, each
    replaced atomically: a measurement killed half-way leaves no half-written file."""
    out.mkdir(parents=True, exist_ok=True)
    contents = {"json": json.dumps(result, indent=2, default=str) + "\n", "md": text}
    for suffix, content in contents.items():
        atomic_write(out / f"{tag}.{suffix}", lambda tmp, c=content: Path(tmp).write_text(c))
