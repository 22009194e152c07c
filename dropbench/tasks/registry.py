"""The registry of transfer tasks: one definition per task, which the CLI, the suite (schema, planner, executors)
and ``compare`` read; none of them lists tasks. A task outside the package registers itself when its module is
imported, as a plugin (``dropbench.plugins``).

A task states each of its settings once. Its options are its command line (``add_arguments``); a suite entry
becomes those options (``suite_options``), parsed by the same parser; ``load`` turns the parsed options into what the
task runs, and ``identity`` gives the records' dataset, protocol and settings part of it. The registry makes both the
suite's plan and the run's identity from that one hook, so that a planned run and the run agree by construction."""

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dropbench.core.errors import UserInputError, did_you_mean
from dropbench.core.fields import renamed_fields
from dropbench.core.identity import Part, RunIdentity, StageName
from dropbench.plugins import load_plugins

PRETRAIN_KIND = StageName.PRETRAIN  # a suite names its stages as records do: pretrain, then the task kinds


@dataclass(frozen=True)
class TaskIdentity:
    """What a task's settings make of its run's identity: the records' dataset and protocol and the settings part
    (``task``). The export gives the rest, and the command the transfer seed, unless the settings fix it."""

    dataset: str
    protocol: str
    part: Part
    transfer_seed: int | None = None  # a seed the task's own config holds (None: --seed)

    def of(
        self, task: str, source: RunIdentity, transfer_seed: int, stage: StageName = StageName.TRANSFER
    ) -> RunIdentity:
        """The identity of ``task``'s transfer of ``source``'s export (its pretraining's or its import's)."""
        return source.transfer(task, self.dataset, self.protocol, transfer_seed, self.part, stage)


@dataclass(frozen=True)
class SuiteOptions:
    """A suite's ``transfers`` entry as its task's command-line options."""

    name: str | Callable[[TaskIdentity], str]  # the run folders' name, or a function of the records' names
    arguments: tuple[str, ...]  # the command's own options (all but --backbone, --work-dir, --results, --seed)
    trailing: tuple[str, ...] = ()  # key=value options, last on the command line
    rename: Callable[[str], str] = lambda option: option  # an error's field in the options → the entry's field


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
    settings: Any = field(default=None, compare=False, repr=False)  # what the task loaded, for check_backbone
    transfer_seed: int | None = None  # the one seed of a task that takes none (None: the suite's transfer seeds)


