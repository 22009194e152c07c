import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dropbench.core.export import load_exported_model
from dropbench.core.identity import ResultRecord
from dropbench.core.models import BackboneConfig
from dropbench.core.readers import load_mnist
from dropbench.pretrain.config import Recipe, Regime
from dropbench.pretrain.shards import write_shards
from dropbench.pretrain.train import CHECKPOINT_FILE, load_checkpoint, pretrain

pytestmark = pytest.mark.slow

# About a second per epoch on 2 cores; mixup and EMA on, so their RNG and state must resume too.
SMALL = dict(
    epochs=4,
    batch_size=64,
    per_device_batch=32,
    train_subset=3072,
    val_subset=256,
    warmup_epochs=1,
    mixup=0.2,
    model_ema=True,
    model_ema_decay=0.9,
    lr=3.0e-3,
)
SMALL_ARGS = [f"{k}={v}" for k, v in SMALL.items()]


def _read_log(run_dir: Path) -> list[dict]:
    with (run_dir / "log.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pretrain")
    pretrain(
        BackboneConfig.load("vit_micro"),
        Regime.load("early_dropout"),
        Recipe.load("cpu", SMALL),
        "mnist",
        root / "run",
        results_dir=root / "results",
    )
    return root / "run"


def test_short_mnist_pretraining_lowers_the_loss_and_learns(finished_run):
    rows = _read_log(finished_run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < losses[0]
    assert float(rows[-1]["val_top1"]) > 30.0  # chance is 10 %
    # early dropout 0.1 → 0 at epoch 50 of 300, scaled to epoch 1 of 4: on (mean 0.05) in epoch 1, then off
    assert float(rows[0]["dropout"]) == pytest.approx(0.05)
    assert all(float(r["dropout"]) == 0 for r in rows[1:])
    assert list((finished_run / "tensorboard").glob("events.out.tfevents.*"))


def test_the_run_records_its_top1_and_its_final_training_loss_with_dropout_off(finished_run):
    paths = (finished_run.parent / "results" / "records").glob("*.json")
    records = {record["metric"]: record for record in (json.loads(p.read_text()) for p in paths)}
    assert set(records) == {"top1", "train_loss"}
    top1, loss = records["top1"], records["train_loss"]
    assert set(top1) == set(ResultRecord.__dataclass_fields__)
    assert top1["regime"] == "early_dropout" and top1["unit"] == "%" and loss["unit"] == "nats"
    assert top1["value"] == pytest.approx(float(_read_log(finished_run)[-1]["val_top1"]))
    # the export in eval mode, on the run's 3,072 training images through the evaluation transform, no smoothing
    model, _ = load_exported_model(finished_run / "export")
    assert loss["value"] == pytest.approx(_eval_loss(model.eval(), *load_mnist("train"), SMALL["train_subset"]))
    assert loss["value"] < float(_read_log(finished_run)[-1]["train_loss"]), "no smoothing, no mixup, no dropout"


def _eval_loss(model, images, labels, count: int) -> float:
    from dropbench.core.readers import ArrayImageDataset
    from dropbench.core.transforms import build_transform

    transform = build_transform(Recipe.load("cpu"), 32, is_training=False)
    data = ArrayImageDataset(images[:count], labels[:count], transform=transform)
    batch = torch.stack([data[i][0] for i in range(count)])
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(model(batch), torch.tensor(labels[:count], dtype=torch.long)).item()


def test_export_reloads_in_timm_with_identical_outputs(finished_run):
    checkpoint = load_checkpoint(finished_run / CHECKPOINT_FILE)
    reference = BackboneConfig.load("vit_micro").create_model(num_classes=10).eval()
    reference.load_state_dict(checkpoint["model"])
    exported, sidecar = load_exported_model(finished_run / "export")
    exported.eval()
    assert sidecar.regime == "early_dropout" and sidecar.epochs == 4
    assert all(
        isinstance(v, torch.Tensor) for v in load_file(finished_run / "export" / "backbone.safetensors").values()
    )
    images = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(exported(images), reference(images))


def _pretrain_args(
    out: Path, results: Path, settings: dict, regime: str = "early_dropout", data: str = "mnist"
) -> list[str]:
    """``dropbench pretrain`` of the micro ViT (on MNIST) with the cpu recipe and ``settings`` on top."""
    return [
        *("pretrain", "--backbone", "vit_micro", "--regime", regime, "--recipe", "cpu", "--data", str(data)),
        *("--out", str(out), "--results", str(results), *(f"{k}={v}" for k, v in settings.items())),
    ]


@pytest.fixture(scope="module")
def mnist_shards(tmp_path_factory) -> Path:
    """SMALL's 3,072 training and 256 validation MNIST images as a folder, then as shards of 500 images."""
    root = tmp_path_factory.mktemp("shards")
    images, labels = load_mnist("train")
    for split, indices in (("train", range(3072)), ("val", range(3072, 3328))):
        for index in indices:
            folder = root / "folder" / split / str(labels[index])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[index]).save(folder / f"{index}.png")
    write_shards(root / "folder", root / "shards", shard_size=500)
    return root / "shards"


