"""A killed run leaves no process behind: its forked data-loader workers die with it, SIGKILL included."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        children = (task / "children").read_text().split() if (task / "children").exists() else []
        found += [int(child) for child in children]
    return found


def _descendants(pid: int) -> list[int]:
    """Its children, theirs, and so on (a suite's CPU runs are children of its starter)."""
    found = _children(pid)
    return found + [grandchild for child in found for grandchild in _descendants(child)]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.slow
def test_sigkill_on_a_pretraining_takes_its_loader_workers_with_it(tmp_path):
    command = [
        *(sys.executable, "-m", "dropbench.cli", "pretrain", "--backbone", "vit_micro", "--regime", "no_dropout"),
        *("--recipe", "cpu", "--data", "mnist", "--out", str(tmp_path / "run"), "--results", ""),
        *("epochs=3", "train_subset=4096", "val_subset=64", "workers=2", "warmup_epochs=0"),
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        workers: list[int] = []
        while time.monotonic() < deadline and len(workers) < 2 and process.poll() is None:
            time.sleep(0.2)
            workers = [pid for pid in _children(process.pid) if _alive(pid)]
        assert len(workers) >= 2, "the run started no loader workers"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 2  # torch's own watchdog takes up to 5 s, a blocked worker forever
        while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in workers), f"workers {workers} outlived their killed run"
    finally:
        process.kill()


@pytest.mark.slow
def test_sigterm_on_a_suite_stops_its_run_in_progress_and_the_next_suite_resumes_it(tmp_path):
    import yaml

    results = tmp_path / "results"
    suite = {
        "backbones": ["vit_micro"],
        "regimes": ["no_dropout"],
        "pretrain": {
            "recipe": "cpu",
            "data": "mnist",
            "overrides": {"epochs": 2, "train_subset": 2048, "val_subset": 64, "warmup_epochs": 0},
        },
        "output": {"runs": str(tmp_path / "runs"), "results": str(results)},
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    command = [sys.executable, "-m", "dropbench.cli", "suite", str(path)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    run: list[int] = []
    checkpoint = tmp_path / "runs" / "vit_micro-no_dropout-seed0" / "pretrain" / "checkpoint.pt"
    while time.monotonic() < deadline and not (run and checkpoint.is_file()) and process.poll() is None:
        time.sleep(0.2)
        run = [pid for pid in _descendants(process.pid) if _alive(pid)]
    assert run and checkpoint.is_file(), "the suite's pretraining did not reach its first checkpoint"
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in out, out
    assert not any(_alive(pid) for pid in run), f"the run in progress outlived its stopped suite: {run} {out}"
    assert not (results / "records").is_dir() or not list((results / "records").glob("*.json"))
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    log = (tmp_path / "runs" / "vit_micro-no_dropout-seed0" / "pretrain.log").read_text()
    assert "--resume" in log.split("=====")[-1].splitlines()[0] and list((results / "records").glob("*.json"))