class _OptionsParser(argparse.ArgumentParser):
    """A task's own options, parsed from a suite entry: a refusal is a UserInputError naming the entry."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UserInputError(self.prog, message)


def _parsed(parsed: Any) -> Any:
    return parsed


@dataclass(frozen=True)
class TransferTask:
    """One downstream task.

    ``kind`` names it on the command line (``dropbench transfer <kind>``), in a suite's ``transfers`` entries and
    in its ``slurm`` section; ``task`` names it in the records. Its settings are stated once:

    - ``add_arguments`` adds its own options to those every task takes (``--backbone``, ``--work-dir``,
      ``--results``, ``--seed``, ``--force``, ``--resume``);
    - ``suite_options(index, entry)`` validates a suite entry (its keys are ``kind``, ``name`` and ``suite_keys``)
      into those options, which the same parser reads;
    - ``load(args)`` makes what the task runs of the parsed options (its configs read and checked; by default the
      options themselves), whether they came from a command line or a suite entry;
    - ``identity(settings)`` gives the records' dataset, protocol and settings part of what ``load`` made.

    ``run`` (``dropbench transfer <kind>``, inside the run folder's lock) and ``from_suite`` (the suite's plan) both
    build the run's identity from ``identity``. ``execute(settings, identity, args)`` does the work of the run."""

    kind: str
    task: str
    help: str
    identity: Callable[[Any], TaskIdentity]
    execute: Callable[[Any, RunIdentity, argparse.Namespace], None]
    suite_options: Callable[[int, dict], SuiteOptions]
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    load: Callable[[argparse.Namespace], Any] = _parsed
    suite_keys: tuple[str, ...] = ()
    node_wide: bool = False  # takes every GPU of a node (torchrun; the command then gets --launcher pytorch)
    needs_cuda_ops: bool = False  # runs mmcv's compiled ops: checked before it is bound for a GPU
    headline_metrics: tuple[str, ...] = ()  # what the table shows by default (empty: every metric it records)
    default_seed: int | None = None  # --seed's default (None: the task's config says)
    # Refuse a backbone (timm name, kwargs) that the task cannot take, before anything runs (a UserInputError).
    check_backbone: Callable[[str, dict, SuiteTask], None] | None = None
    origin: str = ""  # the module that defines it (default: execute's), for register
    stage: StageName = StageName.TRANSFER  # what its records are: a transfer, or an evaluation of the export as it is
    seeded: bool = True  # False: it takes no transfer seed, and a suite runs it once per export

    def run(self, args: argparse.Namespace) -> None:
        """``dropbench transfer <kind>``: the settings its options give, the run's identity from them, the run."""
        from dropbench.core.export import read_sidecar

        source = read_sidecar(args.backbone).pretraining_identity()
        settings = self.load(args)
        self.execute(settings, self.run_identity(settings, source, args.seed), args)

    def run_identity(self, settings: Any, source: RunIdentity, seed: int | None) -> RunIdentity:
        """The identity of this task's run on ``source``'s export with ``settings`` (at transfer seed ``seed``,
        unless the settings fix it)."""
        found = self.identity(settings)
        seed = found.transfer_seed if found.transfer_seed is not None else seed
        if seed is None:
            raise UserInputError("--seed", f"the {self.kind} task's settings give no transfer seed; pass --seed")
        return found.of(self.task, source, seed, self.stage)

    def from_suite(self, index: int, entry: dict) -> SuiteTask:
        """A suite's ``transfers[index]``: its options parsed and loaded as a command line's, its identity fields
        from ``identity`` (the transfer seed is the suite's, which the planned command passes with ``--seed``)."""
        options = self.suite_options(index, entry)
        parsed = self.parse_options([*options.arguments, *options.trailing], f"transfers[{index}]")
        with renamed_fields(options.rename):
            settings = self.load(parsed)
        found = self.identity(settings)
        return SuiteTask(
            self.kind,
            options.name if isinstance(options.name, str) else options.name(found),
            found.dataset,
            found.protocol,
            found.part,
            options.arguments,
            options.trailing,
            settings=settings,
            transfer_seed=found.transfer_seed if not self.seeded else None,
        )

    def parse_options(self, options: Sequence[str], field_name: str) -> argparse.Namespace:
        """The task's own options as its command line parses them, with ``--seed`` at its default (a plan's options
        name no export, folder or seed: the planner adds them to each run's command)."""
        parser = _OptionsParser(prog=field_name, add_help=False)
        self.add_arguments(parser)
        return parser.parse_args(list(options), argparse.Namespace(seed=self.default_seed))

    @property
    def defined_in(self) -> str:
        return self.origin or self.execute.__module__


_TASKS: dict[str, TransferTask] = {}


def register(task: TransferTask) -> TransferTask:
    """Add a task; registering a kind again from the module that defined it replaces it (a module imported
    twice), from another module is refused."""
    existing = _TASKS.get(task.kind)
    if existing is not None and existing.defined_in != task.defined_in:
        raise ValueError(f"transfer task '{task.kind}' is registered by {existing.defined_in} already")
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


def run_kinds() -> tuple[str, ...]:
    """What a suite's run is: a pretraining, or a transfer task's kind."""
    return (PRETRAIN_KIND, *transfer_tasks())


def node_wide(kind: str) -> bool:
    """Whether a run of ``kind`` takes every GPU of a node (torchrun, one process per GPU)."""
    return kind == PRETRAIN_KIND or transfer_tasks()[kind].node_wide


def results_dir(args: argparse.Namespace) -> Path | None:
    """Where a run's records go: ``--results`` ('' for none)."""
    return Path(args.results) if args.results else None
