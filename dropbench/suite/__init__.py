"""Suites: a grid of pretraining runs (backbones × regimes × seeds) and the transfers of each export, run once.

``dropbench suite configs/suites/<name>.yaml [--dry-run] [--executor local|slurm] [--gpus N]``

A suite file is validated as a whole (every backbone, regime, recipe with its overrides, and task config with its
options is loaded) before anything runs. The plan puts each pretraining run before the transfers that read its
export; a run whose result records exist is finished and is skipped, so a second invocation runs nothing. Each run
is one ``python -m dropbench.cli ...`` process whose stdout and stderr are appended to ``<run>.log`` beside its
folder; a failed run is reported with that log at the end and costs only the transfers that needed its export.

Executors: ``local`` runs one subprocess after another on a CPU or one GPU; on N GPUs pretraining and det/seg
take them all (torchrun), then the classification transfers go N at a time, one per GPU. ``slurm`` submits every
run through submitit, a transfer with ``--dependency=afterok:<its pretraining job>``, waits for them all, and
cancels the transfers of a failed pretraining (Slurm would otherwise leave them pending forever).
"""

from collections.abc import Callable
from pathlib import Path

from dropbench.core.errors import UserInputError
from dropbench.suite.local import check_gpus, check_jobs, execute_local, launches
from dropbench.suite.plan import Run, Suite, describe, load_suite
from dropbench.suite.running import Outcome, report
from dropbench.suite.slurm import SlurmResources, execute_slurm, job_command, queued_jobs

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


def check_dense_ops(suite: Suite, gpus_of: Callable[[str], int]) -> None:
    """Before any pretraining: det/seg runs that will get GPUs (``gpus_of(stage)``) need mmcv's CUDA ops."""
    dense = {run.stage for run in suite.runs if run.stage in ("det", "seg")}
    if any(gpus_of(stage) > 0 for stage in dense):
        from dropbench.transfer.mm_ops import check_cuda_ops

        check_cuda_ops(on_cuda=True, field=f"suite ({', '.join(sorted(dense))} on GPUs)")


def run_suite(
    path: str | Path,
    executor: str = "local",
    dry_run: bool = False,
    poll_seconds: float = 30.0,
    gpus: int | None = None,
    jobs: int = 1,
) -> int:
    """Load the suite, print its plan (``dry_run``; for the local executor with the exact commands on ``gpus``
    GPUs) or run it; returns the exit code (1 when any run failed). ``gpus``: the local executor's, default every
    visible GPU; ``jobs``: CPU runs side by side."""
    suite = load_suite(path)
    if executor not in ("local", "slurm"):
        raise UserInputError("--executor", f"unknown executor '{executor}' (choose from: local, slurm)")
    if gpus is not None and executor != "local":
        raise UserInputError("--gpus", "is the local executor's; a Slurm job's GPUs are the suite's slurm.gpus")
    if jobs != 1 and executor != "local":
        raise UserInputError("--jobs", "is the local executor's; Slurm runs every job as the scheduler places it")
    if dry_run:
        if executor == "local":
            count = check_gpus(gpus, dry_run=True)
            plan = launches(suite, count, check_jobs(jobs, count))
            print(describe(suite, [(launch.run, launch.shell(count)) for launch in plan]))
        else:
            print(describe(suite, [(run, job_command(suite, run)) for run in suite.runs]))
        return 0
    cwd = Path.cwd()
    echo = lambda line: print(line, flush=True)  # noqa: E731 - progress lines must appear as runs go
    if executor == "local":
        count = check_gpus(gpus)
        check_dense_ops(suite, lambda stage: count)
        outcomes = execute_local(suite, cwd, echo, count, jobs)
    else:
        check_dense_ops(suite, lambda stage: suite.slurm[stage].gpus)
        outcomes = execute_slurm(suite, cwd, echo, poll_seconds)
    text, ok = report(suite, outcomes)
    print(text, flush=True)
    return 0 if ok else 1
