"""Classification transfer: fine-tuning and linear probing of a real export, through the ``dropbench`` CLI."""

import contextlib
import csv
import dataclasses
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from dropbench.cli import main
from dropbench.core.identity import Measurement, ResultRecord
from dropbench.core.loop import accuracy_metrics
from dropbench.core.models import BackboneConfig
from dropbench.core.readers import load_mnist
from dropbench.pretrain.config import Recipe, Regime
from dropbench.pretrain.train import pretrain
from dropbench.transfer.classification import _features_key, fit_linear_probe
from dropbench.transfer.cls_data import load_cls_config, load_cls_data

from .conftest import make_untrained_export

try:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits
except ImportError:
    load_digits = None
needs_sklearn = pytest.mark.skipif(
    load_digits is None, reason="needs scikit-learn (the dev extra: pip install -e '.[dev]')"
)

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def pretrained_export(tmp_path_factory) -> Path:
    """A real (short) MNIST pretraining of the micro ViT; its export is what gets transferred."""
    root = tmp_path_factory.mktemp("pretrained")
    recipe = Recipe.load(
        "cpu",
        dict(epochs=1, train_subset=1024, val_subset=128, batch_size=64, per_device_batch=64, warmup_epochs=0),
    )
    pretrain(
        BackboneConfig.load("vit_micro"), Regime.load("no_dropout"), recipe, "mnist", root / "run", results_dir=None
    )
    return root / "run" / "export"


@pytest.fixture(scope="module")
def untrained_export(tmp_path_factory) -> Path:
    """An untrained micro ViT export: enough for the checks that refuse bad input."""
    return make_untrained_export("vit_micro", tmp_path_factory.mktemp("untrained") / "export")


def _transfer_args(backbone: Path, dataset, protocol: str, work_dir: Path, results: Path, *overrides) -> list:
    return [
        "transfer",
        "cls",
        "--backbone",
        backbone,
        "--dataset",
        dataset,
        "--protocol",
        protocol,
        "--work-dir",
        work_dir,
        "--results",
        results,
        "--device",
        "cpu",
        *overrides,
    ]


def _records(results: Path) -> dict[str, dict]:
    return {r["metric"]: r for r in (json.loads(p.read_text()) for p in (results / "records").glob("*.json"))}


def _image_folder(root: Path, counts: dict[str, int], test_counts: dict[str, int] | None = None) -> Path:
    """Real MNIST digits as PNG files in ``train/<digit>/`` and ``test/<digit>/`` (different images in each)."""
    images, labels = load_mnist("test")
    for split, split_counts in (("train", counts), ("test", test_counts or counts)):
        for name, count in split_counts.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            of_digit = np.flatnonzero(labels == int(name))
            picks = of_digit[:count] if split == "train" else of_digit[-count:]
            for i, index in enumerate(picks):
                Image.fromarray(images[index]).save(folder / f"{i}.png")
    return root


# ---------------------------------------------------------------------------------------------------- linear probe

LINEAR_OVERRIDES = ["train_subset=2000", "test_subset=1000", "linear_c_grid=[0.01,0.1,1.0]"]


@pytest.fixture(scope="module")
def linear_run(pretrained_export, tmp_path_factory) -> tuple[int, str, Path, Path]:
    """The linear probe on UCI optdigits through ``dropbench transfer cls``, run once for the tests below."""
    root = tmp_path_factory.mktemp("linear")
    work_dir, results = root / "work", root / "results"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(
            [str(a) for a in _transfer_args(pretrained_export, "optdigits", "linear", work_dir, results)]
            + LINEAR_OVERRIDES
        )
    return code, stdout.getvalue(), work_dir, results


