"""The paper's setup as written in the supplementary material, against the repository:
Table S1 against the recipes and config/paper.yaml, and S1's 4-bit precision exceptions
against every model's quantized layers for every method."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from repq.models import create
from repq.qat import bnest_fp, precision_table, prepare
from repq.vocab import METHODS

ROOT = Path(__file__).resolve().parents[1]

# Table S1, written out from the supplementary material.
TABLE_S1 = {
    "repvgg_a0": dict(
        epochs=120, batch=256, loss="cross_entropy", smoothing=0.1, optimizer="sgd",
        schedule="cosine", warmup=5, decay=1e-4, fp=0.1, quantized=0.01, merged8=0.001,
        step8=0.01, step4=0.01,
    ),
    "ac_resnet18": dict(
        epochs=100, batch=256, loss="cross_entropy", smoothing=0.0, optimizer="sgd",
        schedule="cosine", warmup=0, decay=1e-4, fp=0.1, quantized=0.01, merged8=0.001,
        step8=1e-4, step4=1e-3,
    ),
    "orepa_resnet18": dict(
        epochs=120, batch=256, loss="cross_entropy", smoothing=0.0, optimizer="sgd",
        schedule="cosine", warmup=5, decay=1e-4, fp=0.1, quantized=0.01, merged8=0.001,
        step8=1e-4, step4=1e-3,
    ),
    "ecbsr": dict(
        epochs=1000, batch=32, loss="l1", smoothing=None, optimizer="adam",
        schedule="constant", warmup=0, decay=0.0, fp=5e-4, quantized=5e-4, merged8=5e-4,
        step8=5e-4, step4=5e-4,
    ),
}  # fmt: skip
TABLE_S1["repvgg_b0"] = TABLE_S1["repvgg_a0"]


def _recipe_values(train: dict) -> dict:
    return dict(
        epochs=train["epochs"],
        batch=train["batch_size"],
        loss=train["loss"],
        smoothing=train.get("label_smoothing"),
        optimizer=train["optimizer"],
        schedule=train["schedule"],
        warmup=train.get("warmup_epochs", 0),
        decay=train["weight_decay"],
        fp=train["lr"]["fp"],
        quantized=train["lr"]["quantized"],
        merged8=train["lr"]["merged_8bit"],
        step8=train["step_lr"]["8"],
        step4=train["step_lr"]["4"],
    )


PAPER = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())


@pytest.mark.parametrize("experiment", list(PAPER["experiments"]))
def test_the_paper_configuration_trains_table_s1(experiment):
    from repq.config import apply_overrides, load_config
    from repq.pipeline import overrides

    spec = PAPER["experiments"][experiment]
    recipe = load_config(ROOT / spec["recipe"])
    config = apply_overrides(recipe, [f"{k}={v}" for k, v in overrides(PAPER, experiment).items()])
    expected = TABLE_S1[config["model"]["name"]]
    got = _recipe_values(config["train"])
    if expected["smoothing"] is None:  # S1 names no smoothing for an L1 loss
        got["smoothing"] = None
    assert got == expected
    assert config["train"].get("momentum", 0.9) == 0.9
    assert "qat" not in config["train"]  # QAT keeps the FP recipe but the LR (S1)
    assert set(PAPER["methods"]) == set(METHODS) and PAPER["bits"] == [8, 4]


@pytest.mark.parametrize("experiment", ["ecbsr_x2", "ecbsr_x4"])
def test_the_paper_configuration_trains_ecbsr_as_the_official_code(experiment):
    """Official ECBSR (configs/ecbsr_x{2,4}_m4c16_prelu.yml): 64x64 LR patches, each of
    DIV2K's 800 images 64 times an epoch, MATLAB-bicubic LR images of the right scale."""
    from repq.config import apply_overrides, load_config
    from repq.pipeline import overrides

    spec = PAPER["experiments"][experiment]
    recipe = load_config(ROOT / spec["recipe"])
    config = apply_overrides(recipe, [f"{k}={v}" for k, v in overrides(PAPER, experiment).items()])
    data, scale = config["data"], config["data"]["scale"]
    assert config["model"]["kwargs"]["scale"] == scale and data["patch"] == 64 * scale
    assert data["repeat"] == 64
    assert data["train_lr"].endswith(f"DIV2K_train_LR_bicubic/X{scale}")
    assert set(data["test_lr"]) == set(data["test"]) == {"Set5", "Set14", "B100", "Urban100"}
    assert all(path.endswith(f"LR_bicubic/X{scale}") for path in data["test_lr"].values())


# S1's 4-bit exceptions: (weight bits, input bits, signed input) of the first layer, of
# the layers between, and of the last layer. At 8 bits every layer is 8/8.
S1_AT_4_BITS = {
    "repvgg_a0": [(4, 8, True), (4, 4, False), (4, 4, False)],  # only the first input 8-bit
    "ac_resnet18": [(8, 8, True), (4, 4, False), (4, 4, False)],  # the first layer 8-bit
    "orepa_resnet18": [(8, 8, True), (4, 4, False), (8, 8, False)],  # first and last 8-bit
    # first and last; the 0-255 luma input is unsigned, the inputs after PReLU are signed
    "ecbsr": [(8, 8, False), (4, 4, True), (8, 8, True)],
}


def _small(name: str):
    if name == "ecbsr":
        return create(name, m=2, c=8)
    return create(name, num_classes=10, width_mult=0.25)


APPLICABLE = [(n, m) for n in S1_AT_4_BITS for m, spec in METHODS.items() if spec.applies_to(n)]


@pytest.mark.parametrize(("name", "method"), APPLICABLE)
@pytest.mark.parametrize("bits", [4, 8])
def test_every_method_follows_the_precision_of_s1(name, method, bits):
    model = _small(name)
    if method == "bnest":
        bnest_fp(model)
    table = [
        (p.weight_bits, p.input_bits, p.input_signed)
        for p in precision_table(prepare(model, method, bits))
    ]
    first, middle, last = S1_AT_4_BITS[name]
    if bits == 8:
        first, middle, last = ((8, 8, s[2]) for s in (first, middle, last))
    assert table[0] == first and table[-1] == last
    assert set(table[1:-1]) == {middle}
