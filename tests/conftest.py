import importlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

# The tests' exact-resume and reference-value asserts hold bit for bit on the CPU; on a GPU (TF32, cuDNN's
# autotuner) they would not. So they run on the CPU on a GPU node too, before CUDA is first asked for; GPU checks are
# benchmarks/gpu_smoke.py's. DROPBENCH_TESTS_ON_GPU=1 leaves the GPUs visible.
if os.environ.get("DROPBENCH_TESTS_ON_GPU") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
# Under pytest-xdist (make test) each worker gets its share of the cores, for itself and the runs it starts.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)
else:
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))
torch.set_num_threads(_THREADS)

MICRO_BACKBONES = ["vit_micro", "swin_micro", "convnext_micro", "mixer_micro"]
# The longest modules, longest first (seconds in `make test`, 2 cores, 2026-12-08): make test hands modules to its
# workers in collection order (--no-loadscope-reorder), so these start first and the short ones fill the end; in
# pytest-xdist's own order (most tests first) one worker ran on alone for the last 35 s.
LONGEST_MODULES = (
    "test_faults.py",  # 386
    "test_suite.py",  # 232
    "test_gpu_path.py",  # 220
    "test_pretrain.py",  # 210
    "test_import.py",  # 126
    "test_transfer_resume.py",  # 97
    "test_distributed.py",  # 93
    "test_starter.py",  # 86
    "test_locks.py",  # 81
    "test_over_time.py",  # 73
    "test_detection.py",  # 66
    "test_diagnostics.py",  # 48
    "test_orphans.py",  # 46
    "test_controller.py",  # 42
)
assert all((Path(__file__).parent / name).is_file() for name in LONGEST_MODULES), "LONGEST_MODULES names a module gone"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest modules first, then the rest by their number of tests, each module's tests in their own order."""
    count = Counter(item.path.name for item in items)

    def rank(item: pytest.Item) -> tuple[int, int]:
        name = item.path.name
        return (LONGEST_MODULES.index(name) if name in LONGEST_MODULES else len(LONGEST_MODULES), -count[name])

    items.sort(key=rank)  # stable: a module's tests keep their order


@pytest.fixture(autouse=True, scope="session")
def _stack_out_of_the_collectors_way():
    """The stack the tests run on, imported once and frozen out of the cyclic collector, as a suite's starter
    freezes it (``suite.starter``): mmengine's datasets collect twice as they load, 0.4-0.5 s each with torch, timm
    and mm* in view, and a module's objects are never garbage."""
    from dropbench.suite.local import RUN_IMPORTS
    from dropbench.suite.starter import STACK, freeze_imported

    for name in (*STACK, *(module for modules in RUN_IMPORTS.values() for module in modules)):
        try:
            importlib.import_module(name)
        except ImportError:  # mm* not installed: the tests that need it are skipped, saying so
            pass
    freeze_imported()


@pytest.fixture(autouse=True, scope="session")
def _messages_on_stdout():
    """The package's messages on stdout, as the command line prints them, whichever test runs first."""
    from dropbench.core.log import log_to_stdout

    log_to_stdout()


@pytest.fixture
def cli(capsys):
    """Run the real ``dropbench`` entry point in-process; returns (exit code, stdout, stderr)."""
    from dropbench.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse errors
            code = exc.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture(scope="session")
def exports(tmp_path_factory) -> dict[str, Path]:
    """A real (one-epoch, small) pretraining export per micro family, shared by the transfer tests."""
    from dropbench.core.models import BackboneConfig
    from dropbench.pretrain.config import Recipe, Regime
    from dropbench.pretrain.train import pretrain

    tiny = dict(epochs=1, train_subset=256, val_subset=64, batch_size=64, per_device_batch=64, warmup_epochs=0)
    root = tmp_path_factory.mktemp("exports")
    made = {}
    for name in MICRO_BACKBONES:
        pretrain(
            BackboneConfig.load(name),
            Regime.load("no_dropout"),
            Recipe.load("cpu", tiny),
            "mnist",
            root / name,
            results_dir=None,
        )
        made[name] = root / name / "export"
    return made


def make_untrained_export(name: str, folder: Path, regime: str = "no_dropout", classes: int = 10) -> Path:
    """A freshly initialised backbone (a micro config or any timm name) with a ``classes``-way head, in the export
    format."""
    from dropbench.core.export import ExportSidecar, export_backbone
    from dropbench.core.models import BackboneConfig

    backbone = BackboneConfig.load(name)
    sidecar = ExportSidecar(
        backbone.model, backbone.kwargs, classes, backbone.input_size, name, regime, "cpu", seed=0,
        config_hash="0" * 16,
    )  # fmt: skip
    torch.manual_seed(0)
    return export_backbone(backbone.create_model(classes), folder, sidecar)


def kill_once_written(arguments: list[str], checkpoint: Path, cwd: Path) -> None:
    """Run ``dropbench arguments`` in a process of its own and SIGKILL it as soon as ``checkpoint`` exists."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dropbench.cli", *arguments],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it was killed"
    assert checkpoint.exists()
