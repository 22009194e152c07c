"""The local executor: the plan's runs as subprocesses of this machine.

On one GPU, and on a CPU machine by default, the runs go one after another, in plan order. ``jobs`` > 1 on a CPU
machine runs that many side by side, each with its share of the cores as threads (the embedded runs are small: much
of a run is single-threaded Python, which a second run fills), every pretraining first so that transfers become
ready early. On a node with several GPUs, pretraining and det/seg take every GPU (torchrun, one process per GPU) one
after another, then the single-GPU runs (classification transfers) go packed, one per GPU, ``gpus`` at a time. A
transfer never starts before its pretraining has ended.
"""

from __future__ import annotations

import os
import shlex
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dropbench.core.embedded import EMBEDDED_ARRAYS
from dropbench.core.errors import UserInputError
from dropbench.core.lock import RunLock
from dropbench.suite.executors import Executor, register_executor
from dropbench.suite.plan import Run, Suite
from dropbench.suite.running import (
    Outcome,
    command_line,
    conclude,
    detail,
    skip_or_none,
    start_logged,
)
from dropbench.suite.starter import suite_starter
from dropbench.tasks import PRETRAIN_KIND, node_wide

# What a run of each kind imports before its first step, beyond the stack (``suite.starter``): CPU runs start from
# one process that imports it once. A kind not named here (a plugin's) imports its own modules in each run.
RUN_IMPORTS = {
    "cls": ("dropbench.transfer.classification",),
    "det": ("dropbench.transfer.detection",),
    "seg": ("dropbench.transfer.segmentation",),
    "eval": ("dropbench.evaluation",),
}


