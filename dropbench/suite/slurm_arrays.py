"""How a suite's runs go to Slurm as few sbatch calls as the dependencies allow: job arrays.

Every pretraining to run goes in one array. Each transfer (one task at one transfer seed, the same command at
every grid point) goes in one array too, whose task *i* reads the export of pretraining task *i*: Slurm's
``aftercorr`` starts it the moment that one pretraining has succeeded, as a job of its own would (a transfer of
the exports written during pretraining goes in one array per export epoch). The transfers of
exports that exist already go in one array per kind, with nothing to wait for. A transfer whose pretraining does
not sit at its own index (backbones that list their own transfers) is submitted alone, ``afterok`` that task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dropbench.tasks import PRETRAIN_KIND

if TYPE_CHECKING:
    from dropbench.suite.plan import Run


@dataclass(frozen=True)
class Batch:
    """One sbatch call: one run as a job, or an array of runs of one kind (task ``i`` runs ``runs[i]``)."""

    kind: str
    runs: tuple[Run, ...]
    follows: int | None = None  # the batch (by index) whose task i this array's task i waits for (aftercorr)

    @property
    def is_array(self) -> bool:
        return len(self.runs) > 1


def transfer_entry(run: Run) -> str:
    """What a transfer is at every grid point: its folder name (task, and transfer seed when the suite has several),
    and the epoch of the export it reads where that is not the last (``cls-optdigits-linear@epoch2``)."""
    point, _, entry = run.name.rpartition("/")
    epoch = point.partition("@")[2]
    return f"{entry}@{epoch}" if epoch else entry


def plan_batches(runs: Sequence[Run], waiting_elsewhere: frozenset[str] = frozenset()) -> list[Batch]:
    """The sbatch calls that submit ``runs`` (the unfinished runs in plan order). ``waiting_elsewhere``: pretraining
    runs that are queued already (not in ``runs``); their transfers go alone, ``afterok`` that job."""
    pretrainings = tuple(run for run in runs if run.kind == PRETRAIN_KIND)
    batches = [Batch(PRETRAIN_KIND, pretrainings)] if pretrainings else []
    index = {run.name: i for i, run in enumerate(pretrainings)}
    independent: dict[str, list[Run]] = {}
    dependent: dict[str, list[Run]] = {}
    for run in runs:
        if run.kind == PRETRAIN_KIND:
            continue
        waits = run.after is not None and (run.after in index or run.after in waiting_elsewhere)
        (dependent.setdefault(transfer_entry(run), []) if waits else independent.setdefault(run.kind, [])).append(run)
    for kind, group in independent.items():
        batches.append(Batch(kind, tuple(group)))
    for group in dependent.values():
        aligned = [index.get(run.after) for run in group] == list(range(len(group)))
        if aligned and len(group) > 1:
            batches.append(Batch(group[0].kind, tuple(group), follows=0))
        else:
            batches.extend(Batch(run.kind, (run,)) for run in group)
    return batches