@pytest.mark.slow
def test_linear_probe_on_optdigits_writes_a_record_and_caches_features(linear_run):
    code, stdout, work_dir, results = linear_run
    assert code == 0
    records = _records(results)
    assert set(records) == {"top1", "chosen_c"}  # optdigits is balanced: no mean per-class record
    report = json.loads((work_dir / "linear_probe.json").read_text())
    assert records["chosen_c"]["value"] == report["chosen_c"] and records["chosen_c"]["unit"] == "C"
    record = records["top1"]
    assert set(record) == set(ResultRecord.__dataclass_fields__)
    assert (record["backbone"], record["model"], record["regime"], record["recipe"], record["seed"]) == (
        "vit_micro",
        "vit_tiny_patch16_224",
        "no_dropout",
        "cpu",
        0,
    )
    assert (record["stage"], record["task"], record["dataset"], record["protocol"], record["unit"]) == (
        "transfer",
        "classification",
        "optdigits",
        "linear",
        "%",
    )
    assert record["run_dir"] == str(work_dir.resolve())
    assert math.isfinite(record["value"]) and 20.0 < record["value"] <= 100.0  # chance is 10 %
    assert f"top1 {record['value']:.2f}%" in stdout

    features = load_file(work_dir / "features.safetensors")
    assert features["train_features"].shape == (2000, 64) and features["test_features"].shape == (1000, 64)
    assert torch.isfinite(features["train_features"]).all()
    report = json.loads((work_dir / "linear_probe.json").read_text())
    assert report["chosen_c"] in (0.01, 0.1, 1.0) and len(report["holdout_scores"]) == 3
    assert report["test"]["top1"] == pytest.approx(record["value"])


@pytest.mark.slow
@needs_sklearn
def test_the_probe_agrees_with_scikit_learn_on_the_cached_features(linear_run):
    _, _, work_dir, results = linear_run
    features = load_file(work_dir / "features.safetensors")
    chosen_c = json.loads((work_dir / "linear_probe.json").read_text())["chosen_c"]
    scaler = StandardScaler().fit(features["train_features"].numpy())
    with threadpool_limits(1):  # a few thousand rows: threads only contend on a busy 2-core machine
        reference = LogisticRegression(C=chosen_c, max_iter=5000, tol=1e-6).fit(
            scaler.transform(features["train_features"].numpy()), features["train_labels"].numpy()
        )
    predictions = reference.predict(scaler.transform(features["test_features"].numpy()))
    sklearn_top1 = 100.0 * float(np.mean(predictions == features["test_labels"].numpy()))
    assert _records(results)["top1"]["value"] == pytest.approx(sklearn_top1, abs=1.0)


@pytest.mark.slow
def test_a_second_probe_in_the_same_work_dir_reuses_the_cached_features(cli, linear_run, pretrained_export, tmp_path):
    _, _, work_dir, results = linear_run
    code, _, err = cli(*_transfer_args(pretrained_export, "optdigits", "linear", work_dir, tmp_path), *LINEAR_OVERRIDES)
    assert code == 0, err
    assert json.loads((work_dir / "linear_probe.json").read_text())["feature_extraction"]["cached"] is True
    assert _records(tmp_path)["top1"]["value"] == pytest.approx(_records(results)["top1"]["value"])


@pytest.mark.slow
def test_new_weights_in_the_same_work_dir_are_not_served_cached_features(cli, linear_run, pretrained_export, tmp_path):
    _, _, work_dir, _ = linear_run
    changed = tmp_path / "changed"
    shutil.copytree(pretrained_export, changed)
    weights = load_file(changed / "backbone.safetensors")
    torch.manual_seed(1)
    save_file(
        {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in weights.items()},
        changed / "backbone.safetensors",
    )
    code, _, err = cli(*_transfer_args(changed, "optdigits", "linear", work_dir, tmp_path / "r"), *LINEAR_OVERRIDES)
    assert code == 0, err
    assert json.loads((work_dir / "linear_probe.json").read_text())["feature_extraction"]["cached"] is False


def test_the_feature_cache_key_follows_the_fields_that_say_they_change_the_features(tmp_path):
    """A field counts in the cache key unless it says the features do not depend on it: a new field can make a
    cache miss, never serve stale features; a training setting (lr) keeps the cache, autocast (amp) does not."""
    export = make_untrained_export("vit_micro", tmp_path / "export")
    config = load_cls_config("optdigits", {})
    key = _features_key(export, config, 32)
    assert _features_key(export, dataclasses.replace(config, lr=0.5, epochs=3, seed=7), 32) == key
    for change in ({"amp": False}, {"crop_pct": 0.5}, {"train_subset": 100}):
        assert _features_key(export, dataclasses.replace(config, **change), 32) != key, change
    undeclared = {f.name for f in dataclasses.fields(config) if not f.metadata}
    assert undeclared <= set(config.feature_inputs()) & set(config.settings())
    assert {"name", "path", "seed", "install_hint"}.isdisjoint(config.settings())


