"""Re-parametrizable blocks: multi-branch forward, differentiable kernel, deploy conv."""

from repq.reparam.acnet import ACBlock
from repq.reparam.base import Branch, ReparamBlock, fold_norm, identity_kernel, pad_kernel
from repq.reparam.convbn import ConvBN
from repq.reparam.ecb import ECB
from repq.reparam.orepa import OREPABlock, OREPAKernel, OREPALargeConv, compose_kernels
from repq.reparam.repvgg import RepVGGBlock
from repq.reparam.stats import BatchStats, EstimatedStats, NormStats, running_stats
from repq.reparam.surgery import adopt_conv_bn, merge_blocks, reparameterize, replace_modules

__all__ = [
    "ECB",
    "ACBlock",
    "BatchStats",
    "Branch",
    "ConvBN",
    "EstimatedStats",
    "NormStats",
    "OREPABlock",
    "OREPAKernel",
    "OREPALargeConv",
    "RepVGGBlock",
    "ReparamBlock",
    "adopt_conv_bn",
    "compose_kernels",
    "fold_norm",
    "identity_kernel",
    "merge_blocks",
    "pad_kernel",
    "reparameterize",
    "replace_modules",
    "running_stats",
]
