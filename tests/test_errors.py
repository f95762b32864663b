"""Every bad input gives an error that names the problem, and breaks nothing written."""

from __future__ import annotations

import json
import re
import shutil
import socket

import pytest
from conftest import RECIPES, as_args, cls_overrides, sr_overrides, tracking_overrides

from repq.cli import main
from repq.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


def _run(capsys, recipe: str, overrides: list[str], *args: str) -> str:
    code = main(["train", str(RECIPES / recipe), *args, *as_args(overrides)])
    err = capsys.readouterr().err
    assert code == 2, err
    return err


def _fp(capsys, tmp_path, recipe, overrides):
    return _run(capsys, recipe, overrides, "--stage", "fp", "--out", str(tmp_path / "out"))


@pytest.fixture
def cls_copy(mini_data, tmp_path):
    """A private copy of the classification data, free to break."""
    root = tmp_path / "mini"
    shutil.copytree(mini_data / "cls", root / "cls")
    return root


def test_missing_data_folder_is_named(capsys, tmp_path, mini_data):
    overrides = cls_overrides(mini_data) + [f"data.root={tmp_path / 'nowhere'}"]
    assert "nowhere/train does not exist" in _fp(capsys, tmp_path, "ac_resnet18.yaml", overrides)


def test_empty_class_is_named(capsys, tmp_path, cls_copy):
    for image in (cls_copy / "cls" / "val" / "coins").iterdir():
        image.unlink()
    err = _fp(capsys, tmp_path, "ac_resnet18.yaml", cls_overrides(cls_copy))
    assert "empty class 'coins'" in err and "val/coins" in err


def test_unreadable_image_is_named(capsys, tmp_path, cls_copy):
    bad = sorted((cls_copy / "cls" / "train" / "moon").iterdir())[3]
    bad.write_bytes(b"not a png at all")
    err = _fp(capsys, tmp_path, "ac_resnet18.yaml", cls_overrides(cls_copy))
    assert f"unreadable image {bad}" in err


def test_evaluation_data_leaves_the_training_set_alone(cls_copy):
    """An evaluation job builds and checks only the validation set: a broken training
    image fails a training job's start, not an evaluation's."""
    from repq.config import load_config
    from repq.engine.tasks import make_task
    from repq.errors import DataError

    bad = sorted((cls_copy / "cls" / "train" / "moon").iterdir())[3]
    bad.write_bytes(b"not a png at all")
    overrides = [*cls_overrides(cls_copy), "data.verify_images=true"]
    config = load_config(RECIPES / "ac_resnet18.yaml", overrides)
    assert make_task(config, train=False).primary == "top1"
    with pytest.raises(DataError, match="unreadable image"):
        make_task(config)


def test_wrong_number_of_classes_is_named(capsys, tmp_path, mini_data):
    overrides = cls_overrides(mini_data) + ["model.kwargs.num_classes=10"]
    err = _fp(capsys, tmp_path, "ac_resnet18.yaml", overrides)
    assert "model.kwargs.num_classes is 10" in err and "12 classes" in err


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("train.epoch=3", "'epoch' was unexpected"),
        ("train.epochs=many", "train.epochs: 'many' is not of type 'integer'"),
        ("train.optimizer=lamb", "train.optimizer: 'lamb' is not one of"),
        (
            "model.name=vgg",
            "model.name: 'vgg' fits none of the alternatives: 'vgg' is not "
            "one of ['repvgg_a0', 'repvgg_b0', 'ac_resnet18', 'orepa_resnet18', 'resnet18', "
            "'ecbsr']; or 'vgg' does not match '^timm/",
        ),
        ("train.lr.fp=-1", "train.lr.fp: -1 is less than or equal to the minimum of 0"),
        # JSON Schema counts 64.0 as an integer; the DataLoader then raised ValueError
        ("train.batch_size=64.0", "train.batch_size: 64.0 is not of type 'integer'"),
        ("train.epochs=1e0", "train.epochs: 1.0 is not of type 'integer'"),
    ],
)
def test_wrong_config_names_the_key(capsys, tmp_path, mini_data, override, named):
    err = _fp(capsys, tmp_path, "ecbsr.yaml", sr_overrides(mini_data) + [override])
    assert "invalid configuration" in err and named in err