def _kill_at_the_first_checkpoint(arguments: list[str], run: Path) -> dict:
    """Start ``dropbench arguments`` in a process of its own, SIGKILL it as soon as its first checkpoint is on disk;
    returns the checkpoint it left. The same thread count as this process, so that the killed run and the runs made
    here in-process (the uninterrupted one, the resume) reduce in the same order."""
    env = os.environ | {"OMP_NUM_THREADS": str(torch.get_num_threads())}
    command = [sys.executable, "-m", "dropbench.cli", *arguments]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 300
    while not (run / CHECKPOINT_FILE).exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return load_checkpoint(run / CHECKPOINT_FILE)


def _same_weights(expected_run: Path, actual_run: Path) -> None:
    expected = load_file(expected_run / "export" / "backbone.safetensors")
    actual = load_file(actual_run / "export" / "backbone.safetensors")
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_resume_after_an_interruption_ends_with_the_weights_of_an_uninterrupted_run(cli, finished_run, tmp_path):
    run = tmp_path / "run"
    arguments = _pretrain_args(run, tmp_path / "results", SMALL)
    checkpoint = _kill_at_the_first_checkpoint(arguments, run)  # mid-epoch 2: the epoch-1 checkpoint survives
    assert checkpoint["epoch"] == 1 and "within_epoch" not in checkpoint
    assert not (run / "export").exists()

    code, _, err = cli(*arguments, "--resume")
    assert code == 0, err
    _same_weights(finished_run, run)
    assert [r["epoch"] for r in _read_log(run)] == ["1", "2", "3", "4"]


@pytest.mark.parametrize(
    "path",
    [
        "batched",  # images in memory, cropped on the device from torch's generator
        "per-image workers",  # RandAugment per image in 2 loader workers, seeded per image
        "shards",  # a WebDataset stream through timm's reader in 2 workers, seeded per epoch and worker
    ],
)
def test_a_run_killed_mid_epoch_resumes_at_the_next_batch_with_identical_weights(
    cli, finished_run, tmp_path, path, request
):
    data = request.getfixturevalue("mnist_shards") if path == "shards" else "mnist"
    if path == "batched":
        settings, uninterrupted = SMALL, finished_run
    else:
        settings = SMALL | {"epochs": 2, "aa": "rand-m9-mstd0.5-inc1", "workers": 2}
        if path == "shards":
            settings |= {"train_subset": "null", "val_subset": "null"}
        uninterrupted = tmp_path / "uninterrupted"
        code, _, err = cli(*_pretrain_args(uninterrupted, tmp_path / "results-uninterrupted", settings, data=data))
        assert code == 0, err
    run = tmp_path / "run"
    arguments = _pretrain_args(run, tmp_path / "results", settings | {"recovery_every": 5}, data=data)
    checkpoint = _kill_at_the_first_checkpoint(arguments, run)
    assert checkpoint["epoch"] == 0 and checkpoint["within_epoch"]["updates"] % 5 == 0
    assert 0 < checkpoint["within_epoch"]["updates"] < 48  # 3072 images, 64 per update: 48 updates an epoch

    code, _, err = cli(*arguments, "--resume")
    assert code == 0, err
    _same_weights(uninterrupted, run)
    expected_log, log = _read_log(uninterrupted), _read_log(run)
    assert [r["epoch"] for r in log] == [r["epoch"] for r in expected_log]
    for expected_row, row in zip(expected_log, log, strict=True):
        assert float(row["train_loss"]) == pytest.approx(float(expected_row["train_loss"]), rel=1e-12)
        assert (row["val_top1"], row["dropout"]) == (expected_row["val_top1"], expected_row["dropout"])


