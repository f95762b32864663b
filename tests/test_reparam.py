"""Exactness and differentiability of every block's kernel function."""

from __future__ import annotations

import pytest
import torch
import torchvision
from blocks import DEAD, FACTORIES, IDS
from conftest import randomize, rel_err
from torch import nn

from repq.models import available, create
from repq.reparam import ConvBN, ReparamBlock, compose_kernels, reparameterize

SIZES = [(9, 9), (10, 10), (7, 12)]


@pytest.mark.parametrize("factory", FACTORIES, ids=IDS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
# tolerances about 10x the largest error measured over every case: 3.3e-7 and 5.1e-16
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 4e-6), (torch.float64, 5e-15)])
def test_block_equals_its_deploy_conv(factory, size, dtype, tol):
    block = randomize(factory()).eval().to(dtype)
    x = torch.randn(2, block.in_channels, *size, dtype=dtype)
    with torch.no_grad():
        expected = block(x)
        got = block.to_conv()(x)
    assert got.shape == expected.shape
    assert rel_err(got, expected) <= tol


def _grads(block: ReparamBlock, loss) -> dict[str, torch.Tensor]:
    block.zero_grad()
    loss().backward()
    return {n: p.grad.clone() for n, p in block.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("factory", FACTORIES, ids=IDS)
def test_kernel_function_reaches_every_parameter(factory):
    block = randomize(factory()).eval().double()
    x = torch.randn(2, block.in_channels, 9, 9, dtype=torch.float64)
    r = torch.randn_like(block(x))
    branches = _grads(block, lambda: (block.forward_branches(x) * r).sum())
    merged = _grads(block, lambda: (block.apply_kernel(x, *block.kernel_bias()) * r).sum())
    for name, _ in block.named_parameters():
        assert name in merged, name
        # measured at most 2.1e-15
        assert rel_err(merged[name], branches[name]) < 2e-14 or name.endswith(DEAD), name
        assert merged[name].abs().sum() > 0 or name.endswith(DEAD), name


class _KernelOf(nn.Module):
    def __init__(self, block: ReparamBlock) -> None:
        super().__init__()
        self.block = block

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.block.kernel_bias()


SMALL = {
    "convbn": lambda: ConvBN(2, 2, 3, 1),
    "repvgg": lambda: FACTORIES[IDS.index("repvgg-s1-8to8-g2")](),
    "acblock": lambda: FACTORIES[IDS.index("acblock-s1-4to8-g2")](),
    "orepa": lambda: FACTORIES[IDS.index("orepa-s1-4to8-g2")](),
    "orepa_large": lambda: FACTORIES[IDS.index("orepa_large-s2-3to6")](),
    "ecb": lambda: FACTORIES[IDS.index("ecb-8to8-idt1")](),
}


@pytest.mark.parametrize("name", list(SMALL))
def test_kernel_function_gradcheck(name):
    wrapper = _KernelOf(randomize(SMALL[name]()).double())
    params = dict(wrapper.named_parameters())
    names = list(params)

    def kernel_of(*tensors):
        return torch.func.functional_call(wrapper, dict(zip(names, tensors, strict=True)), ())

    inputs = tuple(p.detach().clone().requires_grad_() for p in params.values())
    assert torch.autograd.gradcheck(kernel_of, inputs, eps=1e-6, atol=1e-5, fast_mode=True)


def test_composed_stem_kernel_is_the_sequence_of_its_generators():
    first, second = (
        torch.randn(5, 3, 3, 3, dtype=torch.float64),
        torch.randn(4, 5, 3, 3, dtype=torch.float64),
    )
    x = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    sequential = nn.functional.conv2d(nn.functional.conv2d(x, first), second)
    composed = nn.functional.conv2d(x, compose_kernels(first, second))
    assert composed.shape == sequential.shape
    assert rel_err(composed, sequential) < 5e-15  # measured 4.2e-16


FULL_INPUT = {"ecbsr": (1, 24, 24)}


@pytest.mark.parametrize("name", available())
def test_whole_model_reparameterizes(name):
    model = randomize(create(name), scale=0.01).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2, *FULL_INPUT.get(name, (3, 64, 64))) * (255 if name == "ecbsr" else 1)
    deploy = reparameterize(model)
    assert not any(isinstance(m, ReparamBlock) for m in deploy.modules())
    with torch.no_grad():
        assert rel_err(deploy(x), model(x)) <= 7e-6  # measured at most 6.6e-7
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, ReparamBlock) for m in model.modules())


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "train_params", "deploy_params"),
    [("repvgg_a0", 9_108_968, 8_309_384), ("repvgg_b0", 15_817_960, 14_339_048)],
)
def test_repvgg_parameter_counts(name, train_params, deploy_params):
    model = create(name, num_classes=1000)
    assert _count(model) == train_params
    assert _count(reparameterize(model)) == deploy_params


