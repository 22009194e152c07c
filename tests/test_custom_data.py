"""Your own data through det and seg: images of any size and aspect, a COCO json as annotation tools write it, an
ADE-layout folder, set by ``--cfg-options custom_data.*`` on the shipped custom configs."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from .conftest import MICRO_BACKBONES, make_untrained_export

mmdet = pytest.importorskip("mmdet")
from dropbench.transfer.backbone import TimmBackbone  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ODD_SIZES = [(87, 123), (45, 61), (64, 33)]


@pytest.mark.parametrize("family", [*MICRO_BACKBONES, "resnet10t"])  # resnet10t: a timm model no config ships
def test_any_input_size_is_padded_for_the_backbone_and_cropped_back(exports, tmp_path, family):
    export = exports[family] if family in exports else make_untrained_export(family, tmp_path / family, "random_init")
    adapter = TimmBackbone(str(export), img_size=128 if family == "mixer_micro" else None)
    for training in (True, False):
        adapter.train(training)
        for height, width in ODD_SIZES:
            with torch.no_grad():
                features = adapter(torch.randn(2, 3, height, width))
            shapes = [tuple(f.shape[-2:]) for f in features]
            assert shapes == [(math.ceil(height / s), math.ceil(width / s)) for s in adapter.out_strides], family
            assert all(torch.isfinite(f).all() for f in features)


@pytest.mark.parametrize("family", MICRO_BACKBONES)
def test_the_image_keeps_its_place_padding_goes_below_and_right(exports, family):
    """An odd-sized image gives the maps of the same image with zeros added below and right, cropped back."""
    adapter = TimmBackbone(str(exports[family]), img_size=64 if family == "mixer_micro" else None).eval()
    image = torch.randn(1, 3, 45, 61)
    explicit = torch.nn.functional.pad(image, (0, 64 - 61, 0, 64 - 45))
    with torch.no_grad():
        odd, padded = adapter(image), adapter(explicit)
    for stride, small, full in zip(adapter.out_strides, odd, padded, strict=True):
        rows, cols = math.ceil(45 / stride), math.ceil(61 / stride)
        torch.testing.assert_close(small, full[..., :rows, :cols])


def test_a_fixed_size_backbone_refuses_a_larger_input_with_the_fix(exports):
    adapter = TimmBackbone(str(exports["mixer_micro"]), img_size=64)
    with pytest.raises(ValueError, match="slide"):
        adapter(torch.randn(1, 3, 65, 40))


def _ade_folder_from_real_photos(root: Path) -> Path:
    """scikit-learn's two sample photos (427×640) cut into odd, non-square pieces, labelled by brightness
    (ADE20K's encoding: 0 unlabelled, 1..3 dark, mid, bright)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    pieces = {
        "training": [(0, 0, 0, 201, 317), (1, 40, 100, 173, 245), (0, 200, 300, 227, 191)],
        "validation": [(1, 0, 0, 141, 263), (0, 150, 20, 99, 157)],
    }
    for split, cuts in pieces.items():
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for index, (photo, top, left, height, width) in enumerate(cuts):
            image = photos[photo][top : top + height, left : left + width]
            gray = image.mean(axis=2)
            labels = 1 + np.digitize(gray, np.quantile(gray, [1 / 3, 2 / 3])).astype(np.uint8)
            Image.fromarray(image).save(root / "images" / split / f"{index}.jpg", quality=95)
            Image.fromarray(labels).save(root / "annotations" / split / f"{index}.png")
    return root


def _records(results: Path) -> dict[str, dict]:
    return {r["metric"]: r for r in (json.loads(p.read_text()) for p in (results / "records").glob("*.json"))}


@pytest.mark.slow
@pytest.mark.parametrize("family", MICRO_BACKBONES)
def test_a_non_square_ade_layout_folder_goes_through_transfer_seg(cli, exports, tmp_path, monkeypatch, family):
    monkeypatch.chdir(tmp_path)
    data = _ade_folder_from_real_photos(tmp_path / "photos")
    code, _, err = cli(
        *("transfer", "seg", "--backbone", exports[family], "--config", CONFIGS / "segmentation" / "custom_ade_cpu.py"),
        *("--work-dir", tmp_path / "work", "--results", tmp_path / "results", "--cfg-options"),
        f"custom_data.root={data}",
        "custom_data.classes=[dark,mid,bright]",
        *("train_cfg.max_iters=3", "train_dataloader.batch_size=2"),
    )
    assert code == 0, err
    records = _records(tmp_path / "results")
    assert {"mIoU", "mAcc", "aAcc"} <= set(records)
    assert all(r["dataset"] == "photos" and math.isfinite(r["value"]) for r in records.values())


def _tool_style_coco(root: Path) -> Path:
    """COCO instances as annotation tools write them: a `_background_` category 0 without annotations, image and
    annotation ids from 0, images wider than tall (the embedded canvases padded on the right)."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    from dropbench.transfer.embedded_data import CanvasSpec, make_coco_digits

    source = make_coco_digits(root / "source", 8, 4, CanvasSpec(seed=3))
    for split in ("train", "val"):
        coco = json.loads((source / f"annotations/instances_{split}2017.json").read_text())
        (root / "data" / split).mkdir(parents=True)
        new_id = {image["id"]: index for index, image in enumerate(coco["images"])}
        for image in coco["images"]:
            pixels = np.asarray(Image.open(source / f"{split}2017" / image["file_name"]))
            wide = np.pad(pixels, ((0, 0), (0, 37), (0, 0)))
            Image.fromarray(wide).save(root / "data" / split / image["file_name"])
            image.update(id=new_id[image["id"]], width=wide.shape[1])
        for index, annotation in enumerate(coco["annotations"]):
            mask = np.pad(mask_utils.decode(annotation["segmentation"]), ((0, 0), (0, 37)))
            rle = mask_utils.encode(np.asfortranarray(mask))
            annotation.update(id=index, image_id=new_id[annotation["image_id"]])
            annotation["segmentation"] = {"size": list(rle["size"]), "counts": rle["counts"].decode()}
        coco["categories"].insert(0, {"id": 0, "name": "_background_", "supercategory": ""})
        (root / "data" / f"{split}.json").write_text(json.dumps(coco))
    return root / "data"


@pytest.mark.slow
@pytest.mark.parametrize("family", MICRO_BACKBONES)
def test_a_tool_written_coco_json_goes_through_transfer_det(cli, exports, tmp_path, monkeypatch, family):
    monkeypatch.chdir(tmp_path)
    data = _tool_style_coco(tmp_path)
    code, _, err = cli(
        *("transfer", "det", "--backbone", exports[family], "--config", CONFIGS / "detection" / "custom_coco_cpu.py"),
        *("--work-dir", tmp_path / "work", "--results", tmp_path / "results", "--cfg-options"),
        f"custom_data.root={data}",
        "custom_data.classes=[0,1,2,3,4,5,6,7,8,9]",
        *("custom_data.train_ann=train.json", "custom_data.val_ann=val.json"),
        *("custom_data.train_img=train/", "custom_data.val_img=val/", "custom_data.name=tool_digits"),
        "train_cfg.max_iters=3",
    )
    assert code == 0, err
    records = _records(tmp_path / "results")
    assert set(records) == {"box_AP", "box_AP50", "box_AP75", "mask_AP", "mask_AP50", "mask_AP75"}
    assert all(r["dataset"] == "tool_digits" and 0 <= r["value"] <= 100 for r in records.values())


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
