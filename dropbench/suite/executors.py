"""How a suite's runs get run: the executor interface, which the local and the Slurm executors implement, and
their registry. An executor is one class; a new one (Ray, Kubernetes, LSF) is one module that registers it, as a
plugin (``dropbench.plugins``) where it lives outside the package. The plan (``suite.plan``) knows none of them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from dropbench.core.errors import UserInputError, did_you_mean
from dropbench.plugins import load_plugins

if TYPE_CHECKING:
    from dropbench.suite.plan import Run, Suite
    from dropbench.suite.running import Outcome


class Executor(ABC):
    """Runs a suite's plan. ``options`` names the ``suite`` command's options it takes (``gpus``, ``jobs``), which
    reach its constructor with ``dry_run``; ``section`` names its part of a suite file, which ``parse_section``
    validates for every suite before anything runs (``Suite.sections[section]``)."""

    name: ClassVar[str]
    help: ClassVar[str]
    options: ClassVar[tuple[str, ...]] = ()
    section: ClassVar[str | None] = None

    @classmethod
    def parse_section(cls, raw: Any) -> Any:
        return None

    @abstractmethod
    def commands(self, suite: Suite) -> list[tuple[Run, str]]:
        """Each run with the exact command it gets, in the order they go (what a dry run prints)."""

    def plan_summary(self, suite: Suite) -> str | None:
        """A line a dry run ends with: how the executor groups the runs (Slurm's arrays); None: nothing to add."""
        return None

    @abstractmethod
    def gpus_of(self, suite: Suite, kind: str) -> int:
        """The GPUs a run of ``kind`` gets (0: the CPU)."""

    @abstractmethod
    def execute(self, suite: Suite, cwd: Path, echo: Callable[[str], None]) -> list[Outcome]:
        """Run every unfinished run, each transfer after its pretraining; every run's outcome, in plan order."""


_EXECUTORS: dict[str, type[Executor]] = {}


def register_executor(executor: type[Executor]) -> type[Executor]:
    """Add an executor class (usable as a class decorator); registering a name again from the module that defined
    it replaces it (a module imported twice), from another module is refused."""
    existing = _EXECUTORS.get(executor.name)
    if existing is not None and existing.__module__ != executor.__module__:
        raise ValueError(f"executor '{executor.name}' is registered by {existing.__module__} already")
    _EXECUTORS[executor.name] = executor
    return executor


def executor_classes() -> dict[str, type[Executor]]:
    """Every registered executor by name: the package's (local, slurm), then the plugins'."""
    load_plugins()
    return dict(_EXECUTORS)


def start_executor(name: str, dry_run: bool = False, **options: Any) -> Executor:
    """The executor ``name`` with the options given (``None``: not given); an option it does not take is refused."""
    executors = executor_classes()
    if name not in executors:
        raise UserInputError("--executor", f"unknown executor '{name}'{did_you_mean(name, list(executors))}")
    executor = executors[name]
    given = {key: value for key, value in options.items() if value is not None}
    for key in given:
        if key not in executor.options:
            owners = [other for other, cls in executors.items() if key in cls.options]
            where = f"is the {', '.join(owners)} executor's" if owners else "is no executor's option"
            raise UserInputError(f"--{key}", f"{where}, not {name}'s")
    return executor(dry_run=dry_run, **given)
