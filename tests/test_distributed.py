import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dropbench.core.export import load_exported_model

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_two_process_ddp_under_torchrun_trains_and_exports(tmp_path):
    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "dropbench.cli",
        "pretrain",
        "--backbone",
        "vit_micro",
        "--regime",
        "early_sd",
        "--recipe",
        "cpu",
        "--data",
        "mnist",
        "--out",
        str(run),
        "--results",
        str(tmp_path / "results"),
        "--device",
        "cpu",
        "epochs=2",
        "batch_size=64",
        "per_device_batch=32",
        "train_subset=1024",
        "val_subset=200",
        "warmup_epochs=0",
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (run / "log.csv").read_text().splitlines()
    assert len(lines) == 3  # header + 2 epochs
    model, sidecar = load_exported_model(run / "export")
    assert sidecar.regime == "early_sd"
    records = {
        json.loads(p.read_text())["metric"]: json.loads(p.read_text())
        for p in (tmp_path / "results" / "records").glob("*.json")
    }
    assert set(records) == {"top1", "train_loss"}, "only rank 0 writes the records"
    assert records["top1"]["value"] > 10 and 0 < records["train_loss"]["value"] < 2.4
    summaries = [line for line in result.stdout.splitlines() if "val_top1" in line and "→" in line]
    assert len(summaries) == 1 and "nan" not in summaries[0], "one summary, from rank 0"


DENSE_CONFIGS = {
    "det": ROOT / "configs" / "detection" / "mask_rcnn_cpu.py",
    "seg": ROOT / "configs" / "segmentation" / "upernet_cpu.py",
}


@pytest.mark.parametrize("kind", ["det", "seg"])
def test_a_dense_transfer_on_two_processes_writes_one_set_of_records_and_evaluates_every_image_once(
    kind, exports, tmp_path
):
    """``transfer det|seg --launcher pytorch`` under torchrun with 2 CPU processes (gloo): the model trains under
    DDP, the validation images are split between the processes and gathered to exactly the validation set (5
    images: the sampler pads the split to 6, the gathering drops the copy), and rank 0 alone writes the records."""
    pytest.importorskip("mmdet")
    from mmengine.config import Config

    seen = tmp_path / "evaluated.json"
    cfg = Config.fromfile(str(DENSE_CONFIGS[kind]))
    cfg.custom_imports = dict(imports=["tests.evaluated_images"], allow_failed_imports=False)
    cfg.val_evaluator = [cfg.val_evaluator, dict(type="EvaluatedImages", file=str(seen))]
    config = tmp_path / f"{kind}_evaluated.py"
    cfg.dump(str(config))
    results = tmp_path / "results"
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dropbench.cli"),
        *("transfer", kind, "--backbone", str(exports["vit_micro"]), "--config", str(config), "--launcher", "pytorch"),
        *("--work-dir", str(tmp_path / "work"), "--results", str(results), "--cfg-options"),
        *("train_cfg.max_iters=4", "train_cfg.val_interval=4", "embedded_data.num_train=8", "embedded_data.num_val=5"),
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Distributed training: True" in result.stdout + result.stderr

    evaluated = json.loads(seen.read_text())
    ranks, names = {rank for rank, _ in evaluated}, [name for _, name in evaluated]
    images = (p for p in (tmp_path / "data").rglob("*") if p.suffix in (".png", ".jpg"))
    val_images = sorted(p.name for p in images if "val" in p.parent.name and "annotations" not in p.parts)
    assert ranks == {0, 1} and len(val_images) == 5
    assert sorted(names) == val_images, "every validation image evaluated exactly once"

    records = [json.loads(p.read_text()) for p in (results / "records").glob("*.json")]
    metrics = {
        "det": {"box_AP", "box_AP50", "box_AP75", "mask_AP", "mask_AP50", "mask_AP75"},
        "seg": {"aAcc", "mAcc", "mIoU"},
    }
    assert sorted(r["metric"] for r in records) == sorted(metrics[kind])
    assert not (results / "records" / "superseded").exists(), "a second writer would have superseded rank 0's"
