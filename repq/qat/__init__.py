"""The QAT methods of the paper: Merged LSQ, RepQ (BN folded with batch statistics)
and RepQ-BNest (BN statistics estimated)."""

from repq.qat.methods import HANDLERS, Handler, bnest_fp, fp_form, norm_blocks
from repq.qat.prepare import (
    QatOptions,
    calibrate,
    precision_table,
    precision_tsv,
    prepare,
    quantizable_layers,
    set_quantizers,
    to_deploy,
)
from repq.qat.repq_conv import RepQConv

__all__ = [
    "HANDLERS",
    "Handler",
    "QatOptions",
    "RepQConv",
    "bnest_fp",
    "calibrate",
    "fp_form",
    "norm_blocks",
    "precision_table",
    "precision_tsv",
    "prepare",
    "quantizable_layers",
    "set_quantizers",
    "to_deploy",
]
