"""timm's re-parametrizable blocks through the block interface, with timm as the oracle:
``repq.reparam.reparameterize`` against timm's ``reparameterize_model`` (outputs and
deploy kernels), QAT that trains every branch, deploy equal to eval, and no silent
per-branch fallback for a block without an adapter."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from conftest import RECIPES, as_args, cls_overrides, randomize, rel_err, tracking_overrides
from torch import nn

timm = pytest.importorskip("timm")
from timm.models import byobnet, fastvit, reparameterize_model  # noqa: E402

from repq.cli import main  # noqa: E402
from repq.errors import ConfigError, UnsupportedBlock  # noqa: E402
from repq.models import create  # noqa: E402
from repq.qat import RepQConv, calibrate, prepare, to_deploy  # noqa: E402
from repq.reparam import BranchSum, PerBranchWarning, adopt_blocks, reparameterize  # noqa: E402
from repq.vocab import METHODS  # noqa: E402

# Measured relative error of repq's merged model against timm's: at most 1.5e-7 for the
# single blocks (float32); whole models in float64: MERGE_TOL_FLOAT64 is 10x the larger
# of the two measured, 1.4e-13 (in float32 repq's and timm's merges of MobileOne-S0 differ from
# timm's multi-branch output by 9e-5 and 1.2e-4 alike).
MERGE_TOL = 2e-6
MERGE_TOL_FLOAT64 = 2e-12
SMALL_MOBILEONE = {"num_classes": 12, "width_factor": 0.25, "stem_chs": 64}


def _blocks() -> dict[str, nn.Module]:
    """One instance of every adapted timm block form, each inside a Sequential (the
    adapters replace children)."""
    mobileone_dw = {"group_size": 1, "num_conv_branches": 3}
    return {
        "repvgg": byobnet.RepVggBlock(8, 8),
        "repvgg-stride2": byobnet.RepVggBlock(8, 16, stride=2),
        "repvgg-grouped": byobnet.RepVggBlock(8, 8, group_size=4),
        "mobileone-byobnet": byobnet.MobileOneBlock(8, 8, num_conv_branches=4),
        "mobileone-byobnet-dw": byobnet.MobileOneBlock(8, 8, **mobileone_dw),
        "mobileone-byobnet-pw": byobnet.MobileOneBlock(8, 16, kernel_size=1, num_conv_branches=2),
        "mobileone-fastvit": fastvit.MobileOneBlock(8, 8, 3, num_conv_branches=2, use_se=True),
        "mobileone-fastvit-dw": fastvit.MobileOneBlock(8, 8, 3, group_size=1, stride=2),
        "large-kernel": fastvit.ReparamLargeKernelConv(8, 8, 7, 1, 1, small_kernel=3),
        "large-kernel-stride2": fastvit.ReparamLargeKernelConv(8, 16, 5, 2, 0, small_kernel=3),
        "rep-mixer": fastvit.RepMixer(8, 3, layer_scale_init_value=0.5),
        "rep-mixer-no-scale": fastvit.RepMixer(8, 3, layer_scale_init_value=None),
        "rep-cpe": fastvit.RepConditionalPosEnc(8, 8, (7, 7)),
    }


BLOCKS = list(_blocks())


def _random(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights, BN statistics and layer scales (timm initialises BN to identity
    and layer scales to 1e-5, which would hide a wrong fold or scale)."""
    return randomize(model, seed, scale=0.3).eval()


def _x(channels: int = 8, size: int = 12, batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, channels, size, size)


