"""Bad input: one line naming the field, exit code 2, no run folder left behind."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dropbench.core.readers import load_mnist


def _pretrain_args(out: Path, **changes) -> list:
    args = dict(backbone="vit_micro", regime="early_dropout", recipe="cpu", data="mnist") | changes
    return ["pretrain", *[x for k, v in args.items() for x in (f"--{k}", v)], "--out", out]


def _image_folder(root: Path, classes=("0", "1"), val_classes=None, per_class=2) -> Path:
    images, _ = load_mnist("test")
    for split, names in (("train", classes), ("val", val_classes or classes)):
        for c, name in enumerate(names):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(images[c * per_class + i]).save(root / split / name / f"{i}.png")
    return root


def _assert_one_line_error(result, field: str, out: Path):
    code, stdout, stderr = result
    assert code == 2, stderr
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert field in stderr, stderr
    assert not out.exists(), "a refused run must not leave a folder"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (dict(backbone="vit_nano_does_not_exist"), "backbone"),
        (dict(regime="earlyy_dropout"), "regime"),
        (dict(recipe="no_such_recipe"), "recipe"),
        (dict(data="/nonexistent/imagenet"), "data"),
    ],
)
def test_unknown_names_and_paths(cli, tmp_path, changes, field):
    out = tmp_path / "run"
    _assert_one_line_error(cli(*_pretrain_args(out, **changes)), field, out)


def test_a_typo_in_an_override_suggests_the_key(cli, tmp_path):
    out = tmp_path / "run"
    result = cli(*_pretrain_args(out), "lrr=0.1")
    _assert_one_line_error(result, "lrr", out)
    assert "did you mean 'lr'" in result[2]


@pytest.mark.parametrize(("override", "field"), [("opt=adamww", "recipe.opt"), ("sched=cosin", "recipe.sched")])
def test_unknown_optimizer_or_scheduler_names(cli, tmp_path, override, field):
    out = tmp_path / "run"
    result = cli(*_pretrain_args(out), override)
    _assert_one_line_error(result, field, out)
    assert "did you mean" in result[2]


def test_a_negative_recovery_cadence(cli, tmp_path):
    out = tmp_path / "run"
    _assert_one_line_error(cli(*_pretrain_args(out), "recovery_every=-1"), "recipe.recovery_every", out)


@pytest.mark.parametrize(
    ("changes", "override", "field"),
    [({}, "compile=inductr", "recipe.compile"), (dict(data="synthetic", recipe="basic"), "val_subset=8", "recipe.aa")],
)
def test_an_unknown_compile_backend_and_synthetic_data_under_randaugment(cli, tmp_path, changes, override, field):
    out = tmp_path / "run"
    _assert_one_line_error(cli(*_pretrain_args(out, **changes), override), field, out)


def test_a_rate_outside_zero_one_in_a_regime_file(cli, tmp_path):
    regime = tmp_path / "bad.yaml"
    regime.write_text("dropout: {rate: 1.5, mode: standard}\n")
    out = tmp_path / "run"
    _assert_one_line_error(cli(*_pretrain_args(out, regime=regime)), "regime.dropout.rate", out)


def test_a_cutoff_beyond_the_reference_run_in_a_regime_file(cli, tmp_path):
    regime = tmp_path / "bad.yaml"
    regime.write_text("drop_path: {rate: 0.4, mode: late, cutoff_epoch: 400, reference_epochs: 300}\n")
    out = tmp_path / "run"
    _assert_one_line_error(cli(*_pretrain_args(out, regime=regime)), "regime.drop_path.cutoff_epoch", out)


def test_dropout_on_a_backbone_without_dropout_in_its_blocks(cli, tmp_path):
    out = tmp_path / "run"
    result = cli(*_pretrain_args(out, backbone="convnext_micro", regime="standard_dropout"), "train_subset=256")
    _assert_one_line_error(result, "dropout", out)
    assert "stochastic depth" in result[2]


def test_an_empty_data_folder(cli, tmp_path):
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "val").mkdir()
    out = tmp_path / "run"
    _assert_one_line_error(cli(*_pretrain_args(out, data=data)), "data", out)


def test_train_and_val_with_different_classes(cli, tmp_path):
    data = _image_folder(tmp_path / "data", classes=("0", "1"), val_classes=("0", "2"))
    out = tmp_path / "run"
    _assert_one_line_error(cli(*_pretrain_args(out, data=data)), "data", out)


def test_an_unreadable_image_is_named(cli, tmp_path):
    data = _image_folder(tmp_path / "data")
    broken = data / "train" / "1" / "broken.png"
    broken.write_bytes(np.random.default_rng(0).bytes(64))
    out = tmp_path / "run"
    result = cli(*_pretrain_args(out, data=data))
    _assert_one_line_error(result, "data", out)
    assert "broken.png" in result[2]


def test_sharding_into_an_existing_folder_or_with_no_images_per_shard(cli, tmp_path):
    data = _image_folder(tmp_path / "data")
    taken = tmp_path / "taken"
    taken.mkdir()
    code, _, err = cli("data", "shard", str(data), str(taken))
    assert code == 2 and err.startswith("error: out:") and err.count("\n") == 1, err
    code, _, err = cli("data", "shard", str(data), str(tmp_path / "shards"), "--shard-size", "0")
    assert code == 2 and "--shard-size" in err and not (tmp_path / "shards").exists(), err


@pytest.mark.parametrize(
    ("overrides", "field"),
    [(["workers=0", "train_subset=null", "val_subset=null"], "recipe.workers"), (["workers=1"], "recipe.train_subset")],
)
def test_shards_are_streamed_by_workers_without_subsets(cli, tmp_path, overrides, field):
    shards = tmp_path / "shards"
    assert cli("data", "shard", str(_image_folder(tmp_path / "data")), str(shards))[0] == 0
    out = tmp_path / "run"
    _assert_one_line_error(cli(*_pretrain_args(out, data=str(shards)), *overrides), field, out)


def test_resume_without_a_checkpoint_in_another_runs_folder(cli, tmp_path):
    """(``--resume`` of this run's own folder without a checkpoint starts it: tests/test_faults.py.)"""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"config_hash": "another"}')
    code, _, err = cli(*_pretrain_args(out), "--resume")
    assert code == 2 and err.startswith("error: resume: ") and "another run" in err and err.count("\n") == 1, err
    assert [p.name for p in out.iterdir()] == ["config.json"], "nothing of it is touched"


def test_an_existing_run_folder_is_not_overwritten(cli, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.csv").write_text("epoch\n")
    code, _, err = cli(*_pretrain_args(out))
    assert code == 2 and "--resume" in err and (out / "log.csv").read_text() == "epoch\n"


def test_an_unknown_cli_flag_is_one_line_with_exit_code_2(cli, tmp_path):
    code, _, err = cli("pretrain", "--backbon", "vit_micro")
    assert code == 2 and err.count("\n") == 1