@dataclass(frozen=True)
class Launch:
    """A run as it starts: the GPUs it sees (``CUDA_VISIBLE_DEVICES``; ``None``: the machine's as they are) and,
    when CPU runs share the machine, the threads it may use."""

    run: Run
    devices: str | None
    threads: int | None = None

    def env(self) -> dict[str, str]:
        env = {} if self.devices is None else {"CUDA_VISIBLE_DEVICES": self.devices}
        if self.threads is not None:
            env |= {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        return env

    def argv(self, gpus: int, prepare: bool = True) -> list[str]:
        return command_line(self.run, gpus, prepare)  # a single-GPU run runs in one process whatever ``gpus``

    def shell(self, gpus: int) -> str:
        """The exact command line, as a dry run prints it."""
        prefix = "".join(f"{key}={value} " for key, value in self.env().items())
        return prefix + shlex.join(self.argv(gpus, prepare=False))


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def _device_ids(gpus: int) -> list[str]:
    """The first ``gpus`` GPUs this process sees, as ids for a child's ``CUDA_VISIBLE_DEVICES`` (a child's ids
    count from the machine's, not from this process's own ``CUDA_VISIBLE_DEVICES``)."""
    inherited = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return (inherited or [str(index) for index in range(gpus)])[:gpus]


def launches(suite: Suite, gpus: int, jobs: int = 1) -> list[Launch]:
    """The runs in the order they are considered: plan order on one GPU or a CPU; with CPU ``jobs`` > 1 every
    pretraining first, each run with ``cores // jobs`` threads; on several GPUs, the node-wide runs first (plan
    order: each transfer after its pretraining), then the single-GPU runs, GPU by GPU in turn."""
    if gpus == 0 and jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        first = [run for run in suite.runs if run.kind == PRETRAIN_KIND]
        rest = [run for run in suite.runs if run.kind != PRETRAIN_KIND]
        return [Launch(run, None, threads) for run in first + rest]
    if gpus == 0:
        return [Launch(run, None) for run in suite.runs]
    ids = _device_ids(gpus)
    if gpus == 1:
        return [Launch(run, ids[0]) for run in suite.runs]
    node = [Launch(run, ",".join(ids)) for run in suite.runs if node_wide(run.kind)]
    single = [run for run in suite.runs if not node_wide(run.kind)]
    return node + [Launch(run, ids[index % gpus]) for index, run in enumerate(single)]


def check_gpus(gpus: int | None, dry_run: bool = False) -> int:
    """``--gpus``: default every visible GPU; a negative count is refused, and more than are visible unless it is a
    dry run (which prints what a larger node would run)."""
    if gpus is not None and gpus < 0:
        raise UserInputError("--gpus", f"{gpus} is not a number of GPUs (0 runs on the CPU)")
    if gpus is not None and dry_run:
        return gpus
    visible = visible_gpus()
    if gpus is None:
        return visible
    if gpus > visible:
        raise UserInputError("--gpus", f"{gpus} asked, {visible} visible on this machine (0 runs on the CPU)")
    return gpus


def check_jobs(jobs: int, gpus: int) -> int:
    """``--jobs``: a positive count, for the CPU (GPU runs are placed by ``--gpus``)."""
    if jobs < 1:
        raise UserInputError("--jobs", f"{jobs} is not a number of runs at a time (1: one after another)")
    if jobs > 1 and gpus > 0:
        raise UserInputError("--jobs", "sets CPU runs side by side; on GPUs use --gpus, or --gpus 0 for the CPU")
    return jobs


def execute_local(
    suite: Suite, cwd: Path, echo: Callable[[str], None] = print, gpus: int = 0, jobs: int = 1
) -> list[Outcome]:
    """Run the plan on this machine with ``gpus`` GPUs (0: the CPU, ``jobs`` runs at a time); returns each run's
    outcome, in plan order."""
    if suite.data and suite.data not in EMBEDDED_ARRAYS and not Path(suite.data).is_dir():
        raise UserInputError("pretrain.data", f"'{suite.data}' is neither one of {EMBEDDED_ARRAYS} nor a folder")
    pending = launches(suite, gpus, check_jobs(jobs, gpus))
    position = {launch.run.name: index for index, launch in enumerate(pending, 1)}
    outcomes: dict[str, Outcome] = {}
    running: dict[str, tuple[Launch, object, float, RunLock]] = {}  # device or CPU slot → (launch, process, ...)
    elsewhere: dict[str, float] = {}  # runs another process holds → when to look again
    slots = [f"cpu{index}" for index in range(jobs)]

    def say(name: str, text: str) -> None:
        echo(f"[{position[name]}/{len(position)}] {name}: {text}")

    def finish(key: str) -> None:
        launch, process, start, lock = running[key]
        outcome = conclude(launch.run, process.wait())
        del running[key]  # after its wait: a signal meanwhile finds it running, and stops it
        lock.release()
        outcome.seconds = time.perf_counter() - start
        say(launch.run.name, f"{outcome.status} in {outcome.seconds:.0f} s" + detail(outcome))
        outcomes[launch.run.name] = outcome

    def ready(launch: Launch) -> bool:
        due = elsewhere.get(launch.run.name, 0.0) <= time.monotonic()
        return due and _can_start(launch, running, outcomes, jobs)

    with suite_starter() as starter, _stopped_by_signals(running, echo):
        while pending or running:
            launch = next((launch for launch in pending if ready(launch)), None)
            if launch is None:
                if running:
                    _wait_any(running, finish)
                else:  # every pending run waits for one that another process holds
                    time.sleep(max(0.0, min(elsewhere.values()) - time.monotonic()))
                continue
            name = launch.run.name
            lock = RunLock(launch.run.work_dir)
            if not lock.try_take():  # another process runs it: look again later, never run it beside that one
                if name not in elsewhere:
                    say(name, f"running elsewhere ({lock.holder()}); waiting for it")
                elsewhere[name] = time.monotonic() + HELD_RETRY_SECONDS
                lock.release()
                continue
            pending.remove(launch)
            elsewhere.pop(name, None)
            outcome = skip_or_none(launch.run, outcomes)  # under the lock: records written elsewhere count
            if outcome is not None:
                lock.release()
                say(name, f"{outcome.status}{detail(outcome)}")
                outcomes[name] = outcome
                continue
            say(name, f"running, log {launch.run.log}")
            key = launch.devices or next(slot for slot in slots if slot not in running)
            env = launch.env() | lock.child_env()
            process = start_logged(
                launch.argv(gpus),
                launch.run.log,
                cwd,
                env,
                pass_fds=(lock.fileno(),),
                starter=starter if gpus == 0 else None,
                imports=RUN_IMPORTS.get(launch.run.kind, ()),
            )
            running[key] = (launch, process, time.perf_counter(), lock)

    return [outcomes[run.name] for run in suite.runs]


class _Stop(Exception):
    """SIGTERM (a scheduler's, a ``kill``) or Ctrl-C on the suite."""

    def __init__(self, signum: int):
        self.signum = signum


@contextmanager
def _stopped_by_signals(running: dict, echo: Callable[[str], None]) -> Iterator[None]:
    """SIGTERM or Ctrl-C stops the runs in progress (each gets SIGTERM, and its checkpoints stay) and then the suite,
    exit code 128 + the signal's number: the next ``dropbench suite`` resumes them (``--resume``)."""

    def stop(signum: int, frame: object) -> None:
        raise _Stop(signum)

    if threading.current_thread() is not threading.main_thread():  # only the main thread may handle signals
        yield
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except (_Stop, KeyboardInterrupt) as err:
        signum = err.signum if isinstance(err, _Stop) else signal.SIGINT
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for _, process, *_ in running.values():
            if process.poll() is None:
                process.terminate()
        for _, process, _, lock in running.values():
            process.wait()
            lock.release()
        names = ", ".join(launch.run.name for launch, *_ in running.values()) or "none"
        echo(
            f"stopped by {signal.Signals(signum).name}: runs in progress stopped ({names}); run the suite again to "
            "resume them"
        )
        raise SystemExit(128 + signum) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


HELD_RETRY_SECONDS = 2.0


@register_executor
class LocalExecutor(Executor):
    name = "local"
    help = "one subprocess after another on this machine (CPU runs --jobs at a time; on N GPUs as --gpus says)"
    options = ("gpus", "jobs")

    def __init__(self, dry_run: bool = False, gpus: int | None = None, jobs: int | None = None):
        self.gpus = check_gpus(gpus, dry_run=dry_run)
        self.jobs = check_jobs(1 if jobs is None else jobs, self.gpus)

    def commands(self, suite: Suite) -> list[tuple[Run, str]]:
        return [(launch.run, launch.shell(self.gpus)) for launch in launches(suite, self.gpus, self.jobs)]

    def gpus_of(self, suite: Suite, kind: str) -> int:
        return self.gpus

    def execute(self, suite: Suite, cwd: Path, echo: Callable[[str], None]) -> list[Outcome]:
        return execute_local(suite, cwd, echo, self.gpus, self.jobs)


def _can_start(launch: Launch, running: dict, outcomes: dict, jobs: int) -> bool:
    """After its pretraining has ended; a node-wide run alone, a single-GPU run on its free GPU beside no node-wide
    run, a CPU run in a free slot."""
    if launch.run.after is not None and launch.run.after not in outcomes:
        return False
    if not running:
        return True
    if launch.devices is None:
        return len(running) < jobs
    if node_wide(launch.run.kind) or launch.devices in running:
        return False
    return not any(node_wide(other.run.kind) for other, *_ in running.values())


def _wait_any(running: dict, finish: Callable[[str], None]) -> None:
    """Wait until one of the running processes exits, and conclude it."""
    if len(running) == 1:
        finish(next(iter(running)))
        return
    while True:
        for devices, (_, process, *_) in list(running.items()):
            if process.poll() is not None:
                finish(devices)
                return
        time.sleep(0.5)
