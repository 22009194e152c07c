"""The suite's starter: a run forked from it is the process its command would have started, and it leaves nothing
behind."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dropbench.suite.starter import Starter, suite_starter

ROOT = Path(__file__).resolve().parents[1]
COMMAND = [sys.executable, "-m", "dropbench.cli"]
LONG_RUN = [
    *("pretrain", "--backbone", "vit_micro", "--regime", "no_dropout", "--recipe", "cpu", "--data", "mnist"),
    *("epochs=50", "train_subset=4096"),
]

# A plugin that, as the command line loads it, writes what the process it runs in looks like.
PROBE = """
import json, os, signal, sys, threading
import torch
fds = []
for fd in os.listdir("/proc/self/fd"):
    try:
        fds.append(os.readlink(f"/proc/self/fd/{fd}"))
    except FileNotFoundError:  # the listing's own
        pass
state = {
    "cwd": os.getcwd(), "argv": sys.argv[1:], "path": sys.path, "threads": torch.get_num_threads(),
    "omp": os.environ.get("OMP_NUM_THREADS"), "unbuffered": os.environ.get("PYTHONUNBUFFERED"),
    "locks": [fd for fd in fds if fd.endswith(".lock")], "sockets": [fd for fd in fds if fd.startswith("socket:")],
    "sigterm": str(signal.getsignal(signal.SIGTERM)), "sigint": str(signal.getsignal(signal.SIGINT)),
    "sigchld": str(signal.getsignal(signal.SIGCHLD)), "python_threads": threading.active_count(),
    "stdout": os.readlink("/proc/self/fd/1"), "stderr": os.readlink("/proc/self/fd/2"),
}
with open(os.environ["PROBE_OUT"], "a") as out:
    out.write(json.dumps(state) + "\\n")
print("probe loaded")
"""


@pytest.fixture
def probed(tmp_path, monkeypatch):
    (tmp_path / "probe_plugin.py").write_text(textwrap.dedent(PROBE))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("DROPBENCH_PLUGINS", "probe_plugin")
    monkeypatch.setenv("PROBE_OUT", str(tmp_path / "probe.jsonl"))
    return tmp_path


def _exec(arguments, log: Path, cwd: Path, env: dict, pass_fds=()) -> int:
    with log.open("a") as stream:
        run = subprocess.Popen([*COMMAND, *arguments], cwd=cwd, env=env, stdout=stream, stderr=subprocess.STDOUT,
                               pass_fds=pass_fds)  # fmt: skip
    return run.wait()


def _forked(starter: Starter, arguments, log: Path, cwd: Path, env: dict, pass_fds=()):
    with log.open("a") as stream:
        run = starter.start(arguments, stream.fileno(), cwd, env, pass_fds)
    assert run is not None, "the starter did not fork the run"
    return run


def test_a_forked_run_starts_as_its_command_would_start_it(probed):
    """Folder, arguments, import path, threads, environment, log, signals, the lock it holds and no file of the
    starter's."""
    work = probed / "work"
    work.mkdir()
    lock = (probed / ".run.lock").open("a+")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    arguments = ["schedule", "--rate", "0.1", "--epochs", "2", "--iters-per-epoch", "2", "--format", "json"]
    assert _exec(arguments, probed / "exec.log", work, env, (lock.fileno(),)) == 0
    with Starter() as starter:
        run = _forked(starter, arguments, probed / "fork.log", work, env, (lock.fileno(),))
        assert run.wait() == 0
    executed, forked = (json.loads(line) for line in (probed / "probe.jsonl").read_text().splitlines())
    assert forked["stdout"].endswith("fork.log") and forked["stderr"] == forked["stdout"]
    for state in (executed, forked):
        state.pop("stdout"), state.pop("stderr")
    assert forked == executed, (forked, executed)
    assert forked["threads"] == 1 and forked["locks"] == [str(probed / ".run.lock")] and not forked["sockets"]
    assert (probed / "fork.log").read_text() == (probed / "exec.log").read_text()


def test_a_forked_runs_exit_code_and_error_are_its_commands(probed, tmp_path):
    env = dict(os.environ)
    arguments = [*LONG_RUN[:3], "--regime", "no_such_regime", *LONG_RUN[5:9], "--out", str(tmp_path / "r")]
    assert _exec(arguments, tmp_path / "exec.log", tmp_path, env) == 2
    with Starter() as starter:
        run = _forked(starter, arguments, tmp_path / "fork.log", tmp_path, env)
        assert run.wait() == 2 and run.poll() == 2
        killed = _forked(
            starter,
            LONG_RUN + ["--out", str(tmp_path / "long"), "--results", str(tmp_path)],
            tmp_path / "killed.log",
            ROOT,
            env,
        )
        killed.kill()
        assert killed.wait() == -signal.SIGKILL and killed.poll() == -signal.SIGKILL
    assert (tmp_path / "fork.log").read_text() == (tmp_path / "exec.log").read_text()
    assert "error: " in (tmp_path / "fork.log").read_text() and "no_such_regime" in (tmp_path / "fork.log").read_text()