@pytest.mark.parametrize("name", ["ac_resnet18", "orepa_resnet18", "resnet18"])
def test_resnet_deploy_shapes_match_torchvision(name):
    deploy = reparameterize(create(name, num_classes=1000))
    ours = sorted(tuple(p.shape) for p in deploy.parameters() if p.dim() > 1)
    reference = sorted(
        tuple(p.shape) for p in torchvision.models.resnet18().parameters() if p.dim() > 1
    )
    assert ours == reference
    convs = [m for m in deploy.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 20 and all(c.bias is not None for c in convs)


def test_block_counts_follow_the_official_architectures():
    from repq.reparam import ACBlock, OREPABlock, OREPALargeConv, RepVGGBlock

    def n(model, cls):
        return sum(isinstance(m, cls) for m in model.modules())

    assert n(create("repvgg_a0"), RepVGGBlock) == 1 + 2 + 4 + 14 + 1
    assert n(create("repvgg_b0"), RepVGGBlock) == 1 + 4 + 6 + 16 + 1
    assert n(create("ac_resnet18"), ACBlock) == 16
    orepa = create("orepa_resnet18")
    assert n(orepa, OREPABlock) == 16 and n(orepa, OREPALargeConv) == 1
    ecbsr = create("ecbsr", m=4, c=16, scale=4)
    assert ecbsr(torch.rand(1, 1, 8, 8)).shape == (1, 1, 32, 32)


def test_plain_conv_bn_pairs_are_folded():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
    randomize(model).eval()
    deploy = reparameterize(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deploy.modules())
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        assert rel_err(deploy(x), model(x)) <= 2e-6  # measured 1.3e-7


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match="repvgg_a0"):
        create("vgg16")


def test_the_ecb_identity_kernel_is_a_constant_not_state():
    """ECB's identity kernel is rebuilt from the channel count: it is no checkpoint key
    (a saved copy would make every checkpoint depend on it)."""
    from repq.reparam.ecb import ECB

    block = ECB(4, 4, 2.0, with_idt=True)
    assert "id_kernel" in dict(block.named_buffers())
    assert not any(key.endswith("id_kernel") for key in block.state_dict())


def test_a_kernel_that_cannot_be_centred_names_its_size():
    from repq.reparam import pad_kernel

    with pytest.raises(ValueError, match=r"^cannot centre a \(2, 2\) kernel in \(3, 3\)$"):
        pad_kernel(torch.zeros(1, 1, 2, 2), (3, 3))


def test_orepas_frequency_prior_is_the_dct_basis_written_out():
    """Rows vary as cos(pi (h + 1/2) (i + 1) / k) for the first half of the channels,
    columns as cos(pi (w + 1/2) (i + 1 - C/2) / k) for the second (the official code)."""
    import math

    from repq.reparam.orepa import frequency_prior

    channels, k = 6, 3
    prior = frequency_prior(channels, k)
    for i in range(channels):
        for h in range(k):
            for w in range(k):
                if i < channels / 2:
                    expected = math.cos(math.pi * (h + 0.5) * (i + 1) / k)
                else:
                    expected = math.cos(math.pi * (w + 0.5) * (i + 1 - channels / 2) / k)
                assert abs(prior[i, h, w].item() - expected) < 1e-7, (i, h, w)


def test_an_acnet_block_with_wider_padding_merges_and_narrower_is_refused():
    from repq.reparam import ACBlock

    block = randomize(ACBlock(4, 4, 3, padding=2)).eval()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        out = block(x)
        assert out.shape[-1] == 10 and rel_err(block.to_conv()(x), out) < 1e-6
    with pytest.raises(ValueError, match=r"^ACBlock needs padding >= kernel_size // 2 = 1, got 0$"):
        ACBlock(4, 4, 3, padding=0)
