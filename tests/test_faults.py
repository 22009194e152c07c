"""The fault matrix: every stage (pretrain, cls, det, seg, eval, suite) against SIGKILL at a random point, a corrupt
checkpoint, a corrupt export, a full disk and a diverging lr. Each ends in an exact resume, or in one line with a
non-zero exit; nothing is recorded that the run did not measure, and no process is left. docs/development.md#faults
has the same matrix as the user sees it; the writes themselves (cut short by a full disk or a kill) are tested first.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from dropbench.core.errors import UserInputError
from dropbench.core.export import check_one_write, read_weights
from tests.conftest import kill_once_written

pytest.importorskip("mmdet")

ROOT = Path(__file__).resolve().parents[1]
TINY_PRETRAIN = ("epochs=3", "train_subset=256", "val_subset=64", "batch_size=64", "per_device_batch=64")
TINY_CLS = ("epochs=3", "warmup_epochs=0", "train_subset=256", "test_subset=100", "batch_size=32")
# 6 iterations, a checkpoint every 3.
TINY_DENSE = (
    "train_cfg.max_iters=6",
    "train_cfg.val_interval=6",
    "default_hooks.checkpoint.interval=3",
    "embedded_data.num_train=4",
    "embedded_data.num_val=2",
)
MIB = 1 << 20


# ------------------------------------------------------------------------------------------------ the writes


WRITERS = {  # each writes version k of its files; what a writer is asked to write is ``size`` large
    "checkpoint": """
        from dropbench.core.checkpoint import save_checkpoint
        write = lambda k: save_checkpoint(path, {"k": k, "w": torch.full((size,), float(k))})
    """,
    "export": """
        from dropbench.core.export import ExportSidecar, export_backbone
        def write(k):
            model = torch.nn.Linear(size, 1)
            torch.nn.init.constant_(model.weight, float(k))
            sidecar = ExportSidecar("vit_tiny_patch16_224", {}, 10, 32, f"b{k}", "r", "c", seed=0, config_hash="0" * 16)
            export_backbone(model, path, sidecar)
    """,
    "records": """
        from dropbench.core.identity import Measurement, RunIdentity
        def write(k):  # a run of its own each time (seed k), four records in one write
            identity = RunIdentity("b", "r", "c", k, "pretrain", "classification", "mnist", "from_scratch")
            metrics = {f"m{i}": float(k) for i in range(4)}
            measurement = Measurement(model="m", run_dir=str(path))
            identity.write_records(path, metrics, measurement, started="s", code_version="v")
    """,
}


def _read_checkpoint(path: Path) -> int:
    return torch.load(path, weights_only=True)["k"]


def _read_export(path: Path) -> int | None:
    """The export's version; None where a kill between its two renames left files of two writes, which every
    reader refuses (``check_one_write``)."""
    try:
        weight = read_weights(path)["weight"]
        check_one_write(path)
    except UserInputError as err:
        assert "are of two writes" in str(err), err
        return None
    sidecar = json.loads((path / "backbone.json").read_text())
    k = int(weight.flatten()[0])
    assert torch.all(weight == k) and sidecar["backbone"] == f"b{k}", "the weights and the sidecar of one write"
    return k


def _read_records(path: Path) -> int:
    """Every record whole; the newest run whose four records are all there."""
    records = [json.loads(p.read_text()) for p in (path / "records").glob("*.json")]
    seeds = [r["seed"] for r in records]
    assert all(r["value"] == r["seed"] for r in records)
    return max(seed for seed in seeds if seeds.count(seed) == 4)


READERS = {"checkpoint": _read_checkpoint, "export": _read_export, "records": _read_records}


def _writer_script(kind: str, path: Path, size: int, body: str) -> str:
    return "\n".join(
        [
            "import torch",
            "from pathlib import Path",
            f"path, size = Path({str(path)!r}), {size}",
            textwrap.dedent(WRITERS[kind]),
            textwrap.dedent(body),
        ]
    )


def _file_size_limit(limit: int | None) -> Callable[[], None]:
    """A child's ``preexec_fn``: no file it writes may grow past ``limit`` bytes (None: no limit)."""

    def limited() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limited