@needs_sklearn
def test_the_torch_probe_solves_scikit_learns_problem_on_digit_pixels():
    digits = load_digits()
    x, y = digits.data[:1200], digits.target[:1200]
    x_test, y_test = digits.data[1200:], digits.target[1200:]
    probe = fit_linear_probe(torch.from_numpy(x), torch.from_numpy(y), 10, c=0.05, max_iter=2000)
    scaler = StandardScaler().fit(x)
    with threadpool_limits(1):
        reference = LogisticRegression(C=0.05, max_iter=5000, tol=1e-8).fit(scaler.transform(x), y)
    # The same strictly convex objective: the same weights, up to the solvers' tolerances.
    np.testing.assert_allclose(probe.weight.numpy(), reference.coef_.T, atol=2e-3)
    # sklearn leaves the intercepts free up to a shared constant; softmax ignores it.
    np.testing.assert_allclose(
        probe.bias.numpy() - probe.bias.numpy().mean(), reference.intercept_ - reference.intercept_.mean(), atol=2e-3
    )
    predictions = probe.predict(torch.from_numpy(x_test)).numpy()
    assert np.mean(predictions == reference.predict(scaler.transform(x_test))) > 0.99
    assert np.mean(predictions == y_test) > 0.85


def test_accuracy_metrics_average_the_recall_of_each_class():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    predictions = torch.tensor([0, 0, 0, 0, 0, 1, 0])
    metrics = accuracy_metrics(predictions, labels, num_classes=4)  # class 3 has no test image: not counted
    assert metrics["top1"] == pytest.approx(100 * 5 / 7)
    assert metrics["mean_per_class_accuracy"] == pytest.approx(100 * (1 + 0.5 + 0) / 3)


# ---------------------------------------------------------------------------------------------------- fine-tuning


