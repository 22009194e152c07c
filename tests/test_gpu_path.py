"""The GPU path, checked on the CPU: the GPU check script with its own defaults, gradient synchronisation of a
compiled DDP model, the CUDA RNG state a resume restores, mmcv's ops tried on the device, and the tests' own pinning
to the CPU, the draws' copies, how often the loss is read, DDP's buffers and gpu_check.sh's python3. (What needs a
GPU itself is benchmarks/gpu_smoke.py's.)"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dropbench.core.checkpoint import own_cuda_rng_state
from dropbench.core.loop import train_one_epoch

ROOT = Path(__file__).resolve().parents[1]


def test_the_shell_scripts_parse():
    for script in sorted([*ROOT.glob("benchmarks/*.sh"), *ROOT.glob(".ci/*")]):
        if script.is_file() and script.read_text().startswith("#!/usr/bin/env bash"):
            result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
            assert result.returncode == 0, f"{script}: {result.stderr}"


@pytest.mark.slow
def test_the_gpu_check_runs_every_arm_of_its_default_backbones_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.sh with its own backbones (ViT-T, whose dropout it schedules, and ConvNeXt-F, whose
    stochastic depth it schedules: ConvNeXt has no dropout in its blocks), at its smallest, on the CPU."""
    arguments = ["--device", "cpu", "--steps", "1", "--batch", "2", "--compile", "aot_eager"]
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), *arguments],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHON=sys.executable),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for backbone in ("vit_tiny", "convnext_femto"):
        rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith(f"| {backbone} ")]
        assert [(row[1].strip(), row[2].strip()) for row in rows] == [
            ("plain timm + torch", "eager"),
            ("dropbench pretrain", "eager"),
            ("plain timm + torch", "aot_eager"),
            ("dropbench pretrain", "aot_eager"),
        ], result.stdout
        assert all(float(row[3]) > 0 for row in rows)
        assert [row[7].strip() for row in rows[2:]] == ["1", "1"], "one graph each, though dropbench's rate changes"
    assert "mmcv ops check skipped: mmcv's ops were built without CUDA" in result.stdout, "it goes on to the ops"


