"""The recipe's training settings per stage: LRs of Table S1, their scale, QAT's own keys."""

from __future__ import annotations

import pytest
from torch import nn

from repq.engine.optim import (
    Numerics,
    lr_factor,
    parameter_groups,
    run_lr,
    stage_numerics,
    stage_train,
)
from repq.quant import LSQQuantizer
from repq.vocab import Stage

TRAIN = {
    "epochs": 120,
    "lr": {"fp": 0.1, "quantized": 0.01, "merged_8bit": 0.001},
    "step_lr": {"8": 1e-4, "4": 1e-3},
    "weight_decay": 1e-4,
}


@pytest.mark.parametrize(
    ("stage", "lr"),
    [("fp", 0.1), ("fp-bnest", 0.1), ("qat-repq-8", 0.01), ("qat-merged-8", 0.001),
     ("qat-merged-4", 0.01), ("qat-bnest-4", 0.01)],
)  # fmt: skip
def test_each_stage_trains_with_its_table_s1_lr_times_the_scale(stage, lr):
    assert run_lr(TRAIN, Stage.parse(stage)) == pytest.approx(lr)
    assert run_lr({**TRAIN, "lr_scale": 0.25}, Stage.parse(stage)) == pytest.approx(lr / 4)


def test_lr_mult_scales_one_methods_weights_lr_and_not_the_steps():
    train = {**TRAIN, "lr_mult": {"repq": 3.0, "merged": 0.5}}
    assert run_lr(train, Stage.parse("qat-repq-4")) == pytest.approx(0.03)
    assert run_lr(train, Stage.parse("qat-merged-8")) == pytest.approx(0.0005)
    for unchanged, lr in (("qat-bnest-4", 0.01), ("fp", 0.1), ("fp-bnest", 0.1)):
        assert run_lr(train, Stage.parse(unchanged)) == pytest.approx(lr)
    model = nn.Sequential(nn.Conv2d(2, 3, 3))
    model.quant = LSQQuantizer(4, True, 3)
    groups = {g["name"]: g for g in parameter_groups(model, train, 0.03, 4)}
    assert groups["steps"]["lr"] == pytest.approx(1e-3)  # Table S1's steps' LR


def test_the_steps_have_their_own_scaled_lr_and_no_weight_decay():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3))
    model.quant = LSQQuantizer(4, True, 3)
    groups = {g["name"]: g for g in parameter_groups(model, {**TRAIN, "lr_scale": 0.5}, 0.1, 4)}
    assert groups["steps"]["lr"] == pytest.approx(5e-4) and groups["steps"]["weight_decay"] == 0
    assert groups["decay"]["weight_decay"] == 1e-4 and len(groups["decay"]["params"]) == 1
    assert len(groups["no_decay"]["params"]) == 3  # conv bias, BN weight and bias


def test_quantized_stages_take_the_qat_keys_and_ptq_does_not_train():
    train = {**TRAIN, "qat": {"epochs": 8, "clip_grad_norm": 1.0}}
    assert stage_train(train, Stage.parse("fp")) is train
    qat = stage_train(train, Stage.parse("qat-repq-4"))
    assert qat["epochs"] == 8 and qat["clip_grad_norm"] == 1.0 and qat["lr"] == TRAIN["lr"]
    assert stage_train(train, Stage.parse("ptq-4"))["epochs"] == 0
    assert stage_train(TRAIN, Stage.parse("qat-repq-4"))["epochs"] == 120  # S1: same epochs


def test_the_schedule_warms_up_linearly_then_follows_a_cosine():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, "cosine") == pytest.approx(0.0)
    assert lr_factor(55, 100, 0, "constant") == 1.0


def test_quantized_stages_compute_in_fp32_unless_train_qat_says_otherwise():
    bf16 = {**TRAIN, "amp": True}  # a recipe's FP setting does not reach QAT
    assert stage_numerics(bf16, Stage.parse("fp")) == Numerics(amp=True, tf32=True)
    for stage in ("qat-repq-8", "qat-merged-4", "ptq-8", "qat-bnest-4"):
        assert stage_numerics(bf16, Stage.parse(stage)) == Numerics(amp=False, tf32=False)
    opted_in = {**TRAIN, "qat": {"amp": True}}
    assert stage_numerics(opted_in, Stage.parse("qat-repq-4")) == Numerics(amp=True, tf32=False)
    assert stage_numerics({**TRAIN, "tf32": False}, Stage.parse("fp")).tf32 is False
