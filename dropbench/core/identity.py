"""Run identity and result records: the one module that says which run a record belongs to.

A run is identified by its fields — backbone, regime, recipe, seed, stage, task, dataset, protocol and transfer
seed — and by the digest of its settings: everything that changes its result (the resolved backbone, regime and
recipe, the transfer task's config after its options), seeds and code version excluded. The settings come in
*parts* (``backbone``, ``regime``, ``recipe``, ``task``), each with its own digest and the overrides it was given,
so that the comparison table can show two variants of one name apart (``cpu`` and ``cpu·epochs=4``).

Every stage writes its records through :meth:`RunIdentity.write_records`, and the suite planner, the demo and
``compare`` use the same names: a record file is ``<stem><metric>.json`` with the stem made of the fields and the
digest. A record is written once, atomically; a run whose records exist is finished. Re-running it (``--force``)
moves the old records into ``records/superseded/``.
"""

import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path
from typing import Any

from dropbench.core.io import atomic_write_json, atomic_write_many, json_text
from dropbench.core.lock import RunLock

logger = logging.getLogger(__name__)

PERCENT = "%"
NATS = "nats"  # a mean cross-entropy
TRAIN_LOSS = "train_loss"  # pretraining's final training loss, measured with dropout off
CALIBRATION_METRICS = ("ece", "nll", "brier")  # each also after temperature scaling, as <name>_ts
EXPORT_EPOCH = "recipe.export_epoch"  # the sweep field of an export written during pretraining (transfer over time)
CORRUPTION_DROP = "corruption_drop"  # clean top-1 minus the mean top-1 over the corruptions, on the same images
MCE = "mce"  # mean corruption error against a reference's errors
# metrics whose values are mostly below 1, printed with a third decimal (a loss of ~0.3 nats)
FINE_METRICS = frozenset({TRAIN_LOSS, "nll", "nll_ts", "brier", "brier_ts"})
# metrics whose best value is the lowest
LOWER_IS_BETTER = frozenset(
    {TRAIN_LOSS, CORRUPTION_DROP, MCE, *CALIBRATION_METRICS, *(f"{name}_ts" for name in CALIBRATION_METRICS)}
)
RECORDS_FOLDER = "records"
SUPERSEDED_FOLDER = "superseded"
DIGEST_CHARS = 16
LEGACY = "legacy"  # the digest of a part that a record written before settings digests does not know


def settings_digest(settings: Any) -> str:
    """A short sha256 of the canonical JSON of ``settings``."""
    text = json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_CHARS]


def overrides_text(overrides: Mapping[str, Any] | Sequence[str]) -> str:
    """``key=value`` items as one label, in the order given: ``epochs=4 lr=0.001``."""
    if isinstance(overrides, Mapping):
        overrides = [
            f"{key}={json.dumps(value) if not isinstance(value, str) else value}" for key, value in overrides.items()
        ]
    return " ".join(overrides)


@dataclass(frozen=True)
class Part:
    """One part of a run's settings: the digest of its resolved content and the overrides it was given."""

    digest: str
    overrides: str = ""

    @classmethod
    def of(cls, content: Any, overrides: Mapping[str, Any] | Sequence[str] = ()) -> "Part":
        return cls(settings_digest(content), overrides_text(overrides))


def _safe(part: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(part))


def now() -> str:
    """The time now, as records and sidecars state it (UTC, to the second)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class StageName(StrEnum):
    """What a run is, in its identity and records."""

    PRETRAIN = "pretrain"
    TRANSFER = "transfer"
    EVAL = "eval"  # an export's classifier evaluated as it is


@dataclass(frozen=True)
class RunFields:
    """The fields that name a run. A run's identity has them, and so has each of its records: a field added here is
    in both, and in ``compare --format records``."""

    backbone: str
    regime: str
    recipe: str
    seed: int
    stage: StageName
    task: str  # "classification", "detection", "segmentation"
    dataset: str
    protocol: str  # "from_scratch", a det/seg config name, "finetune", "linear", ...
    transfer_seed: int | None = None  # the seed of a transfer run (None for pretraining)
    # what a sweep set in the run's variants, by part and field: {"regime.dropout.rate": 0.2} (empty: no sweep)
    sweep: Mapping[str, Any] = field(default_factory=dict)
    parts: Mapping[str, Part] = field(default_factory=dict)


def run_fields(source: RunFields) -> dict[str, Any]:
    """The run's fields of an identity or a record, by name."""
    return {f.name: getattr(source, f.name) for f in fields(RunFields)}


