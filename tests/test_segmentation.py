import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

mmseg = pytest.importorskip("mmseg")
from dropbench.transfer.embedded_data import SEGMENTATION_CLASSES, make_from_config  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "segmentation"


@pytest.fixture(scope="session")
def ade_digits(tmp_path_factory) -> Path:
    """The embedded config's data, fewer of them: a run with the same settings takes it as it is."""
    from mmengine.config import Config

    embedded = Config.fromfile(CONFIGS / "upernet_cpu.py").embedded_data.to_dict() | {"num_train": 8, "num_val": 4}
    return make_from_config(embedded, tmp_path_factory.mktemp("data") / "ade_digits", "ade_digits")


def test_mmsegs_dataset_reads_the_ade20k_layout_with_background_and_ignore_as_documented(ade_digits):
    from mmseg.datasets import BaseSegDataset
    from mmseg.datasets.transforms import LoadAnnotations

    dataset = BaseSegDataset(
        data_root=str(ade_digits),
        data_prefix=dict(img_path="images/validation", seg_map_path="annotations/validation"),
        img_suffix=".jpg",
        seg_map_suffix=".png",
        reduce_zero_label=True,
        metainfo=dict(classes=SEGMENTATION_CLASSES),
        pipeline=[LoadAnnotations()],
    )
    assert len(dataset) == 4
    sample = dataset[0]
    raw = np.asarray(Image.open(sample["seg_map_path"]))
    loaded = sample["gt_seg_map"]
    # ADE20K's encoding: 0 (the digits' fringe) → ignore 255; 1 (background) → class 0; 2..11 → digits 0..9
    assert np.all(loaded[raw == 0] == 255)
    assert np.all(loaded[raw == 1] == 0)
    digits = raw >= 2
    assert digits.any() and np.all(loaded[digits] == raw[digits] - 1)
    assert set(np.unique(loaded)) <= set(range(11)) | {255}


def _run_seg(cli, export, tmp_path, *options):
    return cli(
        "transfer",
        "seg",
        "--backbone",
        export,
        "--config",
        CONFIGS / "upernet_cpu.py",
        "--work-dir",
        tmp_path / "work",
        "--results",
        tmp_path / "results",
        "--cfg-options",
        # the sizes of the ade_digits fixture, so that the embedded data is taken as it is
        "embedded_data.num_train=8",
        "embedded_data.num_val=4",
        *options,
    )


def _with_data(tmp_path: Path, source: Path, monkeypatch) -> Path:
    root = tmp_path / "data" / "ade_digits"
    shutil.copytree(source, root)
    monkeypatch.chdir(tmp_path)
    return root


def test_an_image_without_its_annotation_is_named(cli, exports, ade_digits, tmp_path, monkeypatch):
    root = _with_data(tmp_path, ade_digits, monkeypatch)
    victim = sorted((root / "annotations" / "training").glob("*.png"))[0]
    victim.unlink()
    code, _, err = _run_seg(cli, exports["vit_micro"], tmp_path, "train_cfg.max_iters=1")
    assert code == 2 and err.count("\n") == 1 and victim.name in err
    assert not (tmp_path / "work").exists()


def test_an_annotation_of_another_size_is_named(cli, exports, ade_digits, tmp_path, monkeypatch):
    root = _with_data(tmp_path, ade_digits, monkeypatch)
    victim = sorted((root / "annotations" / "validation").glob("*.png"))[1]
    Image.fromarray(np.ones((40, 40), dtype=np.uint8)).save(victim)
    code, _, err = _run_seg(cli, exports["vit_micro"], tmp_path, "train_cfg.max_iters=1")
    assert code == 2 and victim.name in err and "40x40" in err


def test_a_label_outside_the_class_range_is_named(cli, exports, ade_digits, tmp_path, monkeypatch):
    root = _with_data(tmp_path, ade_digits, monkeypatch)
    victim = sorted((root / "annotations" / "training").glob("*.png"))[0]
    label = np.asarray(Image.open(victim)).copy()
    label[0, 0] = 40
    Image.fromarray(label).save(victim)
    code, _, err = _run_seg(cli, exports["vit_micro"], tmp_path, "train_cfg.max_iters=1")
    assert code == 2 and "label 40" in err and victim.name in err


def test_a_wrong_num_classes_is_named(cli, exports, ade_digits, tmp_path, monkeypatch):
    _with_data(tmp_path, ade_digits, monkeypatch)
    code, _, err = _run_seg(
        cli, exports["vit_micro"], tmp_path, "model.decode_head.num_classes=12", "model.auxiliary_head.num_classes=12"
    )
    assert code == 2 and "num_classes" in err and err.count("\n") == 1


