"""A third dense task is one module: this one. It registers ``boxdet``, box detection with mmdet's Faster R-CNN, as a
``DenseTask`` whose runner spec is the detection's with its box metrics only, and takes it through a suite's plan,
the planned command and the table. The module imports no mm* itself: the spec is made when a run needs it."""

import importlib.util
import json
from dataclasses import replace

import pytest
import yaml

from dropbench.core.configs import CONFIG_ROOT
from dropbench.core.identity import ResultRecord
from dropbench.tasks import DenseTask, dense_task, register, transfer_tasks
from tests.conftest import make_untrained_export

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mmdet") is None, reason="needs mmdet")

BOX_METRICS = ("coco/bbox_mAP", "coco/bbox_mAP_50", "coco/bbox_mAP_75")


def box_spec():
    """Mask R-CNN's runner spec (wiring, data, checks) with its box metrics only."""
    from dropbench.transfer.detection import DETECTION

    return replace(DETECTION, metrics={key: DETECTION.metrics[key] for key in BOX_METRICS})


BOX_DETECTION = register(
    dense_task(
        DenseTask(
            kind="boxdet",
            task="box_detection",
            help="COCO box detection with Faster R-CNN (mmdet)",
            spec="tests.test_dense_task:box_spec",
            configs=CONFIG_ROOT / "detection",
            example="mask_rcnn_cpu.py",
            headline_metrics=("box_AP",),
        )
    )
)

# The embedded Mask R-CNN config as a Faster R-CNN: the same detector without its mask branch, evaluated on boxes.
FASTER_RCNN = {
    "model.type": "FasterRCNN",
    "model.roi_head.mask_roi_extractor": None,
    "model.roi_head.mask_head": None,
    "train_dataloader.dataset.pipeline.1.with_mask": False,
    "val_evaluator.metric": "bbox",
}
TINY = {"train_cfg.max_iters": 2, "embedded_data.num_train": 8, "embedded_data.num_val": 4}


@pytest.mark.slow
def test_a_third_dense_task_plans_runs_and_records_through_the_command_line(cli, tmp_path, monkeypatch):
    assert list(transfer_tasks())[:3] == ["det", "seg", "cls"] and "boxdet" in transfer_tasks()
    monkeypatch.chdir(tmp_path)  # the embedded config makes data/coco_digits under the working folder
    export = make_untrained_export("vit_micro", tmp_path / "export")
    suite = tmp_path / "boxes.yaml"
    entry = {"kind": "boxdet", "config": "mask_rcnn_cpu", "cfg_options": FASTER_RCNN | TINY}
    output = {"runs": str(tmp_path / "runs"), "results": str(tmp_path / "results")}
    suite.write_text(yaml.safe_dump({"exports": [str(export)], "transfers": [entry], "output": output}))

    code, out, err = cli("suite", suite, "--dry-run")
    assert code == 0, err
    from dropbench.suite import load_suite

    (run,) = load_suite(suite).runs
    assert run.name.endswith("/boxdet-mask_rcnn_cpu") and not run.finished()

    code, _, err = cli(*run.command)  # the command an executor starts
    assert code == 0, err
    assert run.finished(), "the run wrote the records its plan names"
    records = [ResultRecord(**json.loads(path.read_text())) for path in run.records()]
    assert {record.metric for record in records} == {"box_AP", "box_AP50", "box_AP75"}
    assert all(record.identity() == run.identity for record in records)
    assert all(0 <= record.value <= 100 and record.task == "box_detection" for record in records)
    (dumped,) = run.work_dir.glob("*.py")  # mmengine's copy of the config it ran, unformatted but the same config
    assert "FasterRCNN" in dumped.read_text() and "mask_head=None" in dumped.read_text()
    from mmengine.config import Config

    reloaded = Config.fromfile(str(dumped))
    assert reloaded.model.type == "FasterRCNN" and reloaded.model.roi_head.mask_head is None
    assert reloaded.train_cfg.max_iters == 2

    code, out, err = cli("compare", "--results", tmp_path / "results")
    assert code == 0, err
    assert "AP" in out and "coco_digits" in out
