"""Re-parametrizable blocks: multi-branch forward, differentiable kernel, deploy conv."""

from repq.reparam.acnet import ACBlock
from repq.reparam.adapters import register_adapter
from repq.reparam.base import Branch, ReparamBlock, fold_norm, identity_kernel, pad_kernel
from repq.reparam.branch_sum import BranchSum, Term, plain_norm
from repq.reparam.convbn import ConvBN
from repq.reparam.ecb import ECB
from repq.reparam.estimate import EstimatedStats
from repq.reparam.orepa import OREPABlock, OREPAKernel, OREPALargeConv, compose_kernels
from repq.reparam.repvgg import RepVGGBlock
from repq.reparam.stats import BatchStats, NormStats, running_stats
from repq.reparam.surgery import (
    PerBranchWarning,
    adopt_blocks,
    adopt_conv_bn,
    convert_blocks,
    merge_blocks,
    reparameterize,
    replace_modules,
)

__all__ = [
    "ECB",
    "ACBlock",
    "BatchStats",
    "Branch",
    "BranchSum",
    "ConvBN",
    "EstimatedStats",
    "NormStats",
    "OREPABlock",
    "OREPAKernel",
    "OREPALargeConv",
    "PerBranchWarning",
    "RepVGGBlock",
    "ReparamBlock",
    "Term",
    "adopt_blocks",
    "adopt_conv_bn",
    "compose_kernels",
    "convert_blocks",
    "fold_norm",
    "identity_kernel",
    "merge_blocks",
    "pad_kernel",
    "plain_norm",
    "register_adapter",
    "reparameterize",
    "replace_modules",
    "running_stats",
]
