"""Result records: one JSON object per metric of a finished run, written once, atomically."""

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from dropbench.io import atomic_write_json

PERCENT = "%"


def _safe(part) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(part))


def record_stem(
    backbone: str, regime: str, recipe: str, seed: int, stage: str, task: str, dataset: str, protocol: str
) -> str:
    """The start of the file names of one run's records: all but the metric (it ends with ``__``)."""
    parts = (backbone, regime, recipe, f"seed{seed}", stage, task, dataset, protocol)
    return "__".join(_safe(p) for p in parts) + "__"


@dataclass(frozen=True)
class ResultRecord:
    backbone: str
    model: str
    regime: str
    recipe: str
    seed: int
    stage: str
    task: str
    dataset: str
    protocol: str
    metric: str
    value: float
    unit: str
    config_hash: str
    code_version: str
    started: str
    finished: str
    run_dir: str

    def filename(self) -> str:
        return (
            record_stem(
                self.backbone, self.regime, self.recipe, self.seed, self.stage, self.task, self.dataset, self.protocol
            )
            + f"{_safe(self.metric)}.json"
        )

    @classmethod
    def for_transfer(cls, sidecar: dict, **fields) -> "ResultRecord":
        """A transfer record: backbone, model, regime, recipe and seed come from the export's sidecar."""
        return cls(
            backbone=sidecar.get("backbone", sidecar["model"]),
            model=sidecar["model"],
            regime=sidecar.get("regime", "unknown"),
            recipe=sidecar.get("recipe", "unknown"),
            seed=int(sidecar.get("seed", 0)),
            stage="transfer",
            unit=PERCENT,
            **fields,
        )

    def write(self, results_dir: str | Path) -> Path:
        return atomic_write_json(Path(results_dir) / "records" / self.filename(), asdict(self))