@dataclass(frozen=True)
class RunIdentity(RunFields):
    """A run's fields and settings parts: the names of its records, and the check that it is finished."""

    @property
    def digest(self) -> str:
        """The settings digest: of every part's digest (seeds and names are fields, not settings)."""
        return settings_digest({name: part.digest for name, part in self.parts.items()})

    def stem(self) -> str:
        """The start of the file names of this run's records: all but the metric (it ends with ``__``)."""
        names = [self.backbone, self.regime, self.recipe, f"seed{self.seed}", self.stage, self.task, self.dataset]
        names.append(self.protocol)
        if self.transfer_seed is not None:
            names.append(f"tseed{self.transfer_seed}")
        return "__".join(_safe(name) for name in [*names, self.digest[:12]]) + "__"

    def at_epoch(self, epoch: int) -> "RunIdentity":
        """The identity of the export a pretraining wrote after ``epoch`` (recipe ``export_epochs``): the run's, with
        the epoch in its sweep and in its recipe part. Its transfers are a recipe variant of their own, paired by
        seed with the same epoch of the other regimes."""
        recipe = self.parts["recipe"]
        digest = settings_digest({"recipe": recipe.digest, "export_epoch": epoch})
        overrides = " ".join(text for text in (recipe.overrides, f"export_epoch={epoch}") if text)
        parts = {**self.parts, "recipe": Part(digest, overrides)}
        return dataclasses.replace(self, sweep={**self.sweep, EXPORT_EPOCH: epoch}, parts=parts)

    def transfer(
        self,
        task: str,
        dataset: str,
        protocol: str,
        transfer_seed: int,
        task_part: Part,
        stage: StageName = StageName.TRANSFER,
    ) -> "RunIdentity":
        """The identity of a transfer (or with ``stage`` eval, an evaluation) of this (pretraining) run's export."""
        parts = {**{k: v for k, v in self.parts.items() if k != "task"}, "task": task_part}
        return dataclasses.replace(
            self,
            stage=stage,
            task=task,
            dataset=dataset,
            protocol=protocol,
            transfer_seed=transfer_seed,
            parts=parts,
        )

    # ---------------------------------------------------------------------------------------- export sidecars

    def to_json(self) -> dict:
        return asdict(self) | {"parts": {name: asdict(part) for name, part in self.parts.items()}}

    @classmethod
    def from_json(cls, data: Mapping) -> "RunIdentity":
        """An identity as ``to_json`` (or a record) gives it."""
        names = {f.name for f in fields(RunFields)}
        parts = {
            name: part if isinstance(part, Part) else Part(**part) for name, part in (data.get("parts") or {}).items()
        }
        return cls(
            **{k: v for k, v in data.items() if k in names} | {"parts": parts, "stage": StageName(data["stage"])}
        )

    # ---------------------------------------------------------------------------------------- records

    def existing_records(self, results_dir: str | Path) -> list[Path]:
        """This run's records under ``results_dir/records`` (they differ only in their metric)."""
        folder = Path(results_dir) / RECORDS_FOLDER
        if not folder.is_dir():
            return []
        stem = self.stem()
        return sorted(p for p in folder.glob(f"{stem}*.json") if "__" not in p.name[len(stem) :])

    def finished_message(self, records: Sequence[Path]) -> str:
        where = records[0].parent
        return (
            f"finished: {len(records)} record(s) of this run are in {where} (e.g. {records[0].name}); "
            "pass --force to run it again"
        )

    def write_records(
        self,
        results_dir: str | Path,
        metrics: Mapping[str, float],
        measurement: "Measurement",
        *,
        started: str,
        code_version: str,
        force: bool = False,
        units: Mapping[str, str] | None = None,
    ) -> list[Path]:
        """Write one record per metric, in the measurement's unit unless ``units`` names the metric's own. Records
        of this identity written meanwhile (by a process with another run folder) are kept, and these values are not
        recorded, unless ``force``, which supersedes them. The check and the write hold the identity's records lock,
        so that two writers do not both pass the check."""
        results_dir = Path(results_dir)
        lock = RunLock(results_dir / RECORDS_FOLDER / ".locks" / self.stem())
        try:
            lock.take()
            existing = self.existing_records(results_dir)
            if existing and not force:
                logger.warning(
                    f"records of this run appeared in {existing[0].parent} while it ran (another process wrote them): "
                    "they are kept and this run's values are not recorded; --force supersedes them"
                )
                return []
            supersede(existing)
            run = {
                **run_fields(self),
                **{f.name: getattr(measurement, f.name) for f in fields(Measurement)},
                "run_dir": str(Path(measurement.run_dir).resolve()),
                "config_hash": self.digest,
                "code_version": code_version,
                "started": started,
                "finished": now(),
            }
            units = units or {}
            records = [
                ResultRecord(**(run | {"unit": units.get(metric, run["unit"])}), metric=metric, value=float(value))
                for metric, value in metrics.items()
            ]
            return atomic_write_many({record.path(results_dir): record.writer() for record in records})
        finally:
            lock.release()


def supersede(records: Sequence[Path]) -> list[Path]:
    """Move records into ``records/superseded/`` (with a time stamp, so nothing is overwritten there)."""
    moved = []
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    for path in records:
        target = path.parent / SUPERSEDED_FOLDER / f"{path.stem}.{stamp}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        moved.append(target)
    return moved


@dataclass(frozen=True, kw_only=True)
class Measurement:
    """What a run measured with, and where: each record of the run carries these fields."""

    model: str  # the timm model
    run_dir: str | Path
    unit: str = PERCENT


@dataclass(frozen=True, kw_only=True)
class ResultRecord(Measurement, RunFields):
    """One metric of one finished run, as it is stored (one JSON file): the run's fields (``RunFields``), what it
    measured with (``Measurement``), and the metric's value. ``parts`` holds plain mappings here, as in the file."""

    metric: str
    value: float
    config_hash: str  # the settings digest (RunIdentity.digest)
    code_version: str
    started: str
    finished: str

    def identity(self) -> RunIdentity:
        return RunIdentity.from_json(run_fields(self))

    def filename(self) -> str:
        return f"{self.identity().stem()}{_safe(self.metric)}.json"

    def path(self, results_dir: str | Path) -> Path:
        return Path(results_dir) / RECORDS_FOLDER / self.filename()

    def writer(self) -> Callable[[str], None]:
        text = json_text(asdict(self))
        return lambda tmp: Path(tmp).write_text(text)

    def write(self, results_dir: str | Path) -> Path:
        return atomic_write_json(self.path(results_dir), asdict(self))


# Fields every record has had since the first version; the later ones have defaults, so older records stay readable.
REQUIRED_RECORD_FIELDS = tuple(
    f.name for f in fields(ResultRecord) if f.default is MISSING and f.default_factory is MISSING
)
