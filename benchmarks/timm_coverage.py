"""Which timm models ``repq.qat.prepare`` fully merges: for every timm model of the
re-parametrized families (random init, nothing downloaded), whether ``prepare(model,
"repq", 4)`` accepts it, how many of its re-parametrizable blocks became one RepQ layer
(one merged kernel each), and how many BatchNorms are left outside a merged kernel.

    python benchmarks/timm_coverage.py          # writes benchmarks/results/timm-coverage.md
"""

from __future__ import annotations

import argparse
import gc
import re
from pathlib import Path

import timm
from torch import nn

from repq.errors import UnsupportedBlock, first_line
from repq.models import create
from repq.qat import RepQConv, prepare
from repq.reparam import BranchSum
from repq.reparam.timm_blocks import ADAPTED

FAMILIES = ("repvgg*", "mobileone*", "fastvit*")
OTHER_REPARAM = (
    "repghostnet_050",
    "repvit_m0_9",
    "levit_128s",
    "efficientvit_m0",
    "tiny_vit_5m_224",
)
ADAPTED_BLOCKS = tuple(cls for cls in ADAPTED if cls.__name__ != "ConvNormAct")


def outermost_blocks(model: nn.Module) -> int:
    """Re-parametrizable timm blocks, not counting those inside another (a RepMixer's
    two MobileOne blocks are one merged kernel)."""

    def count(module: nn.Module) -> int:
        if isinstance(module, ADAPTED_BLOCKS):
            return 1
        return sum(count(child) for child in module.children())

    return count(model)


def coverage(name: str) -> dict:
    model = create(f"timm/{name}", num_classes=10)
    blocks = outermost_blocks(model)
    try:
        qat = prepare(model, "repq", 4)
    except UnsupportedBlock as error:
        kind = re.search(r"\((\S+), with (\w+)\(\)\)", first_line(error))
        return {"name": name, "result": f"refused: {kind[1]} ({kind[2]}) has no adapter"}
    layers = [m for m in qat.modules() if isinstance(m, RepQConv)]
    from_blocks = sum(isinstance(layer.block, BranchSum) for layer in layers)
    merged = {id(n) for layer in layers for n in layer.modules()}
    loose = sum(isinstance(m, nn.BatchNorm2d) and id(m) not in merged for m in qat.modules())
    full = "every block one kernel" if from_blocks == blocks else "PARTLY"
    return {
        "name": name,
        "result": full,
        "blocks": blocks,
        "repq_layers": len(layers),
        "loose_bn": loose,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| timm model | prepare(repq, 4) | re-param. blocks | RepQ layers | BN left outside |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r["name"], r["result"]] + [str(r.get(k, "")) for k in ("blocks", "repq_layers")]
        lines.append("| " + " | ".join([*cells, str(r.get("loose_bn", ""))]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/timm-coverage.md")
    args = parser.parse_args()
    names = sorted({n for f in FAMILIES + OTHER_REPARAM for n in timm.list_models(f)})
    rows = []
    for name in names:
        rows.append(coverage(name))
        gc.collect()
        print(rows[-1], flush=True)
    header = f"# timm coverage (timm {timm.__version__}; `python benchmarks/timm_coverage.py`)\n\n"
    Path(args.out).write_text(header + table(rows))


if __name__ == "__main__":
    main()
