"""Suites: a grid of pretraining runs (backbones × regimes × seeds) and the transfers of each export, run once.

``dropbench suite configs/suites/<name>.yaml [--dry-run] [--executor local|slurm]``

A suite file is validated as a whole (every backbone, regime, recipe with its overrides, and task config with its
options is loaded) before anything runs. The plan puts each pretraining run before the transfers that read its
export; a run whose result records exist is finished and is skipped, so a second invocation runs nothing. Each run
is one ``python -m dropbench.cli ...`` process whose stdout and stderr are appended to ``<run>.log`` beside its
folder; a failed run is reported with that log at the end and costs only the transfers that needed its export.

Executors: ``local`` runs one subprocess after another; ``slurm`` submits every run through submitit, a transfer
with ``--dependency=afterok:<its pretraining job>``, waits for them all, and cancels the transfers of a failed
pretraining (Slurm would otherwise leave them pending forever).
"""

from pathlib import Path

from dropbench.core.errors import UserInputError
from dropbench.suite.local import execute_local
from dropbench.suite.plan import Run, Suite, describe, load_suite
from dropbench.suite.running import Outcome, report
from dropbench.suite.slurm import SlurmResources, execute_slurm, queued_jobs

__all__ = [
    "Outcome",
    "Run",
    "SlurmResources",
    "Suite",
    "describe",
    "execute_local",
    "execute_slurm",
    "load_suite",
    "queued_jobs",
    "report",
    "run_suite",
]


def run_suite(path: str | Path, executor: str = "local", dry_run: bool = False, poll_seconds: float = 30.0) -> int:
    """Load the suite, print its plan (``dry_run``) or run it; returns the exit code (1 when any run failed)."""
    suite = load_suite(path)
    if dry_run:
        print(describe(suite))
        return 0
    if executor not in ("local", "slurm"):
        raise UserInputError("--executor", f"unknown executor '{executor}' (choose from: local, slurm)")
    cwd = Path.cwd()
    echo = lambda line: print(line, flush=True)  # noqa: E731 - progress lines must appear as runs go
    if executor == "local":
        outcomes = execute_local(suite, cwd, echo)
    else:
        outcomes = execute_slurm(suite, cwd, echo, poll_seconds)
    text, ok = report(suite, outcomes)
    print(text, flush=True)
    return 0 if ok else 1
