import json
import os
import subprocess
import sys

import pytest

from dropbench.core.export import load_exported_model

pytestmark = pytest.mark.slow


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
    assert sidecar["regime"] == "early_sd"
    records = list((tmp_path / "results" / "records").glob("*.json"))
    assert len(records) == 1, "only rank 0 writes the record"
    assert json.loads(records[0].read_text())["value"] > 10
    summaries = [line for line in result.stdout.splitlines() if "val_top1" in line and "→" in line]
    assert len(summaries) == 1 and "nan" not in summaries[0], "one summary, from rank 0"