def test_a_class_count_that_disagrees_with_the_loss_class_weights_is_refused_before_the_run(cli, exports, tmp_path):
    """The usual mmseg way to another class count: a config that inherits the embedded one and sets 20 classes.
    The embedded loss weighs 11 classes: one line naming both fields, not torch's error in the first step."""
    config = tmp_path / "upernet_20_classes.py"
    config.write_text(
        f"_base_ = [{str(CONFIGS / 'upernet_cpu.py')!r}]\n"
        "model = dict(decode_head=dict(num_classes=20), auxiliary_head=dict(num_classes=20))\n"
    )
    code, out, err = cli(
        *("transfer", "seg", "--backbone", exports["vit_micro"], "--config", config),
        *("--work-dir", tmp_path / "work", "--results", tmp_path / "results"),
    )
    assert code == 2 and err.count("\n") == 1, err
    assert "model.decode_head.num_classes" in err and "loss_decode.class_weight has 11 weights" in err
    assert not (tmp_path / "work").exists() and not (tmp_path / "results").exists()


def test_the_paper_scale_config_builds_upernet_on_an_export(exports):
    from mmseg.registry import MODELS

    from dropbench.transfer.mm_runner import configure
    from dropbench.transfer.segmentation import SEGMENTATION

    cfg = configure(SEGMENTATION, exports["swin_micro"], CONFIGS / "upernet_160k_ade20k.py", [])  # as a run does
    model = MODELS.build(cfg.model)
    assert type(model).__name__ == "EncoderDecoder" and cfg.model.test_cfg.mode == "whole"  # as ConvNeXt's and Swin's
    assert cfg.train_cfg.max_iters == 160000 and cfg.evaluate_tta and cfg.model.decode_head.num_classes == 150


@pytest.mark.slow
@pytest.mark.parametrize("family", ["vit_micro", "convnext_micro"])
def test_a_short_cpu_fine_tune_writes_finite_miou_records(cli, exports, tmp_path, monkeypatch, family):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run_seg(cli, exports[family], tmp_path, "train_cfg.max_iters=3", "evaluate_tta=True")
    assert code == 0, err
    records = {
        json.loads(p.read_text())["metric"]: json.loads(p.read_text())
        for p in (tmp_path / "results" / "records").glob("*.json")
    }
    assert set(records) == {"mIoU", "mAcc", "aAcc", "mIoU_ms_flip"}
    for record in records.values():
        assert math.isfinite(record["value"]) and 0 <= record["value"] <= 100
        assert record["task"] == "segmentation" and record["dataset"] == "ade_digits"


def test_the_class_weighted_loss_is_pytorchs_weighted_mean_over_labelled_pixels():
    import torch

    from dropbench.transfer.segmentation import ClassWeightedCrossEntropyLoss

    torch.manual_seed(0)
    logits = torch.randn(2, 11, 8, 8)
    labels = torch.randint(0, 11, (2, 8, 8))
    labels[0, :2] = 255  # ignored pixels, which mmseg 1.2's own class-weighted loss fails on
    weights = [0.1] + [1.0] * 10
    loss = ClassWeightedCrossEntropyLoss(class_weight=weights, loss_weight=0.4)(logits, labels, ignore_index=255)
    expected = torch.nn.functional.cross_entropy(logits, labels, weight=torch.tensor(weights), ignore_index=255)
    assert loss.item() == pytest.approx(0.4 * expected.item(), rel=1e-6)


def test_multi_scale_flip_resizes_to_the_2048x512_scale_times_each_ratio_as_convnexts_ms_config():
    from mmengine.config import Config

    cfg = Config.fromfile(CONFIGS / "upernet_160k_ade20k.py")
    resizes, flips = cfg.tta_pipeline[1].transforms[:2]
    ratios = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    assert [tuple(r.scale) for r in resizes] == [(int(2048 * r), int(512 * r)) for r in ratios]
    assert all(r.keep_ratio and "scale_factor" not in r for r in resizes) and [f.prob for f in flips] == [0.0, 1.0]


def test_a_fixed_grid_backbone_is_refused_by_a_whole_image_config_naming_the_protocol(
    cli, exports, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run_seg(cli, exports["mixer_micro"], tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "fixed token grid" in err and "RandomCrop no larger than 32×32" in err
    assert not (tmp_path / "work").exists() and not (tmp_path / "data").exists()
