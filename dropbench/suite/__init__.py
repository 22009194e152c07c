"""Suites: a grid of pretraining runs (backbones × regimes × seeds) and the transfers of each export, run once.

``dropbench suite configs/suites/<name>.yaml [--dry-run] [--executor local|slurm] [--gpus N]``

A suite file is validated as a whole (every backbone, regime, recipe with its overrides, and task config with its
options is loaded) before anything runs. The plan puts each pretraining run before the transfers that read its
export; a run whose result records exist is finished and is skipped, so a second invocation runs nothing. Each run
is one ``python -m dropbench.cli ...`` process whose stdout and stderr are appended to ``<run>.log`` beside its
folder; a failed run is reported with that log at the end and costs only the transfers that needed its export.

Executors: ``local`` runs one subprocess after another on a CPU or one GPU; on N GPUs pretraining and det/seg
take them all (torchrun), then the classification transfers go N at a time, one per GPU. ``slurm`` submits the
runs through submitit as one job array per stage (a transfer array's task i ``aftercorr`` pretraining task i),
waits for them all, and cancels the transfers of a failed pretraining (Slurm would otherwise leave them pending
forever). Both implement ``executors.Executor``; another executor is one module that registers its own
(docs/extending.md).
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dropbench.suite.executors import Executor, executor_classes, register_executor, start_executor
from dropbench.suite.local import LocalExecutor, execute_local
from dropbench.suite.plan import Run, Suite, describe, load_suite
from dropbench.suite.running import Outcome, Status, report
from dropbench.suite.slurm import SlurmExecutor, SlurmResources, execute_slurm, queued_runs
from dropbench.tasks import PRETRAIN_KIND, transfer_task

__all__ = [
    "Executor",
    "LocalExecutor",
    "Outcome",
    "Run",
    "SlurmExecutor",
    "SlurmResources",
    "Status",
    "Suite",
    "describe",
    "execute_local",
    "execute_slurm",
    "executor_classes",
    "load_suite",
    "queued_runs",
    "register_executor",
    "report",
    "run_suite",
]


def check_dense_ops(suite: Suite, gpus_of: Callable[[str], int]) -> None:
    """Before any pretraining: runs of tasks with mmcv's compiled ops (det/seg) that will get GPUs
    (``gpus_of(kind)``) need mmcv's CUDA ops."""
    dense = {run.kind for run in suite.runs if run.kind != PRETRAIN_KIND and transfer_task(run.kind).needs_cuda_ops}
    if any(gpus_of(kind) > 0 for kind in dense):
        from dropbench.transfer.mm_ops import check_cuda_ops

        check_cuda_ops(on_cuda=True, field=f"suite ({', '.join(sorted(dense))} on GPUs)")


def run_suite(path: str | Path, executor: str = "local", dry_run: bool = False, **options: Any) -> int:
    """Load the suite, print its plan (``dry_run``: each run with the exact command the executor gives it) or run
    it; returns the exit code (1 when any run failed). ``options``: the executor's (local: ``gpus``, default every
    visible GPU, and ``jobs``, CPU runs side by side); ``None`` is not given."""
    suite = load_suite(path)
    runner = start_executor(executor, dry_run=dry_run, **options)
    if dry_run:
        print(describe(suite, runner.commands(suite)))
        if summary := runner.plan_summary(suite):
            print(summary)
        return 0
    check_dense_ops(suite, lambda kind: runner.gpus_of(suite, kind))
    echo = lambda line: print(line, flush=True)  # noqa: E731 - progress lines must appear as runs go
    text, ok = report(suite, runner.execute(suite, Path.cwd(), echo))
    print(text, flush=True)
    return 0 if ok else 1
