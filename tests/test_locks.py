"""One run, one process: real processes that meet on the same run folders run each run once, keep each other's
records and write only into their own logs; a run killed while holding its lock does not block the next."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dropbench.core.lock import RunLock, hold_run, lock_path

ROOT = Path(__file__).resolve().parents[1]
TINY_PRETRAIN = dict(epochs=2, train_subset=256, val_subset=64, batch_size=64, per_device_batch=64, warmup_epochs=0)


def _start(*arguments: str, cwd: Path) -> subprocess.Popen:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "dropbench.cli", *arguments]
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _records(results: Path) -> list[Path]:
    return sorted((results / "records").glob("*.json"))


def test_a_lock_names_its_holder_and_goes_with_a_killed_process(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from dropbench.core.lock import RunLock; lock = RunLock({str(folder)!r}); lock.take(); input()",
        ],
        stdin=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not lock_path(folder).is_file() or not lock_path(folder).read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        lock = RunLock(folder)
        assert not lock.try_take() and lock.holder().startswith(f"pid {holder.pid} on ")
        lock.release()
    finally:
        holder.kill()
        holder.wait()
    said = []
    with hold_run(folder, "the run", said.append):  # at once: the kernel released the killed holder's lock
        pass
    assert said == []


def test_a_forked_child_does_not_keep_the_run_lock(tmp_path):
    """A data loader worker forked during a run (and kept alive, as persistent workers are) does not hold the lock
    after its parent's run ended: the next run in the folder starts at once."""
    import multiprocessing

    folder = tmp_path / "run"
    with hold_run(folder, "the run"):
        child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
        child.start()
    try:
        lock, deadline = RunLock(folder), time.monotonic() + 10  # the child closes its copy just after the fork
        while not lock.try_take():
            assert time.monotonic() < deadline, "the forked child kept the lock"
            time.sleep(0.05)
        lock.release()
    finally:
        child.terminate()
        child.join()


@pytest.mark.slow
def test_two_suites_on_the_same_output_run_each_run_once(tmp_path):
    """The same suite started twice, 3 s apart, in one folder: every run executes once, in its own log, both
    suites end at 0 with their 8 records and nothing superseded."""
    suite = {
        "backbones": ["vit_micro"],
        "regimes": ["no_dropout", "early_dropout"],
        "seeds": [0],
        "pretrain": {"recipe": "cpu", "data": "mnist", "overrides": TINY_PRETRAIN},
        "transfers": [
            {"kind": "cls", "dataset": "optdigits", "protocol": "linear", "overrides": {"linear_c_grid": [1.0]}}
        ],
        "output": {"runs": "runs", "results": "results"},
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(suite))
    first = _start("suite", "s.yaml", "--jobs", "1", cwd=tmp_path)
    time.sleep(3)
    second = _start("suite", "s.yaml", "--jobs", "1", cwd=tmp_path)
    outputs = [process.communicate(timeout=900)[0] for process in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    assert "running elsewhere (pid " in outputs[1], outputs[1]

    records = _records(tmp_path / "results")
    # each pretraining records top-1 and training loss, each probe top-1 and its chosen C
    assert len(records) == 8 and not (tmp_path / "results" / "records" / "superseded").exists()
    logs = sorted((tmp_path / "runs").glob("*/*.log"))  # each run's log, beside its folder
    assert len(logs) == 4, logs
    for log in logs:
        starts = [line for line in log.read_text().splitlines() if line.startswith("=====")]
        assert len(starts) == 1, (log, starts)  # one attempt ran it; the waiting one wrote nothing there
    done = [line for output in outputs for line in output.splitlines() if line.endswith(" s") and ": done in " in line]
    assert len(done) == 4, outputs


@pytest.mark.slow
def test_two_detection_transfers_on_one_work_dir_run_it_once(exports, tmp_path):
    """The second command meets the first at work (60 iterations: longer than the second's start-up), waits for it,
    then finds its records: one run in the work dir, one set of records."""
    arguments = (
        *("transfer", "det", "--backbone", str(exports["vit_micro"]), "--work-dir", "work", "--results", "results"),
        *("--config", str(ROOT / "configs" / "detection" / "mask_rcnn_cpu.py"), "--cfg-options"),
        *(
            "train_cfg.max_iters=60",
            "train_cfg.val_interval=60",
            "embedded_data.num_train=8",
            "embedded_data.num_val=4",
        ),
    )
    first = _start(*arguments, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not (lock_path(tmp_path / "work").is_file() and lock_path(tmp_path / "work").read_text()):
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.05)
    second = _start(*arguments, cwd=tmp_path)
    outputs = [process.communicate(timeout=600)[0] for process in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    assert "is running elsewhere (pid " in outputs[1] and "finished:" in outputs[1], outputs[1]
    assert len(_records(tmp_path / "results")) == 6
    assert not (tmp_path / "results" / "records" / "superseded").exists()
    assert len(list((tmp_path / "work").glob("*/*.log"))) == 1, "one mmengine run in the work dir"
    assert json.loads(_records(tmp_path / "results")[0].read_text())["run_dir"] == str((tmp_path / "work").resolve())
