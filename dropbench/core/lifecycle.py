"""One run of any stage, from the existing-records check to its records. Pretraining, every transfer and an
evaluation are a :class:`RecordedRun`, which implements only ``execute``; :meth:`RecordedRun.run` owns the rest: a
run whose records exist is finished and is skipped (``force`` runs it again and supersedes them), and what ``execute``
measures becomes records that carry the run's identity, when it started, when it finished and the code that made
them."""

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from dropbench.core.identity import Measurement, RunIdentity, now
from dropbench.core.version import code_version

logger = logging.getLogger(__name__)


@dataclass
class RunContext:
    """``identity``'s run writing into ``results_dir`` (None: it writes no records, e.g. a run made for its export
    only). ``started`` is the first attempt's time: a resumed run passes the one its checkpoint kept."""

    identity: RunIdentity
    results_dir: Path | None
    force: bool = False
    started: str = field(default_factory=now)

    def earlier_records(self) -> list[Path]:
        """The records that make this run finished, said in the log with how to run it again; empty when it runs."""
        if self.results_dir is None or self.force:
            return []
        existing = self.identity.existing_records(self.results_dir)
        if existing:
            logger.info(self.identity.finished_message(existing))
        return existing

    def record(self, measured: "Measured") -> list[Path]:
        """One record per metric (none without a results folder)."""
        if self.results_dir is None:
            return []
        return self.identity.write_records(
            self.results_dir,
            measured.metrics,
            measured,
            started=self.started,
            code_version=code_version(),
            force=self.force,
            units=measured.units,
        )


@dataclass(frozen=True)
class Measured(Measurement):
    """What a stage's ``execute`` measured: ``metrics`` (in ``unit``) of the timm ``model``, made in ``run_dir``.
    A value every record of the run carries is a field of ``Measurement``."""

    metrics: dict[str, float]
    units: dict[str, str] = field(default_factory=dict)  # a metric's own unit, where it is not ``unit``


@dataclass
class Done:
    """A stage's records: those it wrote, or, when ``finished_earlier``, those that made it skip."""

    records: list[Path]
    finished_earlier: bool = False


@dataclass
class RecordedRun(ABC):
    """One run of a stage, with everything its identity is computed from already checked."""

    identity: RunIdentity

    @abstractmethod
    def execute(self, context: RunContext) -> Measured | None:
        """Do the work; None on a process that writes no records (all but the main one). A resumed run sets
        ``context.started`` to the first attempt's."""

    def run(self, results_dir: str | Path | None, force: bool = False) -> Done:
        run = RunContext(self.identity, Path(results_dir) if results_dir is not None else None, force)
        if existing := run.earlier_records():
            return Done(existing, finished_earlier=True)
        measured = self.execute(run)
        if measured is None:
            return Done([])
        return Done(run.record(measured))