def test_resuming_with_another_config_names_the_field(cli, finished_run, tmp_path):
    code, _, err = cli(
        "pretrain",
        "--backbone",
        "vit_micro",
        "--regime",
        "early_dropout",
        "--recipe",
        "cpu",
        "--data",
        "mnist",
        "--out",
        finished_run,
        "--results",
        tmp_path,
        "--resume",
        *SMALL_ARGS,
        "lr=0.01",
    )
    assert code == 2
    assert err.count("\n") == 1 and "recipe.lr" in err


TINY = dict(epochs=1, train_subset=256, val_subset=64, batch_size=64, per_device_batch=64, warmup_epochs=0)


def _tiny_args(out: Path, results: Path, **changes) -> list[str]:
    return _pretrain_args(out, results, TINY | changes, regime="no_dropout")


def test_a_finished_run_is_skipped_and_force_reruns_it_superseding_its_records(cli, tmp_path):
    results = tmp_path / "results"
    assert cli(*_tiny_args(tmp_path / "run", results))[0] == 0
    (record,) = (results / "records").glob("*top1.json")
    first = json.loads(record.read_text())

    code, out, _ = cli(*_tiny_args(tmp_path / "run", results))
    assert code == 0 and "finished:" in out and "--force" in out
    assert json.loads(record.read_text()) == first, "a finished run is not run again"

    code, out, err = cli(*_tiny_args(tmp_path / "run", results), "--force")
    assert code == 0, err
    assert json.loads(record.read_text())["started"] >= first["started"]
    (superseded,) = (results / "records" / "superseded").glob("*top1.*.json")
    assert json.loads(superseded.read_text()) == first
    assert len(list(tmp_path.glob("run.superseded-*"))) == 1, "the earlier run folder is kept aside"


def test_the_demos_and_a_suites_records_are_shown_apart(cli, tmp_path):
    """Two experiments that share backbone, regime, recipe name and seed but not their settings (as the demo and the
    embedded suite do): one results tree, two labelled rows, nothing averaged."""
    results = tmp_path / "results"
    assert cli(*_tiny_args(tmp_path / "demo", results / "demo"))[0] == 0
    assert cli(*_tiny_args(tmp_path / "suite", results / "suites" / "embedded", epochs=2))[0] == 0
    code, out, err = cli("compare", "--results", results, "--format", "csv")
    assert code == 0, err
    table = [row for row in csv.DictReader(out.splitlines()) if row["metric"] == "top1"]
    assert len(table) == 2 and {row["n"] for row in table} == {"1"}
    recipes = sorted(row["recipe"] for row in table)
    assert recipes[0].startswith("cpu·epochs=1 ") and recipes[1].startswith("cpu·epochs=2 ")
    values = sorted(float(row["mean"]) for row in table)
    records = sorted(json.loads(p.read_text())["value"] for p in results.rglob("records/*top1.json"))
    assert values == pytest.approx(records)


