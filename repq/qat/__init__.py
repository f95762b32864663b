"""The QAT methods of the paper: Merged LSQ, RepQ (BN folded with batch statistics)
and RepQ-BNest (BN statistics estimated)."""

from repq.qat.prepare import (
    METHODS,
    bnest_fp,
    norm_blocks,
    precision_table,
    prepare,
    quantizable_layers,
    set_quantizers,
    to_deploy,
)
from repq.qat.repq_conv import RepQConv

__all__ = [
    "METHODS",
    "RepQConv",
    "bnest_fp",
    "norm_blocks",
    "precision_table",
    "prepare",
    "quantizable_layers",
    "set_quantizers",
    "to_deploy",
]
