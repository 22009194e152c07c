"""mmcv's compiled ops and the device: a det/seg run bound for CUDA with ops that cannot run there is refused in
one line naming the fix, before it starts (and a suite before any pretraining). This machine's mmcv is the
CPU-only build, so the check meets the real ``mmcv.ops``; only the visible GPU is supplied by the test."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mmcv.ops")
from dropbench.transfer import mm_ops  # noqa: E402
from dropbench.transfer.mm_ops import _compiled_cuda, cuda_ops_problem  # noqa: E402
from tests.test_suite import DET, _suite  # noqa: E402

COMPILED = _compiled_cuda()
CPU_ONLY = COMPILED == "not available"
CONSTRAINTS = "requirements/constraints.txt"
ROOT = Path(__file__).resolve().parents[1]


def test_ops_run_only_under_a_cuda_of_their_own_major_version():
    assert "built without CUDA" in cuda_ops_problem("not available", "13.0")
    assert "built for CUDA 12.1, torch runs CUDA 13.0" in cuda_ops_problem("12.1", "13.0")
    assert cuda_ops_problem("13.0", "13.0") is None and cuda_ops_problem("13.0", "13.1") is None


@pytest.mark.skipif(not CPU_ONLY, reason="this mmcv has CUDA ops")
def test_a_detection_run_on_a_gpu_with_cpu_only_mmcv_ops_is_refused_before_it_starts(
    cli, exports, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(mm_ops, "gpu_visible", lambda: True)
    code, _, err = cli(
        *(
            "transfer",
            "det",
            "--backbone",
            exports["vit_micro"],
            "--config",
            ROOT / "configs/detection/mask_rcnn_cpu.py",
        ),
        *("--work-dir", "work", "--results", "results"),
    )
    assert code == 2 and err.count("\n") == 1, err
    assert "error: mmcv: mmcv's ops were built without CUDA" in err and 'make install CUDA_ARCH="8.0 9.0"' in err
    assert not (tmp_path / "work").exists() and not (tmp_path / "results").exists()


@pytest.mark.skipif(not CPU_ONLY, reason="this mmcv has CUDA ops")
def test_a_suite_with_det_on_slurm_gpus_is_refused_before_any_pretraining(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _suite(tmp_path, transfers=[DET], slurm={"gpus": 1})
    code, out, err = cli("suite", path, "--executor", "slurm")
    assert code == 2 and err.count("\n") == 1, err
    assert "suite (det on GPUs)" in err and "built without CUDA" in err
    assert not (tmp_path / "runs").exists() and "submitted" not in out


def test_the_gpu_check_of_the_ops_compares_roi_align_and_nms_forward_and_backward():
    """benchmarks/gpu_check_ops.py at its smallest, the CPU against itself: it stays runnable without a GPU."""
    script = ROOT / "benchmarks" / "gpu_check_ops.py"
    result = subprocess.run([sys.executable, str(script), "--device", "cpu", "--small"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["roi_align", "roi_align", "nms"]
    assert all(line.endswith("ok") for line in lines[1:]), result.stdout


def test_a_cuda_build_of_mmcv_without_nvcc_is_refused_in_one_line(tmp_path):
    """make install CUDA_ARCH=... with a CUDA_HOME that holds no nvcc: one line naming the field, exit 2, and the
    installed mmcv untouched."""
    environment = {**os.environ, "CUDA_ARCH": "8.0", "CUDA_HOME": str(tmp_path)}
    result = subprocess.run(
        ["bash", str(ROOT / "requirements/install_mmcv.sh"), sys.executable, str(ROOT / CONSTRAINTS)],
        capture_output=True,
        text=True,
        env=environment,
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: CUDA_HOME: {tmp_path}/bin/nvcc not found"), result.stderr
    assert _compiled_cuda() == COMPILED