def test_random_init_exports_the_untrained_initialisation_with_a_record(cli, tmp_path):
    results = tmp_path / "results"
    args = _tiny_args(tmp_path / "run", results)
    args[args.index("no_dropout")] = "random_init"
    assert cli(*args)[0] == 0
    torch.manual_seed(0)  # the recipe's seed: the same initialisation
    expected = BackboneConfig.load("vit_micro").create_model(num_classes=10, dropout=0.0, drop_path=0.0)
    exported = load_file(tmp_path / "run" / "export" / "backbone.safetensors")
    assert all(torch.equal(exported[name], tensor) for name, tensor in expected.state_dict().items())
    (record,) = (results / "records").glob("*top1.json")
    record = json.loads(record.read_text())
    assert record["regime"] == "random_init" and 0 <= record["value"] <= 30  # chance is 10 %
    assert [row["epoch"] for row in _read_log(tmp_path / "run")] == ["0"]


def test_a_compiled_step_is_compiled_once_while_the_drop_rates_change_every_iteration(tmp_path):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    backbone, regime = BackboneConfig.load("vit_micro"), Regime.load("early_dropout")
    recipe = Recipe.load("cpu", TINY | {"epochs": 3, "compile": "aot_eager"})
    pretrain(backbone, regime, recipe, "mnist", tmp_path / "run", results_dir=tmp_path / "results")
    rates = [float(row["dropout"]) for row in _read_log(tmp_path / "run")]
    assert rates[0] > 0 and rates[-1] == 0, "a rate that changes every iteration of the first epoch, then 0"
    assert counters["stats"]["unique_graphs"] == 1


def test_a_held_out_validation_split_is_the_last_training_images_and_the_loss_is_measured_with_dropout_off(
    cli, tmp_path
):
    """``val_split=holdout``: validation on the last ``val_subset`` training images, which the run does not train
    on; the training loss of a run with dropout 0.5 is the eval-mode loss of its export."""
    args = _pretrain_args(tmp_path / "run", tmp_path / "results", TINY | {"val_split": "holdout"}, "standard_dropout")
    code, out, err = cli(*args, "dropout.rate=0.5")
    assert code == 0, err
    model, _ = load_exported_model(tmp_path / "run" / "export")
    model.eval()
    images, labels = load_mnist("train")
    held = TINY["val_subset"]
    from dropbench.core.readers import ArrayImageDataset
    from dropbench.core.transforms import build_transform

    transform = build_transform(Recipe.load("cpu"), 32, is_training=False)
    held_out = ArrayImageDataset(images[-held:], labels[-held:], transform=transform)
    with torch.no_grad():
        logits = model(torch.stack([held_out[i][0] for i in range(held)]))
    accuracy = 100.0 * (logits.argmax(1).numpy() == labels[-held:]).mean()
    assert float(_read_log(tmp_path / "run")[-1]["val_top1"]) == pytest.approx(accuracy)
    (loss,) = (json.loads(p.read_text()) for p in (tmp_path / "results" / "records").glob("*train_loss.json"))
    assert loss["value"] == pytest.approx(_eval_loss(model, images, labels, TINY["train_subset"]), rel=1e-5)
    assert "with dropout off" in out


@pytest.mark.parametrize(
    ("data", "settings", "field"),
    [
        ("mnist", {"val_split": "holdout", "train_subset": 55_000, "val_subset": 6_000}, "recipe.train_subset"),
        ("synthetic", {"val_split": "holdout"}, "recipe.val_split"),
        ("mnist", {"val_split": "train"}, "recipe.val_split"),
    ],
)
def test_a_held_out_split_that_overlaps_the_training_images_or_has_no_source_is_refused(
    cli, tmp_path, data, settings, field
):
    args = _pretrain_args(tmp_path / "run", tmp_path / "results", TINY | settings, "no_dropout", data=data)
    code, _, err = cli(*args)
    assert code == 2 and field in err and err.count("\n") == 1, err
    assert not (tmp_path / "results").exists() and not list((tmp_path / "run").glob("*"))
