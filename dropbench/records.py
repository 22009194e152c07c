"""Result records: one JSON object per metric of a finished run, written once, atomically."""

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from dropbench.io import atomic_write_json

PERCENT = "%"


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
        parts = [
            self.backbone,
            self.regime,
            self.recipe,
            f"seed{self.seed}",
            self.stage,
            self.task,
            self.dataset,
            self.protocol,
            self.metric,
        ]
        return "__".join(re.sub(r"[^A-Za-z0-9_.-]+", "-", str(p)) for p in parts) + ".json"

    def write(self, results_dir: str | Path) -> Path:
        return atomic_write_json(Path(results_dir) / "records" / self.filename(), asdict(self))