def _kernel_bias_of_timm(block: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's own deploy kernel and bias of one block (its reparameterize, on a copy)."""
    deployed = reparameterize_model(nn.Sequential(block))[0]
    return deployed.reparam_conv.weight, deployed.reparam_conv.bias


def _is_sum(module: nn.Module) -> bool:
    return isinstance(module, BranchSum)


@pytest.mark.parametrize("name", BLOCKS)
def test_each_block_merges_as_timm_merges_it(name):
    block = _random(nn.Sequential(_blocks()[name]))
    x = _x()
    timm_deploy = reparameterize_model(block)
    ours = reparameterize(block)
    with torch.no_grad():
        reference, merged, multi = timm_deploy(x), ours(x), block(x)
    assert rel_err(merged, reference) < MERGE_TOL
    assert rel_err(multi, reference) < MERGE_TOL  # timm's own merge is exact too
    adopted = adopt_blocks(copy.deepcopy(block)).eval()
    (sum_block,) = [m for m in adopted.modules() if _is_sum(m)]
    kernel, bias = sum_block.kernel_bias()
    timm_kernel, timm_bias = _kernel_bias_of_timm(block[0])
    assert rel_err(kernel, timm_kernel) < MERGE_TOL and rel_err(bias, timm_bias) < MERGE_TOL
    with torch.no_grad():  # the adopted multi-branch forward (layer scales included)
        assert rel_err(adopted(x), multi) < MERGE_TOL
        # in training mode too (BN on batch statistics; the running ones are not used)
        train_ours, train_timm = copy.deepcopy(adopted).train(), copy.deepcopy(block).train()
        assert rel_err(train_ours(x), train_timm(x)) < MERGE_TOL


def test_the_adopted_block_keeps_timms_tensors_and_its_training_forward():
    block = _random(nn.Sequential(byobnet.MobileOneBlock(8, 8, num_conv_branches=2))).train()
    original = {id(t) for t in [*block.parameters(), *block.buffers()]}
    x = _x()
    expected = block(x)
    adopted = adopt_blocks(block)
    assert {id(p) for p in adopted.parameters()} <= original
    assert rel_err(adopted(x), expected) < MERGE_TOL  # BN in train mode: batch statistics


@torch.no_grad()
def _with_measured_statistics(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Random BN affine parameters and layer scales, running statistics measured on
    ``x`` (random statistics compound over a deep model until its output overflows)."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.copy_(torch.rand(m.num_features, generator=gen) * 0.5 + 0.5)
            m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.reset_running_stats()
            m.momentum = None  # cumulative: the statistics of x exactly
        if isinstance(m, fastvit.LayerScale2d):
            m.gamma.copy_(torch.rand(m.gamma.shape, generator=gen) * 0.5 + 0.5)
    model.train()(x)
    return model.eval()


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("timm/mobileone_s0", SMALL_MOBILEONE),
        ("timm/fastvit_t8", {"num_classes": 12}),
    ],
)
def test_a_whole_timm_model_merges_as_timm_merges_it(name, kwargs):
    x = torch.randn(8, 3, 64, 64, dtype=torch.float64)  # float32 merges differ by 1e-4
    model = _with_measured_statistics(create(name, **kwargs).double(), x)
    with torch.no_grad():
        reference, ours = reparameterize_model(model)(x), reparameterize(model)(x)
    assert torch.isfinite(reference).all() and reference.std() > 0.01  # not collapsed
    assert rel_err(ours, reference) < MERGE_TOL_FLOAT64


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("name", ["mobileone-byobnet", "rep-mixer", "large-kernel"])
def test_qat_trains_every_branch_and_deploys_equal_to_eval(name, method):
    float_model = _random(nn.Sequential(_blocks()[name]))
    qat = prepare(float_model, method, 4)
    x = _x()
    calibrate(qat, [x])
    qat.train()
    qat(x).square().sum().backward()
    missing = [n for n, p in qat.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []
    if method != "merged":  # Merged quantizes the merged conv; the others every branch
        (layer,) = [m for m in qat.modules() if isinstance(m, RepQConv)]
        assert len(layer.block.branches()) >= 2
    qat.eval()
    with torch.no_grad():
        assert rel_err(to_deploy(qat)(x), qat(x)) < 1e-6  # measured: 0 (the same ops)


def test_prepare_merges_every_block_of_a_timm_mobileone():
    model = create("timm/mobileone_s0", **SMALL_MOBILEONE)
    blocks = [m for m in model.modules() if isinstance(m, byobnet.MobileOneBlock)]
    qat = prepare(model, "repq", 4)
    layers = [m for m in qat.modules() if isinstance(m, RepQConv)]
    assert len(layers) == len(blocks)
    folded = {id(m) for layer in layers for m in layer.modules()}
    loose_norms = [m for m in qat.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(id(m) in folded for m in loose_norms)  # every BN inside a merged kernel
    policy = qat.precision_policy
    assert policy.first == "input" and not policy.signed_hidden  # ReLU after every block


def test_a_gelu_model_gets_signed_hidden_inputs():
    assert create("timm/fastvit_t8", num_classes=12).precision_policy.signed_hidden


class LooksReparametrizable(nn.Module):
    """A block of some other library: two convs into one sum, and its own fuse()."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(x)

    def fuse(self) -> nn.Conv2d:
        """What such a library does itself: one conv with both kernels."""
        fused = copy.deepcopy(self.a)
        with torch.no_grad():
            fused.weight[:, :, 1:2, 1:2] += self.b.weight
            fused.bias += self.b.bias
        return fused


def test_a_block_without_an_adapter_is_refused_and_per_branch_only_when_asked():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), LooksReparametrizable())
    block, x = model[1], _x()
    with torch.no_grad():
        assert rel_err(block.fuse()(x), block(x)) < MERGE_TOL  # a real look-alike
    message = r"1 \(.*LooksReparametrizable, with fuse\(\)\) looks re-parametrizable"
    with pytest.raises(UnsupportedBlock, match=message):
        prepare(model, "repq", 4)
    with pytest.raises(UnsupportedBlock, match="LooksReparametrizable"):
        reparameterize(model)
    with pytest.warns(PerBranchWarning, match="LooksReparametrizable"):
        qat = prepare(model, "repq", 4, allow_per_branch=True)
    assert sum(isinstance(m, RepQConv) for m in qat.modules()) == 0
    # the look-alike as the whole model is refused as well
    with pytest.raises(UnsupportedBlock, match=r"^the model \(.*LooksReparametrizable"):
        reparameterize(LooksReparametrizable())


def test_a_timm_family_without_an_adapter_is_refused_by_name():
    with pytest.raises(UnsupportedBlock, match=r"RepGhostModule, with reparameterize\(\)"):
        prepare(create("timm/repghostnet_050", num_classes=12), "repq", 4)


def test_what_the_adapter_cannot_merge_is_refused_by_name():
    block = nn.Sequential(byobnet.RepVggBlock(8, 8, drop_path_rate=0.1))
    with pytest.raises(UnsupportedBlock, match=r"^0: DropPath"):
        prepare(block, "repq", 4)


def test_an_already_deployed_timm_block_is_a_plain_conv():
    deployed = reparameterize_model(_random(nn.Sequential(byobnet.RepVggBlock(8, 8))))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qat = prepare(deployed, "repq", 8)
    assert [type(m).__name__ for m in qat[0]] == ["QuantConv2d", "ReLU"]


def test_an_unknown_timm_name_is_a_config_error():
    with pytest.raises(ConfigError, match="timm has no model 'mobileone_s9'"):
        create("timm/mobileone_s9")


def test_the_command_line_trains_and_quantizes_a_timm_model(mini_data, tmp_path):
    recipe = str(RECIPES / "timm_mobileone_s0.yaml")
    overrides = cls_overrides(mini_data, epochs=1) + tracking_overrides(tmp_path)
    overrides += ["model.kwargs.width_mult=null", "model.kwargs.width_factor=0.25"]
    overrides += ["model.kwargs.stem_chs=64"]
    fp = tmp_path / "fp"
    assert main(["train", recipe, "--stage", "fp", "--out", str(fp), *as_args(overrides)]) == 0
    ptq = tmp_path / "ptq"
    args = ["--stage", "ptq-4", "--init", str(fp / "model.pt"), "--out", str(ptq)]
    assert main(["train", recipe, *args, *as_args(overrides)]) == 0
    metrics = json.loads((ptq / "metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["top1"] <= 100.0
    layers = len((ptq / "precision.tsv").read_text().splitlines()) - 1
    model = create("timm/mobileone_s0", **SMALL_MOBILEONE)
    blocks = sum(isinstance(m, byobnet.MobileOneBlock) for m in model.modules())
    assert layers == blocks + 1  # every block one kernel, and the classifier


def test_a_plain_copy_of_timms_batchnorm_keeps_its_momentum_and_statistics():
    """``plain_norm`` drops timm's act/drop from ``BatchNormAct2d``; its running statistics
    must then update as the original's would (same momentum, same tensors)."""
    from timm.layers import BatchNormAct2d

    from repq.reparam.branch_sum import plain_norm

    original = BatchNormAct2d(4, momentum=0.3, apply_act=False)
    norm = plain_norm(original)
    assert type(norm) is nn.BatchNorm2d and norm.momentum == 0.3
    assert norm.running_mean is original.running_mean
    x = torch.randn(8, 4, 5, 5) + 2.0
    norm.train()(x)
    expected = 0.3 * x.mean((0, 2, 3))  # from zeros, one step of momentum 0.3
    torch.testing.assert_close(original.running_mean, expected)


def test_a_timm_bn_with_an_activation_inside_a_branch_is_refused_by_name():
    from timm.layers import BatchNormAct2d

    from repq.reparam.timm_blocks import linear_norm

    with pytest.raises(
        UnsupportedBlock, match=r"^blk.bn: its act \(ReLU\(inplace=True\)\) precedes the sum$"
    ):
        linear_norm("blk.bn", BatchNormAct2d(8, act_layer=nn.ReLU))
    dropping = BatchNormAct2d(8, apply_act=False, drop_layer=nn.Dropout)
    with pytest.raises(UnsupportedBlock, match=r"^blk.bn: its drop \(Dropout"):
        linear_norm("blk.bn", dropping)
    with pytest.raises(UnsupportedBlock, match=r"^blk.bn: LayerNorm is not a BatchNorm2d$"):
        linear_norm("blk.bn", nn.LayerNorm(8))


def test_a_rep_mixer_with_an_se_inside_is_refused():
    mixer = fastvit.RepMixer(8, 3, layer_scale_init_value=None)
    mixer.mixer.se = fastvit.SqueezeExcite(8)
    with pytest.raises(UnsupportedBlock, match="an activation or SE inside the mixer"):
        adopt_blocks(nn.Sequential(mixer))


def test_a_plain_timm_conv_norm_act_becomes_a_conv_bn_and_a_dilated_one_stays():
    from timm.layers import ConvNormAct

    from repq.reparam import ConvBN

    plain = _random(nn.Sequential(ConvNormAct(8, 8, 3, apply_act=True)))
    dilated = nn.Sequential(ConvNormAct(8, 8, 3, dilation=2))
    x = _x()
    with torch.no_grad():
        expected = plain(x)
        adopted = adopt_blocks(copy.deepcopy(plain)).eval()
        assert rel_err(adopted(x), expected) < MERGE_TOL
    assert any(isinstance(m, ConvBN) for m in adopted.modules())
    assert not any(isinstance(m, ConvBN) for m in adopt_blocks(dilated).modules())


def test_an_anti_aliased_branch_of_a_repvgg_block_is_refused_by_its_path():
    block = nn.Sequential(byobnet.RepVggBlock(8, 8))
    block[0].conv_kxk.aa = nn.AvgPool2d(1)
    with pytest.raises(UnsupportedBlock, match=r"^0\.conv_kxk: anti-aliasing \(AvgPool2d"):
        adopt_blocks(block)
