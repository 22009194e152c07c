"""Small real data in COCO 2017's and ADE20K's layouts at their images' real sizes, and untrained exports of the
paper's backbones at their real widths: what the paper-scale configs need to take real steps on a CPU.

The images are MNIST test-split digits on landscape canvases (640×480 as most COCO images, 683×512 as ADE20K's
after its 2048×512 resize), written by the same generator as the embedded data; the configs read them with
mmdet's ``CocoDataset`` and mmseg's ``ADE20KDataset`` from ``data/coco`` and ``data/ade/ADEChallengeData2016``
exactly as they read the real sets.
"""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from dropbench.core.readers import load_mnist
from dropbench.transfer.embedded_data import CanvasSpec, make_ade_digits, make_coco_digits

PAPER_BACKBONES = ("vit_tiny", "vit_base", "swin_femto", "convnext_femto", "mixer_s32", "mixer_b16")
FIXED_GRID = ("mixer_s32", "mixer_b16")  # a token grid that is part of the weights

COCO_SPEC = CanvasSpec(canvas=640, height=480, max_digits=8, min_digit=48, max_digit=160, placement="strokes")
ADE_SPEC = CanvasSpec(canvas=683, height=512, max_digits=8, min_digit=48, max_digit=160, placement="strokes")

# Execution-level options that make a paper-scale config take one real step and one evaluation: iterations, batch,
# loader workers and checkpoints; every model, data and optimisation setting stays the config's own.
DET_SMOKE = (
    "train_cfg.max_epochs=1",  # one training image: one iteration, then the epoch's evaluation
    "train_dataloader.batch_size=1",
    "train_dataloader.num_workers=0",
    "train_dataloader.persistent_workers=False",
    "val_dataloader.num_workers=0",
    "val_dataloader.persistent_workers=False",
    "default_hooks.checkpoint=None",
)
SEG_SMOKE = (
    "train_cfg.max_iters=1",
    "train_cfg.val_interval=1",
    "train_dataloader.batch_size=2",  # UperNet's pooled 1x1 branch needs 2 values per channel for its BatchNorm
    "train_dataloader.num_workers=0",
    "train_dataloader.persistent_workers=False",
    "val_dataloader.num_workers=0",
    "val_dataloader.persistent_workers=False",
    "default_hooks.checkpoint=None",
)


def make_paper_data(root: Path, num_train: int = 2, num_val: int = 1) -> Path:
    """``root/data/coco`` and ``root/data/ade/ADEChallengeData2016``, where the paper-scale configs look (their
    ``data_root`` is relative to the folder a run starts in). COCO's json names its categories as COCO's first ten
    (mmdet's ``CocoDataset`` selects categories by name), digit d as COCO's category d + 1."""
    from mmdet.datasets import CocoDataset

    coco = make_coco_digits(root / "data" / "coco", num_train, num_val, COCO_SPEC)
    names = CocoDataset.METAINFO["classes"]
    for split in ("train", "val"):
        path = coco / "annotations" / f"instances_{split}2017.json"
        data = json.loads(path.read_text())
        data["categories"] = [dict(c, name=names[c["id"] - 1], supercategory="coco") for c in data["categories"]]
        path.write_text(json.dumps(data))
    make_ade_digits(root / "data" / "ade" / "ADEChallengeData2016", num_train, num_val, ADE_SPEC)
    return root


def make_image_folder(root: Path, per_class_train: int = 6, per_class_test: int = 2, classes: int = 2) -> Path:
    """An ImageFolder tree (``train/<class>/``, ``test/<class>/``) of MNIST test digits as 28 px PNGs: the
    classification transfer resizes them to the backbone's 224 px."""
    digits, labels = load_mnist("test")
    for split, count, offset in (("train", per_class_train, 0), ("test", per_class_test, per_class_train)):
        for label in range(classes):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for index in np.flatnonzero(labels == label)[offset : offset + count]:
                Image.fromarray(digits[index]).convert("RGB").save(folder / f"{index:05d}.png")
    return root
