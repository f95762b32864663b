"""What the diagnostics of a finished mini reproduction share: the options that name it,
the architecture, its variant, the bit width and where the rebuilt jobs go."""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def arguments(description: str, out: str) -> argparse.ArgumentParser:
    """``--results --arch --variant --bits --threads --out`` (the last under
    ``results/diagnostics/<out>``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--results", type=Path, default=ROOT / "results" / "reproduction")
    parser.add_argument("--arch", default="repvgg_a0")
    parser.add_argument("--variant", default="base", help="the runs' variant (base: as configured)")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "diagnostics" / out)
    return parser