def test_malformed_override_is_named(capsys, tmp_path, mini_data):
    assert "train.epochs" in _fp(capsys, tmp_path, "ecbsr.yaml", ["train.epochs"])


def _one_line(err: str) -> str:
    """The error of a command: exactly one line, no traceback (MLflow's own INFO lines
    when a job opens a new store aside)."""
    lines = [line for line in err.splitlines() if not re.match(r"[\d/]+ [\d:]+ INFO ", line)]
    assert len(lines) == 1 and lines[0].startswith("repq "), err
    return lines[0]


@pytest.mark.parametrize(
    ("override", "line"),
    [
        (
            "train.epochs=[1,",
            "override 'train.epochs=[1,': the value is not valid YAML (expected the node "
            "content, but found '<stream end>' at line 1, column 4)",
        ),
        (
            "model.kwargs.bogus=1",
            "model.kwargs.bogus: ecbsr takes no argument 'bogus' (it takes m, c, scale, "
            "colors, with_idt)",
        ),
    ],
)
def test_a_bad_override_value_is_one_line(capsys, tmp_path, mini_data, override, line):
    """Once tracebacks: yaml's ParserError, and the model's TypeError."""
    err = _fp(capsys, tmp_path, "ecbsr.yaml", sr_overrides(mini_data) + [override])
    assert _one_line(err) == f"repq train: error: {line}"


def test_a_recipe_that_is_not_yaml_is_one_line_with_the_position(capsys, tmp_path):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("model:\n  name: ecbsr\n train: [\n")
    err = _one_line(_run(capsys, str(recipe), [], "--stage", "fp", "--out", str(tmp_path / "o")))
    assert err == (
        f"repq train: error: config file {recipe} is not valid YAML: expected <block end>, "
        "but found '<block mapping start>' at line 3, column 2"
    )


def test_an_out_folder_under_a_file_is_named(capsys, tmp_path, mini_data):
    """Once ``NotADirectoryError`` from the tracking journal."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    overrides = sr_overrides(mini_data) + tracking_overrides(tmp_path)
    err = _run(capsys, "ecbsr.yaml", overrides, "--stage", "fp", "--out", str(blocker / "out"))
    assert _one_line(err) == (
        f"repq train: error: cannot write the folder {blocker / 'out'}: Not a directory"
    )


def test_an_unreadable_image_found_by_a_worker_is_one_line(capsys, tmp_path, cls_copy):
    """Images not checked at start-up are read in DataLoader workers, whose error torch
    re-raises with the worker's traceback in its text: the command shows its cause."""
    bad = sorted((cls_copy / "cls" / "train" / "moon").iterdir())[3]
    bad.write_bytes(b"not a png at all")
    overrides = [*cls_overrides(cls_copy), "data.workers=2", "data.verify_images=false"]
    err = _one_line(_fp(capsys, tmp_path, "ac_resnet18.yaml", overrides))
    assert err.startswith(f"repq train: error: unreadable image {bad}")


def _trained(tmp_path, overrides) -> dict:
    assert (
        main(
            ["train", str(RECIPES / "ecbsr.yaml"), "--stage", "fp", "--out", str(tmp_path / "fp")]
            + as_args(overrides)
        )
        == 0
    )
    return json.loads((tmp_path / "fp" / "metrics.json").read_text())


def _qat(capsys, overrides, init, tmp_path, method="repq"):
    args = ["--stage", f"qat-{method}-4", "--init", str(init)]
    return _run(capsys, "ecbsr.yaml", overrides, *args, "--out", str(tmp_path / "qat"))


