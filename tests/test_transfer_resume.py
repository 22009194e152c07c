"""Every transfer resumes: a run killed (SIGKILL) after a checkpoint and continued with ``--resume`` ends with the
records, and the weights, of one that ran through; checkpoints are read weights-only."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import kill_once_written

pytest.importorskip("mmdet")

ROOT = Path(__file__).resolve().parents[1]
DENSE_CONFIGS = {
    "det": ROOT / "configs" / "detection" / "mask_rcnn_cpu.py",
    "seg": ROOT / "configs" / "segmentation" / "upernet_cpu.py",
}
# 12 iterations, a checkpoint every 6: the killed run leaves iter_6.pth and the resumed one trains 7..12.
DENSE_OPTIONS = (
    "train_cfg.max_iters=12",
    "train_cfg.val_interval=12",
    "default_hooks.checkpoint.interval=6",
    "embedded_data.num_train=8",
    "embedded_data.num_val=4",
)
# Mixup (numpy's RNG), drop path (torch's) and random erasing: every RNG a fine-tuning draws from.
CLS_OVERRIDES = (
    "epochs=3",
    "warmup_epochs=0",
    "train_subset=512",
    "test_subset=100",
    "batch_size=32",
    "mixup=0.8",
    "drop_path=0.1",
    "reprob=0.25",
)


def _dense(kind: str, export: Path, work_dir: Path, results: Path, *extra: str) -> list[str]:
    return [
        *("transfer", kind, "--backbone", str(export), "--config", str(DENSE_CONFIGS[kind])),
        *("--work-dir", str(work_dir), "--results", str(results), *extra, "--cfg-options", *DENSE_OPTIONS),
    ]


def _cls(export: Path, work_dir: Path, results: Path, *extra: str) -> list[str]:
    return [
        *("transfer", "cls", "--backbone", str(export), "--dataset", "optdigits", "--protocol", "finetune"),
        *("--work-dir", str(work_dir), "--results", str(results), *extra, *CLS_OVERRIDES),
    ]


def _values(results: Path) -> dict[str, float]:
    records = [json.loads(p.read_text()) for p in (results / "records").glob("*.json")]
    return {record["metric"]: record["value"] for record in records}


def _payload_checkpoint(path: Path, marker: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"meta": Payload(), "state_dict": {}}, path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["det", "seg"])
def test_a_dense_transfer_killed_after_a_checkpoint_resumes_to_the_records_of_one_that_ran_through(
    cli, exports, tmp_path, monkeypatch, kind
):
    monkeypatch.chdir(tmp_path)  # the embedded configs make their data under the working folder
    export = exports["vit_micro"]
    code, _, err = cli(*_dense(kind, export, tmp_path / "through", tmp_path / "through_results"))
    assert code == 0, err

    work_dir, results = tmp_path / "killed", tmp_path / "results"
    kill_once_written(_dense(kind, export, work_dir, results), work_dir / "iter_6.pth", tmp_path)
    assert not (results / "records").exists()
    code, out, err = cli(*_dense(kind, export, work_dir, results, "--resume"))
    assert code == 0, err
    assert f"resuming from {work_dir / 'iter_6.pth'}" in out
    assert "running elsewhere" not in out, "the killed run's lock went with it"
    log = max(work_dir.glob("*/*.log")).read_text()
    assert "resumed epoch: 0, iter: 6" in log and "Iter(train) [ 1/12]" not in log, "it went on from iteration 6"

    assert _values(results) == _values(tmp_path / "through_results") != {}
    through, resumed = (torch.load(d / "iter_12.pth", weights_only=True) for d in (tmp_path / "through", work_dir))
    assert through["state_dict"].keys() == resumed["state_dict"].keys()
    assert all(torch.equal(through["state_dict"][k], resumed["state_dict"][k]) for k in through["state_dict"])
    assert sorted(p.name for p in work_dir.glob("*.pth")) == ["iter_12.pth", "iter_6.pth"], "the last two are kept"


@pytest.mark.slow
def test_a_fine_tuning_killed_after_an_epoch_resumes_to_the_records_of_one_that_ran_through(cli, exports, tmp_path):
    export = exports["vit_micro"]
    code, _, err = cli(*_cls(export, tmp_path / "through", tmp_path / "through_results"))
    assert code == 0, err

    work_dir, results = tmp_path / "killed", tmp_path / "results"
    kill_once_written(_cls(export, work_dir, results), work_dir / "checkpoint.pt", tmp_path)
    code, out, err = cli(*_cls(export, work_dir, results, "--resume"))
    assert code == 0, err
    assert f"resumed from {work_dir / 'checkpoint.pt'} after epoch" in out

    def epochs(folder: Path) -> list[list[str]]:  # every column but the timings
        rows = [line.split(",") for line in (folder / "log.csv").read_text().splitlines()]
        return [row[:7] for row in rows]

    assert epochs(work_dir) == epochs(tmp_path / "through") and len(epochs(work_dir)) == 4
    assert _values(results) == _values(tmp_path / "through_results") != {}


@pytest.mark.slow
def test_resume_refuses_another_runs_checkpoints_and_a_swapped_in_payload(cli, exports, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    export, work_dir, marker = exports["vit_micro"], tmp_path / "work", tmp_path / "payload_ran"
    code, _, err = cli(*_dense("det", export, work_dir, tmp_path / "results"))
    assert code == 0, err

    code, _, err = cli(*_dense("det", export, work_dir, tmp_path / "results", "--resume", "--seed", "1"))
    assert code == 2 and err.count("\n") == 1 and "--resume" in err and "tseed0" in err and "tseed1" in err, err

    fresh_results = tmp_path / "fresh"  # not the first run's results folder: its records make a run a no-op
    _payload_checkpoint(work_dir / "iter_12.pth", marker)
    code, _, err = cli(*_dense("det", export, work_dir, fresh_results, "--resume"))
    assert code == 2 and err.count("\n") == 1 and "iter_12.pth" in err and "system" in err, err
    assert not marker.exists() and not (fresh_results / "records").exists()

    cls_dir = tmp_path / "cls"
    code, _, err = cli(*_cls(export, cls_dir, tmp_path / "cls_results"))
    assert code == 0, err
    _payload_checkpoint(cls_dir / "checkpoint.pt", marker)
    code, _, err = cli(*_cls(export, cls_dir, tmp_path / "cls_again", "--resume"))
    assert code == 2 and err.count("\n") == 1 and "checkpoint.pt" in err and "system" in err, err
    assert not marker.exists()


def test_mmengine_checkpoint_content_is_stored_as_plain_values_and_rebuilt(tmp_path):
    """The message hub's HistoryBuffers and numpy values survive a weights-only round trip exactly."""
    from mmengine.logging import MessageHub

    from dropbench.transfer import mm_checkpoints

    hub = MessageHub.get_instance("plain-checkpoint-test")
    for value in (0.5, 0.25, 1e-7):
        hub.update_scalar("train/loss", value)
    hub.update_info("eta", np.float64(12.5))
    checkpoint = {"message_hub": hub.state_dict(), "meta": {"iter": np.int64(6)}}
    mm_checkpoints.PlainCheckpoints().before_save_checkpoint(None, checkpoint)
    torch.save(checkpoint, tmp_path / "c.pth")
    loaded = torch.load(tmp_path / "c.pth", weights_only=True)  # no class allowed
    mm_checkpoints.PlainCheckpoints().after_load_checkpoint(None, loaded)
    restored = MessageHub.get_instance("plain-checkpoint-test-restored")
    restored.load_state_dict(loaded["message_hub"])
    logs, counts = restored.get_scalar("train/loss").data
    assert logs.tolist() == [0.5, 0.25, 1e-7] and counts.tolist() == [1, 1, 1] and logs.dtype == np.float64
    assert restored.get_info("eta") == 12.5 and loaded["meta"]["iter"] == 6


def test_the_checkpoint_to_resume_is_the_newest_whole_one(tmp_path):
    from dropbench.transfer.mm_checkpoints import latest_checkpoint

    assert latest_checkpoint(tmp_path) is None
    for step in (6, 12):
        (tmp_path / f"iter_{step}.pth").write_bytes(b"x")
    (tmp_path / ".iter_18.pth.abc.tmp").write_bytes(b"half")  # a save a kill interrupted
    assert latest_checkpoint(tmp_path) == tmp_path / "iter_12.pth"
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_6.pth"))
    assert latest_checkpoint(tmp_path) == tmp_path / "iter_6.pth"
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_0.pth"))  # names one that is gone
    assert latest_checkpoint(tmp_path) == tmp_path / "iter_12.pth"
