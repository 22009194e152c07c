"""A metric for the tests: which validation images reached the evaluation, and which process evaluated each.

Loaded into a run by ``custom_imports``; it writes its file where mmengine computes metrics, after the results of
every process were gathered (rank 0), so the file shows what the evaluation as a whole saw."""

import json
from pathlib import Path

from mmengine.dist import get_rank
from mmengine.evaluator import BaseMetric
from mmengine.registry import METRICS


@METRICS.register_module()
class EvaluatedImages(BaseMetric):
    default_prefix = "evaluated"

    def __init__(self, file: str, **kwargs):
        super().__init__(**kwargs)
        self.file = file

    def process(self, data_batch, data_samples) -> None:
        self.results.extend((get_rank(), Path(sample["img_path"]).name) for sample in data_samples)

    def compute_metrics(self, results: list) -> dict:
        Path(self.file).write_text(json.dumps(results))
        return {}
