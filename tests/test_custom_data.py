"""Your own data through det and seg: images of any size and aspect, a COCO json as annotation tools write it, an
ADE-layout folder, set by ``--cfg-options custom_data.*`` on the shipped custom configs."""

import json
import math
from pathlib import Path

import pytest
import torch

from .conftest import MICRO_BACKBONES, make_untrained_export

mmdet = pytest.importorskip("mmdet")
from dropbench.transfer.backbone import TimmBackbone  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ODD_SIZES = [(87, 123), (45, 61), (64, 33)]
# The micro Mixer's token grid is fixed at 32 px: these configs' inputs refuse it (tests/test_detection.py and
# tests/test_segmentation.py check the refusals).
VARIABLE_SIZE_BACKBONES = [family for family in MICRO_BACKBONES if family != "mixer_micro"]
MIXER_SIZES = [(23, 31), (32, 17), (9, 32)]  # within the 32×32 a micro Mixer takes


@pytest.mark.parametrize("family", [*MICRO_BACKBONES, "resnet10t"])  # resnet10t: a timm model no config ships
def test_any_input_size_is_padded_for_the_backbone_and_cropped_back(exports, tmp_path, family):
    export = exports[family] if family in exports else make_untrained_export(family, tmp_path / family, "random_init")
    adapter = TimmBackbone(str(export))
    for training in (True, False):
        adapter.train(training)
        for height, width in MIXER_SIZES if family == "mixer_micro" else ODD_SIZES:
            with torch.no_grad():
                features = adapter(torch.randn(2, 3, height, width))
            shapes = [tuple(f.shape[-2:]) for f in features]
            assert shapes == [(math.ceil(height / s), math.ceil(width / s)) for s in adapter.out_strides], family
            assert all(torch.isfinite(f).all() for f in features)


@pytest.mark.parametrize("family", MICRO_BACKBONES)
def test_the_image_keeps_its_place_padding_goes_below_and_right(exports, family):
    """An odd-sized image gives the maps of the same image with zeros added below and right, cropped back."""
    adapter = TimmBackbone(str(exports[family])).eval()
    (height, width), side = ((23, 29), 32) if family == "mixer_micro" else ((45, 61), 64)
    image = torch.randn(1, 3, height, width)
    explicit = torch.nn.functional.pad(image, (0, side - width, 0, side - height))
    with torch.no_grad():
        odd, padded = adapter(image), adapter(explicit)
    for stride, small, full in zip(adapter.out_strides, odd, padded, strict=True):
        rows, cols = math.ceil(height / stride), math.ceil(width / stride)
        torch.testing.assert_close(small, full[..., :rows, :cols])


def test_a_fixed_size_backbone_refuses_a_larger_input_with_the_fix(exports):
    adapter = TimmBackbone(str(exports["mixer_micro"]))
    with pytest.raises(ValueError, match="slide"):
        adapter(torch.randn(1, 3, 33, 20))


# Data no one on this project wrote: labelme's own examples (Debian's labelme-examples), real Pascal VOC photos
# of 500×338 and 500×375 pixels annotated in labelme, exported by its labelme2coco (a COCO json with a category 0
# `_background_` without annotations and ids from 0) and its labelme2voc (class-index PNGs, 255 on the borders).
LABELME = Path("/usr/share/doc/labelme-examples/examples")
LABELME_COCO = LABELME / "instance_segmentation" / "data_dataset_coco"
LABELME_VOC = LABELME / "semantic_segmentation" / "data_dataset_voc"
needs_labelme = pytest.mark.skipif(
    not (LABELME_COCO / "annotations.json").is_file(),
    reason=f"labelme's examples are not in {LABELME} (Debian: apt-get install labelme-examples)",
)


def _records(results: Path) -> dict[str, dict]:
    return {r["metric"]: r for r in (json.loads(p.read_text()) for p in (results / "records").glob("*.json"))}


@needs_labelme
@pytest.mark.slow
@pytest.mark.parametrize("family", VARIABLE_SIZE_BACKBONES)
@pytest.mark.parametrize("inference", ["whole", "slide"])
def test_labelmes_voc_masks_go_through_transfer_seg(cli, exports, tmp_path, monkeypatch, family, inference):
    """Non-square photos whose resized sides are no multiple of any stride, in training, whole-image and slide
    inference (windows taller than the 43-px-high resized image: odd-sized windows)."""
    monkeypatch.chdir(tmp_path)
    slide = ["model.test_cfg.mode=slide", "model.test_cfg.crop_size=(48,48)", "model.test_cfg.stride=(32,32)"]
    code, _, err = cli(
        *("transfer", "seg", "--backbone", exports[family], "--config", CONFIGS / "segmentation" / "custom_ade_cpu.py"),
        *("--work-dir", tmp_path / "work", "--results", tmp_path / "results", "--cfg-options"),
        f"custom_data.root={LABELME_VOC}",
        f"custom_data.classes={LABELME_VOC / 'class_names.txt'}",  # one per line: 'potted plant'
        *("custom_data.train_img=JPEGImages", "custom_data.train_ann=SegmentationClassPNG"),
        *("custom_data.val_img=JPEGImages", "custom_data.val_ann=SegmentationClassPNG"),
        *("custom_data.reduce_zero_label=False", "custom_data.name=labelme_voc"),
        *("train_cfg.max_iters=3", "train_dataloader.batch_size=2"),
        *(slide if inference == "slide" else []),
    )
    assert code == 0, err
    records = _records(tmp_path / "results")
    assert {"mIoU", "mAcc", "aAcc"} <= set(records)
    assert all(r["dataset"] == "labelme_voc" and 0 <= r["value"] <= 100 for r in records.values())


