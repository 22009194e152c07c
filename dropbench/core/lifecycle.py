"""One run of any stage, from the existing-records check to its records. Pretraining, every transfer and an
evaluation go through it: a run whose records exist is finished and is skipped (``force`` runs it again and
supersedes them), and its records carry when it started, when it finished and the code that made them."""

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from dropbench.core.identity import PERCENT, RunIdentity
from dropbench.core.version import code_version

logger = logging.getLogger(__name__)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class StageRun:
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

    def record(self, metrics: dict[str, float], *, model: str, run_dir: str | Path, unit: str = PERCENT) -> list[Path]:
        """One record per metric (none without a results folder)."""
        if self.results_dir is None:
            return []
        return self.identity.write_records(
            self.results_dir,
            metrics,
            model=model,
            started=self.started,
            run_dir=run_dir,
            code_version=code_version(),
            unit=unit,
            force=self.force,
        )