@pytest.mark.slow
def test_finetuning_on_optdigits_logs_each_epoch_and_writes_a_record(cli, pretrained_export, tmp_path):
    work_dir, results = tmp_path / "work", tmp_path / "results"
    # A backbone pretrained for 16 updates learns slowly: 3 short epochs lift it clear of chance.
    overrides = ["epochs=3", "warmup_epochs=0", "train_subset=1024", "test_subset=600", "batch_size=32", "lr=2e-3"]
    code, stdout, err = cli(*_transfer_args(pretrained_export, "optdigits", "finetune", work_dir, results), *overrides)
    assert code == 0, err
    with (work_dir / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert all(math.isfinite(float(r[k])) for r in rows for k in ("train_loss", "test_loss", "test_top1", "lr"))
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    record = _records(results)["top1"]
    assert (record["stage"], record["protocol"], record["dataset"]) == ("transfer", "finetune", "optdigits")
    assert record["value"] == pytest.approx(float(rows[-1]["test_top1"]))
    assert record["value"] > 15.0  # chance is 10 %
    config = json.loads((work_dir / "config.json").read_text())
    assert config["config_hash"] == record["config_hash"] and config["dataset"]["epochs"] == 3

    # its calibration: the ECE recomputed by hand from the reliability diagram's bins (the measured half of the
    # 600 test images), before and after temperature scaling
    records = _records(results)
    assert {"ece", "nll", "brier", "ece_ts", "nll_ts", "brier_ts", "temperature"} <= set(records)
    assert records["ece"]["unit"] == "%" and records["nll"]["unit"] == "nats" and records["temperature"]["value"] > 0
    with (work_dir / "reliability.csv").open() as f:
        bins = list(csv.DictReader(f))
    for when, metric in (("before", "ece"), ("after", "ece_ts")):
        own = [b for b in bins if b["scaling"] == when and int(b["count"])]
        total = sum(int(b["count"]) for b in own)
        gap = sum(int(b["count"]) * abs(float(b["accuracy"]) - float(b["confidence"])) for b in own)
        assert total == 300 and records[metric]["value"] == pytest.approx(100 * gap / total, abs=1e-4)
    assert (work_dir / "reliability.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["swin_micro", "convnext_micro", "mixer_micro"])
def test_both_protocols_run_on_the_other_micro_families(cli, tmp_path, name):
    """Layer decay (timm's group_matcher), a new head, drop path and pooled pre-logits on every family."""
    export = make_untrained_export(name, tmp_path / "export")
    tiny = ["train_subset=64", "test_subset=32", "batch_size=32", "epochs=1", "warmup_epochs=0", "drop_path=0.1"]
    for protocol in ("finetune", "linear"):
        results = tmp_path / f"results-{protocol}"
        code, _, err = cli(*_transfer_args(export, "sklearn_digits", protocol, tmp_path / protocol, results), *tiny)
        assert code == 0, err
        record = _records(results)["top1"]
        assert record["backbone"] == name and math.isfinite(record["value"])
        if protocol == "finetune":
            log = list(csv.DictReader((tmp_path / protocol / "log.csv").open()))
            assert [int(row["update"]) for row in log] == [2], "64 images in batches of 32: two updates"
            assert float(log[-1]["test_top1"]) == pytest.approx(record["value"])
        else:
            probe = json.loads((tmp_path / protocol / "linear_probe.json").read_text())
            width = BackboneConfig.load(name).create_model(num_classes=10).num_features
            assert probe["feature_dim"] == width and probe["test_images"] == 32
            assert probe["test"]["top1"] == pytest.approx(record["value"])
            assert record["value"] > 20, "even untrained features separate digits far above chance (10 %)"


# ---------------------------------------------------------------------------------------------------- other data


@pytest.mark.slow
def test_an_imbalanced_image_folder_also_gets_mean_per_class_accuracy(cli, pretrained_export, tmp_path):
    data = _image_folder(tmp_path / "digits", {"0": 30, "1": 10, "7": 10}, {"0": 12, "1": 4, "7": 4})
    results = tmp_path / "results"
    code, _, err = cli(*_transfer_args(pretrained_export, data, "linear", tmp_path / "work", results))
    assert code == 0, err
    records = _records(results)
    assert set(records) == {"top1", "mean_per_class_accuracy", "chosen_c"}
    assert all(r["dataset"] == "digits" and math.isfinite(r["value"]) for r in records.values())
    report = json.loads((tmp_path / "work" / "linear_probe.json").read_text())
    assert report["selection_metric"] == "mean_per_class_accuracy"
    assert report["test_images"] == 20 and report["train_images"] == 50


@pytest.mark.slow
@pytest.mark.skipif(
    not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST is not in {FASHION_MNIST} (Debian: apt-get install dataset-fashion-mnist)",
)
def test_a_linear_probe_on_debians_fashion_mnist(cli, pretrained_export, tmp_path):
    overrides = ["train_subset=1500", "test_subset=500", "linear_c_grid=[0.1]"]
    code, _, err = cli(
        *_transfer_args(pretrained_export, "fashion_mnist", "linear", tmp_path / "work", tmp_path), *overrides
    )
    assert code == 0, err
    assert 20.0 < _records(tmp_path)["top1"]["value"] <= 100.0


@needs_sklearn
def test_the_embedded_digit_sets_load_with_their_real_sizes():
    optdigits = load_cls_data(load_cls_config("optdigits"))
    assert (len(optdigits.train), len(optdigits.test), optdigits.num_classes) == (3823, 1797, 10)
    digits = load_cls_data(load_cls_config("sklearn_digits"))
    assert (len(digits.train) + len(digits.test), digits.num_classes) == (1797, 10)
    assert abs(len(digits.test) - 0.2 * 1797) < 5
    assert np.bincount(digits.test_labels).min() >= 35  # stratified: every class in the test split
    again = load_cls_data(load_cls_config("sklearn_digits", {"seed": 3}))  # the split does not move with the seed
    assert np.array_equal(again.test_labels, digits.test_labels)
    assert not optdigits.imbalanced and not digits.imbalanced
    image, label = digits.train[0]
    assert image.mode == "RGB" and image.size == (8, 8) and 0 <= label < 10


# ---------------------------------------------------------------------------------------------------- bad input


def _assert_refused(result, field: str, work_dir: Path) -> str:
    code, _, stderr = result
    assert code == 2, stderr
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert field in stderr, stderr
    assert not work_dir.exists(), "a refused run must not leave a work folder"
    return stderr


def test_an_unknown_dataset_name_suggests_a_close_one(cli, untrained_export, tmp_path):
    work_dir = tmp_path / "work"
    err = _assert_refused(
        cli(*_transfer_args(untrained_export, "optdigit", "linear", work_dir, tmp_path)), "dataset", work_dir
    )
    assert "did you mean 'optdigits'" in err


@pytest.mark.parametrize("path_kind", ["missing", "empty"])
def test_a_torchvision_dataset_that_is_not_on_disk(cli, untrained_export, tmp_path, path_kind):
    root = tmp_path / "cifar"
    if path_kind == "empty":
        root.mkdir()
    work_dir = tmp_path / "work"
    result = cli(*_transfer_args(untrained_export, "cifar10", "finetune", work_dir, tmp_path), f"path={root}")
    assert "download=True" in _assert_refused(result, "dataset", work_dir)  # the config's install hint


def test_a_missing_fashion_mnist_folder_names_the_debian_package(cli, untrained_export, tmp_path):
    work_dir = tmp_path / "work"
    result = cli(*_transfer_args(untrained_export, "fashion_mnist", "linear", work_dir, tmp_path), f"path={tmp_path}")
    assert "dataset-fashion-mnist" in _assert_refused(result, "dataset", work_dir)


def test_class_folders_that_differ_between_train_and_test(cli, untrained_export, tmp_path):
    data = _image_folder(tmp_path / "data", {"0": 2, "1": 2}, {"0": 2, "2": 2})
    work_dir = tmp_path / "work"
    err = _assert_refused(
        cli(*_transfer_args(untrained_export, data, "linear", work_dir, tmp_path)), "dataset", work_dir
    )
    assert "differ" in err


def test_a_num_classes_that_does_not_match_the_data(cli, untrained_export, tmp_path):
    work_dir = tmp_path / "work"
    result = cli(*_transfer_args(untrained_export, "optdigits", "finetune", work_dir, tmp_path), "num_classes=7")
    assert "10 classes" in _assert_refused(result, "dataset.num_classes", work_dir)


def test_a_backbone_folder_without_an_export(cli, tmp_path):
    (tmp_path / "not_an_export").mkdir()
    work_dir = tmp_path / "work"
    result = cli(*_transfer_args(tmp_path / "not_an_export", "optdigits", "linear", work_dir, tmp_path))
    _assert_refused(result, "backbone", work_dir)


def test_a_typo_in_an_override_suggests_the_key(cli, untrained_export, tmp_path):
    work_dir = tmp_path / "work"
    result = cli(*_transfer_args(untrained_export, "optdigits", "finetune", work_dir, tmp_path), "epoch=3")
    assert "did you mean 'epochs'" in _assert_refused(result, "epoch", work_dir)


def test_a_run_whose_records_exist_is_skipped(cli, untrained_export, tmp_path):
    """The identity the run computes names the same records the table and the suite planner read."""
    from dropbench.core.export import read_sidecar
    from dropbench.transfer.classification import task_identity
    from dropbench.transfer.cls_data import load_cls_config

    config = load_cls_config("optdigits", {"epochs": 2})
    dataset, protocol, part = task_identity(config, "linear", {"epochs": 2})
    identity = (
        read_sidecar(untrained_export).pretraining_identity().transfer("classification", dataset, protocol, 0, part)
    )
    (existing,) = identity.write_records(
        tmp_path, {"top1": 12.5}, Measurement(model="m", run_dir=tmp_path), started="s", code_version="v"
    )
    work_dir = tmp_path / "work"
    code, out, err = cli(*_transfer_args(untrained_export, "optdigits", "linear", work_dir, tmp_path, "epochs=2"))
    assert code == 0 and "finished:" in out and existing.name in out, err
    assert not work_dir.exists() and json.loads(existing.read_text())["value"] == 12.5
