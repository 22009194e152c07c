"""Experiment trackers: TensorBoard, wandb (offline) and MLflow (a file store) from pretraining and from det/seg."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _mlflow_metrics(store: Path) -> dict[str, list[tuple[int, float]]]:
    """Every metric of the one run in the ``dropbench`` experiment of the file store, as (step, value)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store.resolve().as_uri())
    experiment = client.get_experiment_by_name("dropbench")
    (run,) = client.search_runs([experiment.experiment_id])
    history = {key: client.get_metric_history(run.info.run_id, key) for key in run.data.metrics}
    return {key: [(m.step, m.value) for m in values] for key, values in history.items()}


def _wandb_history(run_file: Path) -> list[dict]:
    """The history rows of an offline wandb run file: records in 32 KiB blocks after a 7-byte header, each with a
    7-byte header of its own (checksum, length, FULL/FIRST/MIDDLE/LAST), holding wandb's protobuf records."""
    from wandb.proto import wandb_internal_pb2

    data, block, offset, chunks, rows = run_file.read_bytes(), 32768, 7, b"", []
    while offset + 7 <= len(data):
        if block - offset % block < 7:  # a block's tail too short for a header is padding
            offset += block - offset % block
            continue
        length, kind = int.from_bytes(data[offset + 4 : offset + 6], "little"), data[offset + 6]
        chunks, offset = chunks + data[offset + 7 : offset + 7 + length], offset + 7 + length
        if kind in (1, 4):  # FULL or LAST: the record is complete
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
                )
    return rows


def test_pretraining_logs_the_same_scalars_to_tensorboard_wandb_and_mlflow(cli, tmp_path, monkeypatch, offline):
    monkeypatch.chdir(tmp_path)  # MLflow's store: ./mlruns
    run = tmp_path / "run"
    settings = dict(epochs=2, train_subset=256, val_subset=64, batch_size=64, per_device_batch=64, warmup_epochs=0)
    code, _, err = cli(
        *("pretrain", "--backbone", "vit_micro", "--regime", "early_dropout", "--recipe", "cpu", "--data", "mnist"),
        *("--out", run, "--results", tmp_path / "results", "log_every=1", "loggers=[tensorboard,wandb,mlflow]"),
        *(f"{key}={value}" for key, value in settings.items()),
    )
    assert code == 0, err
    with (run / "log.csv").open() as f:
        log = list(csv.DictReader(f))

    metrics = _mlflow_metrics(tmp_path / "mlruns")
    assert metrics["epoch/val_top1"] == [
        (1, pytest.approx(float(log[0]["val_top1"]))),
        (2, pytest.approx(float(log[1]["val_top1"]))),
    ]
    assert [step for step, _ in metrics["train/loss"]] == list(range(1, 9)), "4 updates an epoch, each logged"
    assert [value for _, value in metrics["train/dropout"]][-1] == 0.0, "early dropout has ended"

    (run_file,) = run.glob("wandb/offline-run-*/run-*.wandb")
    history = _wandb_history(run_file)
    epochs = [(row["epoch/step"], row["epoch/val_top1"]) for row in history if "epoch/val_top1" in row]
    assert epochs == [(int(row["epoch"]), pytest.approx(float(row["val_top1"]))) for row in log]
    assert [row["train/step"] for row in history if "train/loss" in row] == list(range(1, 9))
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_a_segmentation_transfer_logs_through_mmengines_backends(cli, exports, tmp_path, monkeypatch, offline):
    pytest.importorskip("mmseg")
    monkeypatch.chdir(tmp_path)
    work = tmp_path / "work"
    code, _, err = cli(
        *(
            "transfer",
            "seg",
            "--backbone",
            exports["vit_micro"],
            "--config",
            CONFIGS / "segmentation" / "upernet_cpu.py",
        ),
        *("--work-dir", work, "--results", tmp_path / "results", "--loggers", "mlflow", "wandb"),
        *("--cfg-options", "train_cfg.max_iters=10", "embedded_data.num_train=8", "embedded_data.num_val=4"),
    )
    assert code == 0, err
    metrics = _mlflow_metrics(tmp_path / "mlruns")
    with (tmp_path / "results" / "records").glob("*mIoU*.json").__next__().open() as f:
        miou = json.load(f)["value"]
    assert metrics["mIoU"][-1][1] == pytest.approx(miou, abs=0.01)
    assert "loss" in metrics and "lr" in metrics
    assert list(work.glob("**/wandb/offline-run-*"))


def test_an_unknown_or_missing_tracker_is_one_line(cli, tmp_path):
    code, _, err = cli(
        *("pretrain", "--backbone", "vit_micro", "--regime", "no_dropout", "--recipe", "cpu", "--data", "mnist"),
        *("--out", tmp_path / "run", "loggers=[tensorboard,neptune]"),
    )
    assert code == 2 and "recipe.loggers" in err and "neptune" in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_wandb_is_loaded_by_the_run_that_logs_to_it_not_by_every_import_of_timm():
    pytest.importorskip("wandb")
    script = """
import sys
import dropbench, timm
assert "wandb.sdk" not in sys.modules, "timm's import of wandb ran it"
import wandb
assert "wandb.sdk" not in sys.modules, "import wandb alone ran it"
from wandb.proto import wandb_internal_pb2  # a submodule first: the package runs before it
assert "wandb.sdk" in sys.modules, "a submodule was imported without its package"
assert callable(wandb.init)
import dropbench
dropbench._defer_import("no_such_module_here")
assert "no_such_module_here" not in sys.modules
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
