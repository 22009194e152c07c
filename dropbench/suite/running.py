"""Running one run of the plan: its command line, its log, and what its exit and records say."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from dropbench.core.layout import CHECKPOINT_FILE, EXPORT_DIR
from dropbench.core.orphans import die_with_parent
from dropbench.tasks import PRETRAIN_KIND, node_wide

if TYPE_CHECKING:
    from dropbench.suite.plan import Run, Suite
    from dropbench.suite.starter import Starter


class Status(str, Enum):
    """How a run of the suite ended, as the progress lines and the summary say it."""

    DONE = "done"
    FINISHED_EARLIER = "finished earlier"
    FAILED = "failed"
    SKIPPED = "skipped"  # its pretraining failed or was skipped

    def __str__(self) -> str:
        return self.value


@dataclass
class Outcome:
    run: Run
    status: Status
    detail: str = ""
    seconds: float = 0.0  # wall time of the run's command


def _pretraining_command(run: Run, remove_stale: bool) -> tuple[str, ...]:
    """The command for a pretraining run folder as it is now: resumed from its checkpoint, or started afresh.

    A folder left by an attempt that died before its first checkpoint holds nothing to resume and would make
    ``pretrain`` refuse to start, so it is removed (``remove_stale``; its output is in the run's log).
    """
    folder = run.work_dir
    if (folder / CHECKPOINT_FILE).is_file() or (folder / EXPORT_DIR).is_dir():
        return (run.command[0], "--resume", *run.command[1:])
    if remove_stale and folder.exists():
        shutil.rmtree(folder)
    return run.command


def _resumed_command(run: Run, remove_stale: bool) -> tuple[str, ...]:
    """The run's command as its folder stands: a pretraining as ``_pretraining_command`` says, a transfer whose
    folder an earlier attempt left with ``--resume`` (it continues from its newest checkpoint, or starts if the
    attempt saved none)."""
    if run.kind == PRETRAIN_KIND:
        return _pretraining_command(run, remove_stale)
    if run.work_dir.exists():
        return (*run.command[:2], "--resume", *run.command[2:])
    return run.command


RENDEZVOUS_PORT = 29500
# What a multi-node command's rendezvous reads, as a dry run shows it; a job fills in its first node and its id.
RENDEZVOUS_PLACEHOLDER = (f"$FIRST_NODE:{RENDEZVOUS_PORT}", "$SLURM_JOB_ID")


def command_line(
    run: Run,
    gpus: int,
    prepare: bool = True,
    nodes: int = 1,
    rendezvous: tuple[str, str] = RENDEZVOUS_PLACEHOLDER,
) -> list[str]:
    """``python -m dropbench.cli ...``; on several GPUs, pretraining and node-wide transfers (det/seg) go under
    torchrun (the transfers with the ``pytorch`` launcher): ``--standalone`` on one node, on ``nodes`` > 1 one
    torchrun per node meeting at ``rendezvous`` (endpoint, id) through c10d. ``prepare``: a stale pretraining
    folder is removed (``False`` for a dry run, which changes nothing, and on every node but the first)."""
    command = _resumed_command(run, prepare)
    if not node_wide(run.kind) or (gpus <= 1 and nodes <= 1):
        return [sys.executable, "-m", "dropbench.cli", *command]
    if nodes > 1:
        endpoint, job = rendezvous
        where = (f"--nnodes={nodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}", f"--rdzv_id={job}")
    else:
        where = ("--standalone",)
    launcher = ("--launcher", "pytorch") if run.kind != PRETRAIN_KIND else ()
    return [
        *(sys.executable, "-m", "torch.distributed.run", *where, f"--nproc_per_node={max(gpus, 1)}"),
        *("-m", "dropbench.cli", *command, *launcher),
    ]


def _prepare_child(shield_usr2: bool) -> None:
    die_with_parent()
    if shield_usr2:
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def start_logged(
    argv: Sequence[str],
    log: str | Path,
    cwd: str | Path,
    env: dict[str, str] | None = None,
    shield_usr2: bool = False,
    pass_fds: Sequence[int] = (),
    starter: Starter | None = None,
    imports: Sequence[str] = (),
):
    """Start ``argv`` in ``cwd`` with stdout and stderr appended to ``log`` (``env`` added to this environment);
    returns the process (its log stream closes with it), which is SIGKILLed should this thread end first (a suite
    killed by SIGKILL leaves no run going: the next one resumes it). ``shield_usr2``: the process ignores ``USR2``,
    which Slurm sends to every process of a job before its time limit and which only the job's own handler should
    act on.
    ``pass_fds``: open files the process inherits (the run's lock, ``core.lock``). ``starter``: a ``dropbench``
    command is forked from it where it can (``suite.starter``; ``imports``: what the run will import), its log and
    what it does the same."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    stream = log.open("a")
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    prefix = " ".join(f"{key}={value}" for key, value in (env or {}).items())
    stream.write(f"===== {stamp} {(prefix + ' ') if prefix else ''}{shlex.join(argv)}\n")
    stream.flush()
    environment = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    try:
        if starter is not None and list(argv[:3]) == [sys.executable, "-m", "dropbench.cli"]:
            started = starter.start(argv[3:], stream.fileno(), cwd, environment, pass_fds, imports)
            if started is not None:
                return started
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            stdout=stream,
            stderr=subprocess.STDOUT,
            env=environment,
            pass_fds=tuple(pass_fds),
            preexec_fn=partial(_prepare_child, shield_usr2),  # noqa: PLW1509 - a prctl and a signal only
        )
    finally:
        stream.close()  # the child holds its own copy


def run_logged(argv: Sequence[str], log: str | Path, cwd: str | Path, shield_usr2: bool = False) -> int:
    """Run ``argv`` in ``cwd`` with stdout and stderr appended to ``log``; returns its exit code."""
    return start_logged(argv, log, cwd, shield_usr2=shield_usr2).wait()


def _last_line(log: Path, limit: int = 200) -> str:
    """The log's last non-empty line (a one-line ``error: ...`` or a traceback's last line)."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    if not lines or lines[-1].startswith("====="):
        return ""
    return lines[-1] if len(lines[-1]) <= limit else lines[-1][: limit - 1] + "…"


def conclude(run: Run, code: int) -> Outcome:
    if code != 0:
        last = _last_line(run.log)
        return Outcome(run, Status.FAILED, f"exit code {code}" + (f": {last}" if last else ""))
    if not run.finished():
        return Outcome(run, Status.FAILED, f"exited 0 but wrote no record '{run.identity.stem()}*.json'")
    return Outcome(run, Status.DONE)


def skip_or_none(run: Run, outcomes: dict[str, Outcome]) -> Outcome | None:
    if run.finished():
        return Outcome(run, Status.FINISHED_EARLIER)
    pretraining = outcomes.get(run.after) if run.after else None  # None too while its job is queued
    if pretraining is not None and pretraining.status in (Status.FAILED, Status.SKIPPED):
        return Outcome(run, Status.SKIPPED, f"its pretraining {run.after} {pretraining.status}")
    return None


def detail(outcome: Outcome) -> str:
    return f" ({outcome.detail})" if outcome.detail else ""


def report(suite: Suite, outcomes: list[Outcome]) -> tuple[str, bool]:
    """The closing summary (counts, then each failed or skipped run with its log) and whether all went well."""
    counts = {status: 0 for status in Status}
    for outcome in outcomes:
        counts[outcome.status] += 1
    lines = [f"suite '{suite.name}': " + ", ".join(f"{n} {status}" for status, n in counts.items())]
    failed = [o for o in outcomes if o.status == Status.FAILED]
    skipped = [o for o in outcomes if o.status == Status.SKIPPED]
    if failed:
        lines.append("failed:")
        lines += [f"  {o.run.name}: {o.detail}\n    log: {o.run.log}" for o in failed]
    if skipped:
        lines.append("skipped (their pretraining failed):")
        lines += [f"  {o.run.name}" for o in skipped]
    return "\n".join(lines), not failed and not skipped