@pytest.mark.slow
def test_the_gpu_smoke_script_passes_every_stage_as_a_cpu_dry_run():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_smoke.py"), "--device", "cpu", "--small"],
        capture_output=True,
        text=True,
    )
    verdicts = [line.split(" (")[0] for line in result.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert result.returncode == 0 and result.stdout.splitlines()[-1].startswith("all passed"), result.stdout
    assert verdicts == [
        "PASS versions",
        "PASS one graph",
        *(
            f"PASS pretrain {name} {backend}"
            for name in ("vit_micro", "convnext_micro")
            for backend in ("eager", "aot_eager")
        ),
        "PASS resume vit_micro",
        "PASS resume convnext_micro",
        "PASS gpu_check",
    ], result.stdout


@pytest.fixture
def one_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("compiled", [False, True])
def test_a_ddp_model_compiled_or_not_syncs_its_gradients_once_per_update(one_process_group, compiled):
    """2 updates of 4 micro-batches: 2 all-reduces, not 8 (torch.compile's wrapper is no DDP instance, so its
    ``no_sync`` is looked for inside)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 3))
    ddp = DistributedDataParallel(model)
    all_reduces = []

    def count(state, bucket):
        all_reduces.append(bucket.index())
        future = torch.futures.Future()
        future.set_result(bucket.buffer())
        return future

    ddp.register_comm_hook(None, count)
    train_model = torch.compile(ddp, backend="aot_eager") if compiled else ddp
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = [(torch.randn(5, 4), torch.randint(0, 3, (5,))) for _ in range(8)]
    result = train_one_epoch(
        train_model,
        loader,
        optimizer,
        CosineLRScheduler(optimizer, t_initial=10),
        nn.CrossEntropyLoss(),
        torch.device("cpu"),
        updates=2,
        start_update=0,
        accum_steps=4,
        progress=False,
    )
    assert result.update == 2 and len(all_reduces) == 2, all_reduces


def test_a_resume_restores_its_own_gpus_rng_state_from_a_checkpoint_of_more_gpus():
    """A checkpoint that saved the states of 8 visible GPUs, resumed on a node (or a Slurm task) that sees 1."""
    saved = [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]
    assert torch.equal(own_cuda_rng_state(saved, 0), saved[0])
    assert torch.equal(own_cuda_rng_state(saved, 3), saved[3])
    assert own_cuda_rng_state(saved[:2], 3) is None, "a GPU the saving node did not have: nothing to restore"
    assert torch.equal(own_cuda_rng_state(saved[5], 0), saved[5]), "a checkpoint of its own device's state"


def test_mmcvs_ops_are_tried_on_the_device_not_only_matched_by_cuda_version():
    pytest.importorskip("mmcv.ops")
    from dropbench.transfer.mm_ops import ops_problem_on

    assert ops_problem_on(torch.device("cpu")) is None
    problem = ops_problem_on(torch.device("meta"))  # a device without mmcv kernels, as a GPU mmcv was not built for
    assert problem.startswith("mmcv's NMS or RoIAlign fails on meta in torch.float32: "), problem


def test_the_tests_run_on_the_cpu_unless_asked_otherwise():
    if os.environ.get("DROPBENCH_TESTS_ON_GPU") == "1":
        pytest.skip("DROPBENCH_TESTS_ON_GPU=1 leaves the GPUs visible")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "" and not torch.cuda.is_available()


def test_a_resume_on_a_gpu_restores_only_its_own_devices_rng_state(monkeypatch):
    """set_rng_state's CUDA branch, with a stand-in for one visible GPU (device 3 of a Slurm task's node): from a
    checkpoint of 8 GPUs it restores state 3; from one of 2 it restores none (set_rng_state would raise there)."""
    from dropbench.core import checkpoint

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append(state))
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.full((16,), 9, dtype=torch.uint8))
    state = checkpoint.rng_state()
    assert torch.equal(state["cuda"], torch.full((16,), 9, dtype=torch.uint8)), "its own device's state, one tensor"
    saved = [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]
    checkpoint.set_rng_state(state | {"cuda": saved})
    assert len(restored) == 1 and torch.equal(restored[0], saved[3])
    checkpoint.set_rng_state(state | {"cuda": saved[:2]})
    assert len(restored) == 1, "a GPU the saving node did not have: nothing restored, no IndexError"


def test_the_cuda_ops_check_runs_the_ops_on_the_gpu_it_will_use_and_tries_fp16(monkeypatch):
    """With matching CUDA versions check_cuda_ops still runs NMS and RoIAlign on the device (here a stand-in GPU
    that cannot run them), and each dtype is tried in turn: fp16 fails on the CPU kernels where fp32 passes."""
    pytest.importorskip("mmcv.ops")
    from dropbench.core.errors import UserInputError
    from dropbench.transfer import mm_ops

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(mm_ops, "_compiled_cuda", lambda: "12.1")
    with pytest.raises(UserInputError, match=r"fails on cuda:0 in torch.float32"):
        mm_ops.check_cuda_ops(on_cuda=True)
    problem = mm_ops.ops_problem_on(torch.device("cpu"), (torch.float32, torch.float16))
    assert problem is not None and problem.startswith("mmcv's NMS or RoIAlign fails on cpu in torch.float16"), problem


def test_the_draws_reach_a_gpu_from_pinned_memory_without_waiting():
    """to_device's CUDA path, on a stand-in for a CPU tensor bound for a GPU: pinned, then copied non-blocking."""
    from pretrain.augment import to_device

    calls = []

    class Draws:
        device = torch.device("cpu")

        def pin_memory(self):
            calls.append("pin_memory")
            return self

        def to(self, device, non_blocking=False):
            calls.append(("to", str(device), non_blocking))
            return self

    to_device(Draws(), torch.device("cuda", 0))
    assert calls == ["pin_memory", ("to", "cuda:0", True)]
    on_cpu = torch.arange(3)
    assert to_device(on_cpu, torch.device("cpu")) is on_cpu


def test_the_loss_is_read_every_show_loss_every_updates_not_every_update(monkeypatch):
    """Reading the loss (``.item()``) waits for the GPU: on a terminal it is read every ``show_loss_every``
    updates, 2 times in 10 updates at 5, where reading it every update would be 10."""
    reads = []

    class ReadCounted(torch.Tensor):
        def item(self):
            reads.append(1)
            return super().item()

    def criterion(logits, targets):
        return nn.functional.cross_entropy(logits, targets).as_subclass(ReadCounted)

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = [(torch.randn(5, 4), torch.randint(0, 3, (5,))) for _ in range(10)]
    scheduler = CosineLRScheduler(optimizer, t_initial=10)
    device = torch.device("cpu")
    result = train_one_epoch(
        model, loader, optimizer, scheduler, criterion, device, updates=10, start_update=0, show_loss_every=5
    )
    assert result.update == 10 and len(reads) == 2, len(reads)


def test_ddp_broadcasts_buffers_only_for_a_model_with_batch_norm():
    from dropbench.core.models import BackboneConfig
    from dropbench.pretrain.train import broadcasts_buffers

    vit = BackboneConfig.load("vit_micro").create_model(10)
    assert not broadcasts_buffers(vit)
    assert broadcasts_buffers(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))


def test_gpu_check_sh_finds_python3_where_there_is_no_python(tmp_path):
    """Some images have only python3: with PYTHON unset and no ``python`` on PATH the script runs on python3."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # the venv's, by its own path
    (bin_dir / "python3").chmod(0o755)
    for tool in ("dirname",):
        (bin_dir / tool).symlink_to(subprocess.check_output(["which", tool], text=True).strip())
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"} | {"PATH": str(bin_dir)}
    result = subprocess.run(
        ["/bin/bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--help"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "GPU: none" in result.stdout and "usage: gpu_check.py" in result.stdout, result.stdout