def test_a_run_is_not_forked_where_its_environment_changes_what_the_interpreter_read(tmp_path):
    with Starter() as starter:
        env = dict(os.environ, PYTHONHASHSEED="7")
        with (tmp_path / "log").open("a") as stream:
            assert starter.start(["schedule", "--help"], stream.fileno(), tmp_path, env) is None


def test_suites_run_one_after_another_share_a_starter_until_the_environment_changes_or_a_suite_fails(
    tmp_path, monkeypatch
):
    schedule = ["schedule", "--help"]
    with suite_starter() as first:
        assert _forked(first, schedule, tmp_path / "log", tmp_path, dict(os.environ)).wait() == 0
    with suite_starter() as again:
        assert again is first and _forked(again, schedule, tmp_path / "log", tmp_path, dict(os.environ)).wait() == 0
    kept = first.pid

    monkeypatch.setenv("PYTHONHASHSEED", "7")  # read as an interpreter starts: the kept starter cannot fork for it
    with suite_starter() as other:
        assert other is not first and not _alive(kept), "the starter of another environment was left running"
        assert _forked(other, schedule, tmp_path / "log", tmp_path, dict(os.environ)).wait() == 0

    arguments = [*LONG_RUN, "--out", str(tmp_path / "long"), "--results", str(tmp_path)]
    with pytest.raises(RuntimeError), suite_starter() as failing:
        run = _forked(failing, arguments, tmp_path / "long.log", ROOT, dict(os.environ))
        raise RuntimeError("the suite fails while its run goes on")
    assert run.wait() == -signal.SIGKILL and _gone([run.pid]), "a failed suite's run outlived it"
    with suite_starter() as after:
        assert after is not failing


@pytest.mark.slow
def test_a_forked_pretraining_trains_the_same_weights_as_its_command(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    tiny = ["epochs=1", "train_subset=128", "val_subset=32", "batch_size=32", "per_device_batch=32", "warmup_epochs=0"]

    def arguments(name: str) -> list[str]:
        return [
            *("pretrain", "--backbone", "vit_micro", "--regime", "standard_dropout", "--recipe", "cpu"),
            *("--data", "mnist", "--out", str(tmp_path / name), "--results", str(tmp_path / f"{name}-results"), *tiny),
        ]

    assert _exec(arguments("exec"), tmp_path / "exec.log", ROOT, env) == 0
    with Starter() as starter:
        assert _forked(starter, arguments("fork"), tmp_path / "fork.log", ROOT, env).wait() == 0
    executed, forked = (load_file(tmp_path / name / "export" / "backbone.safetensors") for name in ("exec", "fork"))
    assert executed.keys() == forked.keys()
    assert all(torch.equal(executed[key], forked[key]) for key in executed), "the forked run trained other weights"


def test_the_starter_ends_with_its_suite_and_takes_its_runs_with_it(tmp_path):
    """Closed, it leaves no process; SIGKILLed, the run it started dies with it."""
    env = dict(os.environ)
    starter = Starter()
    run = _forked(starter, ["schedule", "--help"], tmp_path / "log", tmp_path, env)
    run.wait()
    zygote = starter.pid
    starter.close()
    assert not Path(f"/proc/{zygote}").exists()

    script = textwrap.dedent(f"""
        import sys, time
        from dropbench.suite.starter import Starter
        starter = Starter()
        with open({str(tmp_path / "long.log")!r}, "a") as log:
            arguments = {LONG_RUN + ["--out", str(tmp_path / "long"), "--results", str(tmp_path)]!r}
            run = starter.start(arguments, log.fileno(), {str(ROOT)!r}, dict(__import__("os").environ))
        print(starter.pid, run.pid, flush=True)
        time.sleep(600)
    """)
    suite = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    zygote, child = (int(pid) for pid in suite.stdout.readline().split())
    os.kill(suite.pid, signal.SIGKILL)
    suite.wait()
    assert _gone([zygote, child]), "the starter or its run outlived the suite"


def _gone(pids: list[int], within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    return not any(_alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False