@needs_labelme
@pytest.mark.slow
@pytest.mark.parametrize("family", VARIABLE_SIZE_BACKBONES)
def test_labelmes_coco_json_goes_through_transfer_det(cli, exports, tmp_path, monkeypatch, family):
    monkeypatch.chdir(tmp_path)
    coco = json.loads((LABELME_COCO / "annotations.json").read_text())
    classes = tmp_path / "classes.txt"  # the json's categories but its `_background_`, some with spaces
    classes.write_text("\n".join(c["name"] for c in coco["categories"] if c["name"] != "_background_"))
    code, _, err = cli(
        *("transfer", "det", "--backbone", exports[family], "--config", CONFIGS / "detection" / "custom_coco_cpu.py"),
        *("--work-dir", tmp_path / "work", "--results", tmp_path / "results", "--cfg-options"),
        f"custom_data.root={LABELME_COCO}",
        f"custom_data.classes={classes}",
        *("custom_data.train_ann=annotations.json", "custom_data.val_ann=annotations.json"),
        *("custom_data.train_img=", "custom_data.val_img=", "custom_data.name=labelme_voc"),
        "train_cfg.max_iters=3",
    )
    assert code == 0, err
    records = _records(tmp_path / "results")
    assert set(records) == {"box_AP", "box_AP50", "box_AP75", "mask_AP", "mask_AP50", "mask_AP75"}
    assert all(r["dataset"] == "labelme_voc" and 0 <= r["value"] <= 100 for r in records.values())


def test_a_custom_config_without_its_folder_names_the_option(cli, exports, tmp_path):
    code, _, err = cli(
        *(
            "transfer",
            "det",
            "--backbone",
            exports["vit_micro"],
            "--config",
            CONFIGS / "detection" / "custom_coco_cpu.py",
        ),
        *("--work-dir", tmp_path / "work", "--results", tmp_path / "results"),
    )
    assert code == 2 and "custom_data.root" in err and "--cfg-options" in err
    assert not (tmp_path / "work").exists()


def test_a_missing_class_name_file_is_named_before_anything_is_made(cli, exports, tmp_path):
    work = tmp_path / "work"
    code, _, err = cli(
        *("transfer", "seg", "--backbone", exports["vit_micro"]),
        *("--config", CONFIGS / "segmentation" / "custom_ade_cpu.py", "--work-dir", work),
        *("--cfg-options", f"custom_data.root={tmp_path}"),
        f"custom_data.classes={tmp_path / 'no_such_classes.txt'}",
    )
    assert code == 2 and err.count("\n") == 1 and "custom_data.classes" in err and "no_such_classes.txt" in err
    assert not work.exists()


def test_a_run_on_several_processes_is_another_experiment(exports, tmp_path, monkeypatch):
    """The total batch grows with the processes (auto_scale_lr scales the lr to it): the settings digest says so."""
    from dropbench.transfer.mm_runner import load_config, task_identity

    config = CONFIGS / "segmentation" / "custom_ade_cpu.py"
    options = [f"custom_data.root={tmp_path}", "custom_data.classes=[a,b]"]
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    alone = task_identity(load_config(config, options), config, options)[2]
    monkeypatch.setenv("WORLD_SIZE", "8")
    eight = task_identity(load_config(config, options), config, options)[2]
    assert alone.digest != eight.digest


@pytest.mark.parametrize(
    ("task", "config"),
    [("detection", "custom_coco_1x.py"), ("segmentation", "custom_ade_160k.py"), ("segmentation", "custom_ade_cpu.py")],
)
def test_custom_data_reaches_loaders_evaluator_and_heads_of_every_custom_config(exports, tmp_path, task, config):
    from dropbench.transfer.mm_runner import configure, task_identity

    if task == "detection":
        from dropbench.transfer.detection import DETECTION as spec
    else:
        from dropbench.transfer.segmentation import SEGMENTATION as spec
    options = [f"custom_data.root={tmp_path}", "custom_data.classes=[road,tree,sky]"]
    cfg = configure(spec, exports["swin_micro"], CONFIGS / task / config, options)
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        dataset = cfg[loader].dataset
        assert dataset.data_root == str(tmp_path) and tuple(dataset.metainfo.classes) == ("road", "tree", "sky")
    if task == "detection":
        assert cfg.val_evaluator.ann_file == str(tmp_path / "annotations/instances_val2017.json")
        heads = (cfg.model.roi_head.bbox_head, cfg.model.roi_head.mask_head)
    else:
        assert cfg.train_dataloader.dataset.type == "BaseSegDataset"
        heads = (cfg.model.decode_head, cfg.model.auxiliary_head)
    assert [head.num_classes for head in heads] == [3, 3]
    assert task_identity(cfg, CONFIGS / task / config, options)[0] == tmp_path.name
