"""mmcv's compiled ops and the device: a det/seg run bound for CUDA with ops that cannot run there is refused in
one line naming the fix, before it starts (and a suite before any pretraining). This machine's mmcv is the
CPU-only build, so the check meets the real ``mmcv.ops``; only the visible GPU is supplied by the test."""

from pathlib import Path

import pytest

pytest.importorskip("mmcv.ops")
from dropbench.transfer import mm_ops  # noqa: E402
from dropbench.transfer.mm_ops import _compiled_cuda, cuda_ops_problem  # noqa: E402
from tests.test_suite import DET, _suite  # noqa: E402

CPU_ONLY = _compiled_cuda() == "not available"
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
    assert "error: mmcv: mmcv's ops were built without CUDA" in err and "FORCE_CUDA=1" in err
    assert not (tmp_path / "work").exists() and not (tmp_path / "results").exists()


@pytest.mark.skipif(not CPU_ONLY, reason="this mmcv has CUDA ops")
def test_a_suite_with_det_on_slurm_gpus_is_refused_before_any_pretraining(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _suite(tmp_path, transfers=[DET], slurm={"gpus": 1})
    code, out, err = cli("suite", path, "--executor", "slurm")
    assert code == 2 and err.count("\n") == 1, err
    assert "suite (det on GPUs)" in err and "built without CUDA" in err
    assert not (tmp_path / "runs").exists() and "submitted" not in out