def test_bad_checkpoints_are_named(capsys, tmp_path, mini_data):
    overrides = sr_overrides(mini_data, epochs=1) + tracking_overrides(tmp_path)
    _trained(tmp_path, overrides)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes((tmp_path / "fp" / "model.pt").read_bytes()[:200])
    assert f"checkpoint {corrupt} is corrupt" in _qat(capsys, overrides, corrupt, tmp_path)
    missing = tmp_path / "missing.pt"
    assert f"checkpoint {missing} does not exist" in _qat(capsys, overrides, missing, tmp_path)
    deploy = tmp_path / "fp" / "deploy.pt"
    assert "holds a 'deploy' checkpoint" in _qat(capsys, overrides, deploy, tmp_path)
    fp = tmp_path / "fp" / "model.pt"
    assert "starts from a 'fp-bnest' checkpoint" in _qat(capsys, overrides, fp, tmp_path, "bnest")
    other = overrides + ["model.kwargs.c=12"]
    err = _one_line(_qat(capsys, other, fp, tmp_path))  # it was 21.5 KB of keys
    assert f"checkpoint {fp} does not fit this model: shape " in err and " more" in err
    assert len(err) < 500


def test_corrupt_resume_checkpoint_is_named(capsys, tmp_path, mini_data):
    overrides = sr_overrides(mini_data, epochs=1) + tracking_overrides(tmp_path)
    resume = tmp_path / "out" / "resume" / "last.pt"
    resume.parent.mkdir(parents=True)
    resume.write_bytes(b"\x00" * 64)
    assert f"checkpoint {resume} is corrupt" in _fp(capsys, tmp_path, "ecbsr.yaml", overrides)


def test_nan_loss_stops_the_job_and_keeps_earlier_outputs(capsys, tmp_path, mini_data):
    overrides = sr_overrides(mini_data, epochs=1) + tracking_overrides(tmp_path)
    before = _trained(tmp_path, overrides)
    saved = (tmp_path / "fp" / "model.pt").read_bytes()
    exploding = overrides + ["train.lr.fp=1.0e+30", "train.log_every=1"]
    args = ["--stage", "fp", "--out", str(tmp_path / "fp")]
    err = _run(capsys, "ecbsr.yaml", exploding, *args)
    assert "ecbsr/fp: the training loss became" in err and "lower the LR" in err
    assert (tmp_path / "fp" / "model.pt").read_bytes() == saved
    assert json.loads((tmp_path / "fp" / "metrics.json").read_text()) == before
    assert load_checkpoint(tmp_path / "fp" / "model.pt", "model")["stage"] == "fp"


def test_unreachable_tracking_server_fails_at_start_up(capsys, tmp_path, mini_data):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    overrides = sr_overrides(mini_data) + [f"tracking.uri={uri}"]
    err = _fp(capsys, tmp_path, "ecbsr.yaml", overrides)
    assert f"MLflow tracking server {uri} is unreachable" in err
    assert not (tmp_path / "out" / "resume").exists()


def test_qat_needs_its_init(capsys, tmp_path, mini_data):
    args = ["--stage", "qat-repq-4", "--out", str(tmp_path)]
    assert "--init" in _run(capsys, "ecbsr.yaml", sr_overrides(mini_data), *args)


def test_a_test_image_too_small_to_score_is_named(capsys, tmp_path, mini_data):
    """SSIM's 11x11 window inside the border needs 15x15 at x2: a 5x5 image is named at
    start-up instead of ending the evaluation in scikit-image's traceback."""
    from PIL import Image

    tests = tmp_path / "mini_a"
    shutil.copytree(mini_data / "sr" / "test" / "mini_a", tests)
    Image.new("RGB", (5, 5), (40, 90, 200)).save(tests / "tiny.png")
    overrides = sr_overrides(mini_data) + [f"data.test={{mini_a: {tests}}}"]
    err = _fp(capsys, tmp_path, "ecbsr.yaml", overrides)
    assert f"{tests / 'tiny.png'} (5x5) is too small to score at x2" in err
    assert "15x15" in err and "Traceback" not in err
