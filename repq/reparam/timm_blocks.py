"""timm's re-parametrizable blocks through :class:`ReparamBlock` (timm 1.0, ``repq[timm]``).

Each adapter keeps timm's own parameters and buffers (the same tensors) and turns the
linear multi-branch part into a :class:`BranchSum`; what is not linear (attention or
SE, the activation) follows it in an ``nn.Sequential``:

* ``byobnet.RepVggBlock``: kxk conv+BN, 1x1 conv+BN, BN identity; then ``attn``, ``act``;
* ``byobnet.MobileOneBlock`` and ``fastvit.MobileOneBlock``: ``num_conv_branches`` kxk
  conv+BN, the 1x1 scale branch, the BN identity (dense, depthwise or pointwise: the
  ``groups`` of the block); then ``attn`` or ``se``, and ``act``;
* ``fastvit.ReparamLargeKernelConv``: the large and the small kernel conv+BN; then
  ``se``, ``act``;
* ``fastvit.RepMixer``: ``x + gamma * (mixer(x) - norm(x))``, one block whose mixer
  branches are scaled by ``gamma`` and whose norm branches by ``-gamma``;
* ``fastvit.RepConditionalPosEnc``: ``x + conv(x)`` (a biased depthwise conv);
* ``layers.ConvNormAct`` with BN: a :class:`ConvBN`, then the BN's drop and activation.

A block already re-parameterized by timm (``reparam_conv``) becomes that conv followed
by its non-linear parts. What cannot be merged exactly (dilation, "same" padding,
DropPath or DropBlock inside the sum, an activation before the sum) is refused with
:class:`UnsupportedBlock`, naming the module.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

from timm.layers import ConvNormAct
from timm.models import byobnet, fastvit
from torch import nn

from repq.errors import UnsupportedBlock
from repq.reparam.adapters import is_identity, register_adapter
from repq.reparam.branch_sum import BranchSum, Term, plain_norm
from repq.reparam.convbn import ConvBN


def linear_norm(name: str, bn: nn.Module) -> nn.BatchNorm2d:
    """The BN of a branch inside a sum, which must apply neither drop nor activation."""
    if not isinstance(bn, nn.BatchNorm2d):
        raise UnsupportedBlock(f"{name}: {type(bn).__name__} is not a BatchNorm2d")
    for part in ("drop", "act"):
        if not is_identity(getattr(bn, part, None)):
            raise UnsupportedBlock(f"{name}: its {part} ({getattr(bn, part)}) precedes the sum")
    return plain_norm(bn)


def conv_term(name: str, module: ConvNormAct, **kw) -> Term:
    """A timm ``ConvNormAct`` (conv and BN, nothing after them) as a branch."""
    if getattr(module, "aa", None) is not None:
        raise UnsupportedBlock(f"{name}: anti-aliasing ({module.aa}) precedes the sum")
    return Term(module.conv, linear_norm(f"{name}.bn", module.bn), **kw)


def geometry(conv: nn.Conv2d) -> dict:
    """The ``ReparamBlock`` geometry of a block whose kernel is ``conv``'s."""
    return {
        "in_channels": conv.in_channels,
        "out_channels": conv.out_channels,
        "kernel_size": conv.kernel_size,
        "stride": conv.stride,
        "padding": conv.padding,
        "groups": conv.groups,
    }


def followed(block: nn.Module, **post: nn.Module) -> nn.Module:
    """``block`` then the non-identity modules of ``post``, in order."""
    ops = [(k, m) for k, m in post.items() if not is_identity(m)]
    return nn.Sequential(OrderedDict([("block", block), *ops])) if ops else block


def _post(module: nn.Module) -> dict[str, nn.Module]:
    """The non-linear tail of a RepVGG or MobileOne block: attention or SE, then act."""
    attention = {"attn": module.attn} if hasattr(module, "attn") else {"se": module.se}
    return {**attention, "act": module.act}


def _check_drop_path(name: str, module: nn.Module) -> None:
    drop_path = getattr(module, "drop_path", None)
    if not is_identity(drop_path):
        raise UnsupportedBlock(
            f"{name}: DropPath ({drop_path}) acts on some branches only; create the "
            "model with drop_path_rate=0"
        )


def mobileone_terms(name: str, module: nn.Module) -> list[Term]:
    """The branches of a MobileOne block (either timm class): identity, scale, kxk."""
    if module.reparam_conv is not None:
        raise UnsupportedBlock(f"{name}: already re-parameterized inside a multi-branch block")
    terms = []
    if module.identity is not None:
        terms.append(Term(None, linear_norm(f"{name}.identity", module.identity)))
    if module.conv_scale is not None:
        terms.append(conv_term(f"{name}.conv_scale", module.conv_scale))
    for i, conv in enumerate(module.conv_kxk or []):
        terms.append(conv_term(f"{name}.conv_kxk.{i}", conv))
    return terms


