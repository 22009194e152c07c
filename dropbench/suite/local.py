"""The local executor: the plan's runs as subprocesses of this machine.

On a CPU machine (``gpus`` 0) or one GPU, the runs go one after another, in plan order. On a node with several GPUs,
pretraining and det/seg take every GPU (torchrun, one process per GPU) one after another, then the single-GPU runs
(classification transfers) go packed, one per GPU, ``gpus`` at a time.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dropbench.core.errors import UserInputError
from dropbench.suite.plan import Run, Suite
from dropbench.suite.running import (
    NODE_STAGES,
    Outcome,
    command_line,
    conclude,
    detail,
    skip_or_none,
    start_logged,
)


@dataclass(frozen=True)
class Launch:
    """A run as it starts: the GPUs it sees (``CUDA_VISIBLE_DEVICES``; ``None``: the machine's as they are)."""

    run: Run
    devices: str | None

    def env(self) -> dict[str, str]:
        return {} if self.devices is None else {"CUDA_VISIBLE_DEVICES": self.devices}

    def argv(self, gpus: int, prepare: bool = True) -> list[str]:
        return command_line(self.run, gpus, prepare)  # a single-GPU stage runs in one process whatever ``gpus``

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


def launches(suite: Suite, gpus: int) -> list[Launch]:
    """The runs in the order they start: plan order on a CPU or one GPU; on several, the node-wide runs first
    (plan order: each transfer after its pretraining), then the single-GPU runs, GPU by GPU in turn."""
    if gpus == 0:
        return [Launch(run, None) for run in suite.runs]
    ids = _device_ids(gpus)
    if gpus == 1:
        return [Launch(run, ids[0]) for run in suite.runs]
    node = [Launch(run, ",".join(ids)) for run in suite.runs if run.stage in NODE_STAGES]
    single = [run for run in suite.runs if run.stage not in NODE_STAGES]
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


def execute_local(suite: Suite, cwd: Path, echo: Callable[[str], None] = print, gpus: int = 0) -> list[Outcome]:
    """Run the plan on this machine with ``gpus`` GPUs (0: the CPU); returns each run's outcome, in plan order."""
    if suite.data and suite.data != "mnist" and not Path(suite.data).is_dir():
        raise UserInputError("pretrain.data", f"'{suite.data}' is neither 'mnist' nor a folder")
    order = launches(suite, gpus)
    position = {launch.run.name: index for index, launch in enumerate(order, 1)}
    outcomes: dict[str, Outcome] = {}
    running: dict[str, tuple[Launch, object, float]] = {}  # device → (launch, process, start)

    def finish(devices: str) -> None:
        launch, process, start = running.pop(devices)
        outcome = conclude(launch.run, process.wait())
        outcome.seconds = time.perf_counter() - start
        name = launch.run.name
        echo(f"[{position[name]}/{len(order)}] {name}: {outcome.status} in {outcome.seconds:.0f} s" + detail(outcome))
        outcomes[name] = outcome

    for launch in order:
        key = launch.devices or "cpu"
        while _must_wait(launch, key, running):
            _wait_any(running, finish)
        outcome = skip_or_none(launch.run, outcomes)
        if outcome is not None:
            echo(f"[{position[launch.run.name]}/{len(order)}] {launch.run.name}: {outcome.status}" + detail(outcome))
            outcomes[launch.run.name] = outcome
            continue
        echo(f"[{position[launch.run.name]}/{len(order)}] {launch.run.name}: running, log {launch.run.log}")
        process = start_logged(launch.argv(gpus), launch.run.log, cwd, launch.env())
        running[key] = (launch, process, time.perf_counter())
    while running:
        _wait_any(running, finish)
    return [outcomes[run.name] for run in suite.runs]


def _must_wait(launch: Launch, key: str, running: dict) -> bool:
    """A node-wide run waits for every running one; a single-GPU run for its GPU and for any node-wide run."""
    if not running:
        return False
    if launch.run.stage in NODE_STAGES or key in running:
        return True
    return any(other.run.stage in NODE_STAGES for other, _, _ in running.values())


def _wait_any(running: dict, finish: Callable[[str], None]) -> None:
    """Wait until one of the running processes exits, and conclude it."""
    if len(running) == 1:
        finish(next(iter(running)))
        return
    while True:
        for devices, (_, process, _) in list(running.items()):
            if process.poll() is not None:
                finish(devices)
                return
        time.sleep(0.5)