def _python(script: str, limit: int | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script], preexec_fn=_file_size_limit(limit), cwd=ROOT, **popen)


def _temp_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".*.tmp"))


def _files(folder: Path) -> dict[Path, bytes]:
    """Every file a reader sees (not the hidden locks and temp files)."""
    paths = (p for p in sorted(folder.rglob("*")) if p.is_file())
    return {p: p.read_bytes() for p in paths if not any(part.startswith(".") for part in p.relative_to(folder).parts)}


LIMITS = {"checkpoint": 200_000, "export": 200_000, "records": 200}  # bytes; each new file is larger


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_a_write_the_disk_has_no_room_for_is_one_line_and_leaves_the_file_as_it_was(tmp_path, kind):
    path = tmp_path / kind
    first = _python(_writer_script(kind, path, 1000, "write(1)"))
    assert first.wait() == 0
    before = _files(tmp_path)
    # A file-size limit is how a full disk looks to a writer: the write stops with EFBIG (as ENOSPC at a full disk).
    bigger = "from dropbench.core.errors import RunFailed\ntry:\n    write(2)\nexcept RunFailed as err:\n    print(err)"
    second = _python(_writer_script(kind, path, 400_000, bigger), limit=LIMITS[kind], stdout=subprocess.PIPE, text=True)
    out, _ = second.communicate()
    assert second.returncode == 0, "the failure is a RunFailed (one line), not a traceback"
    assert out.startswith("cannot write ") and "File too large" in out and out.count("\n") == 1, out
    assert _files(tmp_path) == before
    assert _temp_files(tmp_path) == []
    assert READERS[kind](path) == 1


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_a_write_killed_midway_leaves_a_whole_file_old_or_new(tmp_path, kind):
    loop = "k = 0\nwhile True:\n    k += 1\n    write(k)\n    print(k, flush=True)"
    rng = random.Random(kind)  # seeded: the same kill points on every run of the test
    for attempt in range(2):
        path = tmp_path / f"{kind}{attempt}"
        writer = _python(_writer_script(kind, path, 2_000_000, loop), stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip() == "1", "the first write ended"
        time.sleep(rng.uniform(0.0, 0.5))
        writer.send_signal(signal.SIGKILL)
        written = [int(line) for line in writer.communicate()[0].split()]
        last = written[-1] if written else 1
        version = READERS[kind](path)
        assert version in (last, last + 1) or (version is None and kind == "export"), (attempt, version, last)
    for temp in _temp_files(tmp_path):  # what a kill leaves: hidden, never read as a record, export or checkpoint
        assert temp.name.startswith(f".{temp.name.split('.')[1]}.") and temp.suffix == ".tmp"


# ------------------------------------------------------------------------------------------------ the stages


@dataclass(frozen=True)
class Stage:
    name: str
    # (cell folder, the export it reads or None, extra settings) → the dropbench arguments
    arguments: Callable[[Path, Path | None, tuple[str, ...]], list[str]]
    checkpoint: str | None = None  # the file a resume reads, under the cell folder
    diverging: tuple[str, ...] = ()  # settings whose lr diverges
    full_disk: int = MIB  # a file-size limit that its first large write (a checkpoint, a record) exceeds
    # A file-size limit caps the shared memory data-loader workers hand batches over in too (a full disk does not):
    # where a record is the first file over the limit, the workers stay in the main process.
    full_disk_settings: tuple[str, ...] = ()


def _pretrain(folder: Path, export: Path | None, extra: tuple[str, ...]) -> list[str]:
    return [
        *("pretrain", "--backbone", "vit_micro", "--regime", "no_dropout", "--recipe", "cpu", "--data", "mnist"),
        *("--out", str(folder / "work"), "--results", str(folder / "results"), *TINY_PRETRAIN, *extra),
    ]


def _cls(folder: Path, export: Path | None, extra: tuple[str, ...]) -> list[str]:
    return [
        *("transfer", "cls", "--backbone", str(export), "--dataset", "optdigits", "--protocol", "finetune"),
        *("--work-dir", str(folder / "work"), "--results", str(folder / "results"), *TINY_CLS, *extra),
    ]


def _dense(kind: str, config: str) -> Callable[[Path, Path | None, tuple[str, ...]], list[str]]:
    def arguments(folder: Path, export: Path | None, extra: tuple[str, ...]) -> list[str]:
        return [
            *("transfer", kind, "--backbone", str(export), "--config", str(ROOT / "configs" / config)),
            *("--work-dir", str(folder / "work"), "--results", str(folder / "results")),
            *("--cfg-options", *TINY_DENSE, *extra),
        ]

    return arguments


def _eval(folder: Path, export: Path | None, extra: tuple[str, ...]) -> list[str]:
    return ["eval", "--backbone", str(export), "--data", "mnist", "--results", str(folder / "results"), *extra]


def _suite(folder: Path, export: Path | None, extra: tuple[str, ...]) -> list[str]:
    """A pretraining and its linear probe; or, given an export, only the probe of that export."""
    overrides = dict(item.split("=", 1) for item in (*TINY_PRETRAIN, *extra))
    source = (
        {"exports": [str(export)]}
        if export is not None
        else {
            "backbones": ["vit_micro"],
            "regimes": ["no_dropout"],
            "pretrain": {
                "recipe": "cpu",
                "data": "mnist",
                "overrides": {k: yaml.safe_load(v) for k, v in overrides.items()},
            },
        }
    )
    suite = source | {
        "transfers": [
            {"kind": "cls", "dataset": "optdigits", "protocol": "linear", "overrides": {"linear_c_grid": [1.0]}}
        ],
        "output": {"runs": str(folder / "work"), "results": str(folder / "results")},
    }
    path = folder / "faults.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return ["suite", str(path)]


STAGES = {
    stage.name: stage
    for stage in (
        Stage("pretrain", _pretrain, "work/checkpoint.pt", ("lr=1e6",)),
        Stage("cls", _cls, "work/checkpoint.pt", ("lr=1e8",)),
        Stage(
            "det", _dense("det", "detection/mask_rcnn_cpu.py"), "work/iter_3.pth", ("optim_wrapper.optimizer.lr=1e12",)
        ),
        Stage(
            "seg", _dense("seg", "segmentation/upernet_cpu.py"), "work/iter_3.pth", ("optim_wrapper.optimizer.lr=1e12",)
        ),
        Stage("eval", _eval, full_disk=500, full_disk_settings=("--workers", "0")),
        Stage("suite", _suite, "work/vit_micro-no_dropout-seed0/pretrain/checkpoint.pt", ("lr=1e6",)),
    )
}
STAGE_WORDS = {"pretrain": "pretrain", "cls": "cls finetune", "det": "detection", "seg": "segmentation"}
TRANSFERS = ("cls", "det", "seg", "eval")  # the stages that read an export


def _export_for(stage: Stage, exports: dict[str, Path]) -> Path | None:
    return exports["vit_micro"] if stage.name in TRANSFERS else None


def _values(folder: Path) -> dict[tuple[str, str, str], float]:
    records = [json.loads(p.read_text()) for p in (folder / "results" / "records").glob("*.json")]
    return {(r["stage"], r["task"], r["metric"]): r["value"] for r in records}


def _nothing_recorded(folder: Path) -> bool:
    return not list((folder / "results").glob("records/*.json"))


def _start(arguments: list[str], cwd: Path, limit: int | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dropbench.cli", *arguments],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: what is left of it can be looked for
        preexec_fn=_file_size_limit(limit),
    )


def _group_gone(pgid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _one_error_line(err: str) -> str:
    """The error line a failed run ends with; there is no traceback before it."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err[-2000:]
    return lines[-1]


def _corrupt(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def in_cell(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the embedded det/seg configs make their data under the working folder
    return tmp_path


# ------------------------------------------------------------------------------------------------ the matrix


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STAGES))
def test_sigkill_at_a_random_point_then_a_resume_ends_as_a_run_that_went_through(cli, exports, in_cell, name):
    stage = STAGES[name]
    export = _export_for(stage, exports)
    started = time.perf_counter()
    code, _, err = cli(*stage.arguments(in_cell / "through", export, ()))
    took = time.perf_counter() - started
    assert code == 0, err

    killed = in_cell / "killed"
    arguments = stage.arguments(killed, export, ())
    process = _start(arguments, in_cell)
    while stage.checkpoint and not (killed / "work").exists() and process.poll() is None:  # it has begun
        time.sleep(0.05)
    delay = random.Random(name).uniform(0.0, took if stage.checkpoint else 5.0)  # seeded: the same point each time
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)  # the main process only: its workers must go by themselves
    process.communicate()
    assert _group_gone(process.pid), f"a process of the killed {name} run is left"
    through = _values(in_cell / "through")
    recorded = _values(killed)  # records are written last, all at once: a run killed after them may have them
    assert all(through[key] == value for key, value in recorded.items()), f"killed {delay:.1f} s in"

    resume = ["--resume"] if stage.checkpoint and name != "suite" else []  # as a requeued job does; a suite by itself
    code, _, err = cli(*arguments, *resume)
    assert code == 0, err
    assert _values(killed) == through != {}, f"killed {delay:.1f} s in"


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name, stage in STAGES.items() if stage.checkpoint])
def test_a_corrupt_checkpoint_is_refused_in_one_line_and_records_nothing(cli, exports, in_cell, name):
    stage = STAGES[name]
    arguments = stage.arguments(in_cell, _export_for(stage, exports), ())
    kill_once_written(arguments, in_cell / stage.checkpoint, in_cell)
    _corrupt(in_cell / stage.checkpoint)
    code, out, err = cli(*arguments, *([] if name == "suite" else ["--resume"]))
    if name == "suite":  # the run fails with that line, its transfer is skipped
        assert code == 1 and "1 failed, 1 skipped" in out and "checkpoint.pt" in out, out
    else:
        assert code == 2 and Path(stage.checkpoint).name in _one_error_line(err), err
    assert _nothing_recorded(in_cell)


@pytest.mark.parametrize("name", [*TRANSFERS, "suite"])
def test_a_corrupt_export_is_refused_in_one_line_and_records_nothing(cli, exports, in_cell, name):
    export = in_cell / "export"
    shutil.copytree(exports["vit_micro"], export)
    _corrupt(export / "backbone.safetensors")
    code, out, err = cli(*STAGES[name].arguments(in_cell, export, ()))
    if name == "suite":
        assert code == 1 and "1 failed" in out and "backbone.safetensors" in out, out
    else:
        assert code == 2 and "backbone.safetensors" in _one_error_line(err), err
    assert _nothing_recorded(in_cell)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_full_disk_is_one_line_and_a_non_zero_exit_and_records_nothing(exports, in_cell, name):
    stage = STAGES[name]
    arguments = stage.arguments(in_cell, _export_for(stage, exports), stage.full_disk_settings)
    process = _start(arguments, in_cell, limit=stage.full_disk)
    _, err = process.communicate()
    assert process.returncode == 1, err[-2000:]
    if name == "suite":
        log = (in_cell / "work" / "vit_micro-no_dropout-seed0" / "pretrain.log").read_text()
        line = _one_error_line(log)
    else:
        line = _one_error_line(err)
    assert line.startswith("error: cannot write ") and "File too large" in line, line
    assert _nothing_recorded(in_cell) and not list(in_cell.rglob("export/backbone.json"))
    assert _group_gone(process.pid)


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name, stage in STAGES.items() if stage.diverging])
def test_a_diverging_lr_stops_the_run_in_one_line_and_exports_and_records_nothing(cli, exports, in_cell, name):
    stage = STAGES[name]
    code, out, err = cli(*stage.arguments(in_cell, _export_for(stage, exports), stage.diverging))
    if name == "suite":
        assert code == 1 and "1 failed, 1 skipped" in out and "the training loss is " in out, out
    else:
        line = _one_error_line(err)
        assert code == 1 and line.startswith(f"error: {STAGE_WORDS[name]}: the training loss is "), err
        assert "(lr " in line and "last good checkpoint: " in line and "clip_grad" in line, line
    assert _nothing_recorded(in_cell) and not list(in_cell.rglob("export/backbone.json"))
