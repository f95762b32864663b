"""RepQ: fake-quantize the merged kernel ``M(W_1..W_n)`` of a re-parametrized block.

``y = conv(Q_a(x), Q_w(M(W_1..W_n))) + b(W_1..W_n)`` (in eval mode the bias on the int32
accumulator's grid, as deployed: :mod:`repq.quant.layers`). In training, each BN branch is
folded with statistics of the current batch: measured by running the branch's float
conv once (RepQ-BN, Algorithm 1; block ``norm_mode == "batch"``) or estimated from
the input's moments and the kernel (RepQ-BNest, S3/S8; ``norm_mode == "estimate"``).
In eval mode the running statistics give exactly the deploy kernel.

By default the statistics are those of the block's float input, before its activation
quantizer: the FP network's BN statistics, as in the FP stage. A 4-bit per-tensor input
step can round every value of a small channel to 0; measured on the quantized input,
that channel's identity-branch variance is 0, the fold scales it by ``gamma / sqrt(eps)``
(about 300x its FP scale) and the gradients through the batch mean grow by that factor
per block (RepVGG-A0, mini benchmark: 7e9 at the first 4-bit RepQ-BNest step, steps
driven negative, the model at chance). ``bn_stats`` (the recipe's ``quant.bn_stats``)
chooses the float input, the quantized input, or BN's running statistics (BN frozen).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from repq.quant.fused import Conv2dOp
from repq.quant.init import QuantInit
from repq.quant.layers import QuantLayer
from repq.quant.policy import LayerPrecision
from repq.reparam.base import ReparamBlock
from repq.reparam.estimate import EstimatedStats
from repq.reparam.stats import BatchStats, NormStats, running_stats

FOLD_STATISTICS = ("float_input", "quantized_input", "running")
"""What RepQ and RepQ-BNest fold BN with in training (``quant.bn_stats``): the batch
statistics (measured or estimated) of the block's float input, of its quantized input,
or BN's running statistics."""


class RepQConv(QuantLayer):
    """A re-parametrized block trained through its quantized deploy kernel."""

    def __init__(
        self, block: ReparamBlock, precision: LayerPrecision, init: QuantInit | None = None
    ) -> None:
        super().__init__(precision, block.out_channels, init)
        self.block = block
        self._has_norm = block.has_norm
        self.bn_stats = FOLD_STATISTICS[0]

    def fold_stats(self, x: Tensor) -> NormStats:
        """The statistics BN is folded with for input ``x`` (``bn_stats``; running
        statistics in eval mode)."""
        if not (self.training and self._has_norm) or self.bn_stats == "running":
            return running_stats
        source = self.input_quant(x) if self.bn_stats == "quantized_input" else x
        estimate = self.block.norm_mode == "estimate"
        return EstimatedStats(source) if estimate else BatchStats(source)

    def forward(self, x: Tensor) -> Tensor:
        kernel, bias = self.block.kernel_bias(self.fold_stats(x))
        return self.quantized_forward(x, kernel, bias, self._op)

    @property
    def _op(self) -> Conv2dOp:
        """The block's convolution (:meth:`ReparamBlock.apply_kernel`) for the fused path."""
        block = self.block
        return Conv2dOp(_pair(block.stride), _pair(block.padding), (1, 1), block.groups)

    def apply_op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return self.block.apply_kernel(x, weight, bias)

    def float_weight(self) -> tuple[Tensor, Tensor]:
        return self.block.kernel_bias()

    def deploy_shell(self) -> nn.Conv2d:
        return self.block.conv_shell()
