"""The registry of transfer tasks: one definition per task, which the CLI, the suite (schema, planner, executors)
and ``compare`` read; none of them lists tasks. A task outside the package registers itself when its module is
imported, as a plugin (``dropbench.plugins``)."""

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dropbench.core.errors import UserInputError, did_you_mean
from dropbench.core.identity import Part, StageName
from dropbench.plugins import load_plugins

PRETRAIN_STAGE = StageName.PRETRAIN  # a suite names its stages as records do: pretrain, then the task kinds


@dataclass(frozen=True)
class SuiteTask:
    """A transfer task as a suite file gives it, validated: what its records are called and how its command ends."""

    kind: str
    name: str  # the run folders' name, unique in the suite
    dataset: str  # as the records name it
    protocol: str  # as the records name it
    part: Part  # the task's settings, as the run computes them
    arguments: tuple[str, ...]  # the command's own options (all but --backbone, --work-dir, --results, --seed)
    trailing: tuple[str, ...] = ()  # key=value options, last on the command line
    config: Any = field(default=None, compare=False, repr=False)  # what the task loaded, for check_backbone


@dataclass(frozen=True)
class TransferTask:
    """One downstream task.

    ``kind`` names it on the command line (``dropbench transfer <kind>``), in a suite's ``transfers`` entries and
    in its ``slurm`` section; ``task`` names it in the records. ``run`` does the work of ``dropbench transfer
    <kind>`` inside the run folder's lock, with the arguments every task takes (``--backbone``, ``--work-dir``,
    ``--results``, ``--seed``, ``--force``, ``--resume``) and those ``add_arguments`` adds. ``from_suite(index,
    entry)`` validates a suite entry (its keys are ``kind``, ``name`` and ``suite_keys``) into a ``SuiteTask``."""

    kind: str
    task: str
    help: str
    run: Callable[[argparse.Namespace], None]
    from_suite: Callable[[int, dict], SuiteTask]
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    suite_keys: tuple[str, ...] = ()
    node_wide: bool = False  # takes every GPU of a node (torchrun; the command then gets --launcher pytorch)
    needs_cuda_ops: bool = False  # runs mmcv's compiled ops: checked before it is bound for a GPU
    headline_metrics: tuple[str, ...] = ()  # what the table shows by default (empty: every metric it records)
    default_seed: int | None = None  # --seed's default (None: the task's config says)
    # Refuse a backbone (timm name, kwargs) that the task cannot take, before anything runs (a UserInputError).
    check_backbone: Callable[[str, dict, SuiteTask], None] | None = None


_TASKS: dict[str, TransferTask] = {}


def register(task: TransferTask) -> TransferTask:
    """Add a task; registering a kind again from the module that defined it replaces it (a module imported
    twice), from another module is refused."""
    existing = _TASKS.get(task.kind)
    if existing is not None and existing.run.__module__ != task.run.__module__:
        raise ValueError(f"transfer task '{task.kind}' is registered by {existing.run.__module__} already")
    _TASKS[task.kind] = task
    return task


def transfer_tasks() -> dict[str, TransferTask]:
    """Every registered task by kind, the package's first (det, seg, cls), then the plugins' in import order."""
    load_plugins()
    return dict(_TASKS)


def transfer_task(kind: str, field_name: str = "kind") -> TransferTask:
    tasks = transfer_tasks()
    if kind not in tasks:
        raise UserInputError(field_name, f"unknown transfer task '{kind}'{did_you_mean(kind, list(tasks))}")
    return tasks[kind]


def stages() -> tuple[str, ...]:
    """A run's stage: pretraining, or a transfer task's kind."""
    return (PRETRAIN_STAGE, *transfer_tasks())


def node_wide(stage: str) -> bool:
    """Whether a stage takes every GPU of a node (torchrun, one process per GPU)."""
    return stage == PRETRAIN_STAGE or transfer_tasks()[stage].node_wide