def adapt_repvgg(name: str, module: byobnet.RepVggBlock) -> nn.Module:
    if module.reparam_conv is not None:
        return followed(module.reparam_conv, **_post(module))
    _check_drop_path(name, module)
    terms = [
        conv_term(f"{name}.conv_kxk", module.conv_kxk),
        conv_term(f"{name}.conv_1x1", module.conv_1x1),
    ]
    if module.identity is not None:
        terms.append(Term(None, linear_norm(f"{name}.identity", module.identity)))
    return followed(BranchSum(name, terms, geometry(module.conv_kxk.conv)), **_post(module))


def _mobileone_geometry(name: str, module: nn.Module) -> dict:
    if module.conv_kxk:
        return geometry(module.conv_kxk[0].conv)
    if not hasattr(module, "kernel_size"):
        raise UnsupportedBlock(f"{name}: a MobileOne block without kxk branches")
    k = module.kernel_size
    return {
        "in_channels": module.in_chs,
        "out_channels": module.out_chs,
        "kernel_size": k,
        "stride": module.stride,
        "padding": k // 2,
        "groups": module.groups,
    }


def adapt_mobileone(name: str, module: nn.Module) -> nn.Module:
    if module.reparam_conv is not None:
        return followed(module.reparam_conv, **_post(module))
    _check_drop_path(name, module)
    block = BranchSum(name, mobileone_terms(name, module), _mobileone_geometry(name, module))
    return followed(block, **_post(module))


def adapt_large_kernel(name: str, module: fastvit.ReparamLargeKernelConv) -> nn.Module:
    post = {"se": module.se, "act": module.act}
    if module.reparam_conv is not None:
        return followed(module.reparam_conv, **post)
    terms = [conv_term(f"{name}.large_conv", module.large_conv)]
    small = getattr(module, "small_conv", None)
    if small is not None:
        terms.append(conv_term(f"{name}.small_conv", small))
    return followed(BranchSum(name, terms, geometry(module.large_conv.conv)), **post)


def adapt_rep_mixer(name: str, module: fastvit.RepMixer) -> nn.Module:
    if module.reparam_conv is not None:
        return module.reparam_conv
    for part in ("mixer", "norm"):
        inner = getattr(module, part)
        if not (is_identity(inner.act) and is_identity(inner.se)):
            raise UnsupportedBlock(f"{name}.{part}: an activation or SE inside the mixer")
    gamma = getattr(module.layer_scale, "gamma", None)
    scaled = gamma is not None
    terms = [Term(None)]
    terms += [replace(t, scaled=scaled) for t in mobileone_terms(f"{name}.mixer", module.mixer)]
    norm_terms = mobileone_terms(f"{name}.norm", module.norm)
    terms += [replace(t, sign=-1.0, scaled=scaled) for t in norm_terms]
    k = module.kernel_size
    dim = module.dim
    shape = {"in_channels": dim, "out_channels": dim, "kernel_size": k, "padding": k // 2}
    return BranchSum(name, terms, {**shape, "stride": 1, "groups": dim}, gamma)


def adapt_rep_cpe(name: str, module: fastvit.RepConditionalPosEnc) -> nn.Module:
    if module.reparam_conv is not None:
        return module.reparam_conv
    conv = module.pos_enc
    return BranchSum(name, [Term(conv), Term(None)], geometry(conv))


def adapt_conv_norm_act(name: str, module: ConvNormAct) -> nn.Module:
    """A conv+BN pair; a ConvNormAct without BN, or with a biased or non-plain conv,
    stays as it is (its conv is an ordinary layer)."""
    conv, bn = module.conv, module.bn
    adoptable = (
        isinstance(bn, nn.BatchNorm2d)
        and type(conv) is nn.Conv2d
        and conv.bias is None
        and conv.dilation == (1, 1)
        and conv.padding_mode == "zeros"
    )
    if not adoptable:
        return module
    block = ConvBN.from_modules(conv, plain_norm(bn))
    post = {"drop": getattr(bn, "drop", None), "act": getattr(bn, "act", None)}
    return followed(block, **post, aa=getattr(module, "aa", None))


ADAPTED = {
    byobnet.RepVggBlock: adapt_repvgg,
    byobnet.MobileOneBlock: adapt_mobileone,
    fastvit.MobileOneBlock: adapt_mobileone,
    fastvit.ReparamLargeKernelConv: adapt_large_kernel,
    fastvit.RepMixer: adapt_rep_mixer,
    fastvit.RepConditionalPosEnc: adapt_rep_cpe,
    ConvNormAct: adapt_conv_norm_act,
}
"""The timm classes with an adapter."""

for cls, adapter in ADAPTED.items():
    register_adapter(cls, adapter)
