"""Embedded dense-prediction data: real MNIST test-split digits composed onto canvases.

``make_coco_digits`` writes the COCO 2017 layout — ``train2017/``, ``val2017/`` and
``annotations/instances_{train,val}2017.json`` with boxes, RLE masks, areas and ten categories ('0'..'9') —
so mmdet's ``CocoDataset`` reads it exactly as it reads real COCO. Digits come from MNIST's *test* split, which
pretraining never trains on; train and val canvases use disjoint digits. Every canvas has a smooth colour
gradient with noise for background and 1..``max_digits`` digits of varied scale, position and colour; digits
do not overlap, so each mask is the digit's own stroke pixels.
"""

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from pretrain.data import load_mnist

DIGIT_CLASSES = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class CanvasSpec:
    canvas: int = 128
    max_digits: int = 4
    min_digit: int = 20
    max_digit: int = 56
    seed: int = 0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    corners = rng.uniform(0, 150, size=(2, 2, 3))
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    s = np.linspace(0.0, 1.0, size)[None, :, None]
    top = corners[0, 0] * (1 - s) + corners[0, 1] * s
    bottom = corners[1, 0] * (1 - s) + corners[1, 1] * s
    image = top * (1 - t) + bottom * t + rng.normal(0, 6, size=(size, size, 3))
    return np.clip(image, 0, 255)


def compose_canvas(
    rng: np.random.Generator, digits: np.ndarray, labels: np.ndarray, spec: CanvasSpec
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One RGB canvas and its instances as (label, binary mask) pairs."""
    size = spec.canvas
    image = _background(rng, size)
    taken = np.zeros((size, size), dtype=bool)
    instances = []
    for _ in range(int(rng.integers(1, spec.max_digits + 1))):
        index = int(rng.integers(len(digits)))
        side = int(rng.integers(spec.min_digit, spec.max_digit + 1))
        digit = np.asarray(Image.fromarray(digits[index]).resize((side, side), Image.BILINEAR), dtype=np.float64) / 255
        for _attempt in range(20):
            y, x = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            if not taken[y : y + side, x : x + side].any():
                break
        else:
            continue
        mask = np.zeros((size, size), dtype=bool)
        mask[y : y + side, x : x + side] = digit > 0.5
        if mask.sum() < 12:
            continue
        colour = rng.uniform(150, 255, size=3)  # brighter than the background's 0..150
        alpha = np.zeros((size, size, 1))
        alpha[y : y + side, x : x + side, 0] = digit
        image = image * (1 - alpha) + colour * alpha
        taken[y : y + side, x : x + side] = True
        instances.append((int(labels[index]), mask))
    return image.astype(np.uint8), instances


def _annotation(ann_id: int, image_id: int, label: int, mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": label + 1,
        "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")},
        "area": float(mask_utils.area(rle)),
        "bbox": [x, y, w, h],
        "iscrowd": 0,
    }


def _write_split(root: Path, split: str, count: int, digits, labels, spec: CanvasSpec, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder = root / f"{split}2017"
    folder.mkdir(parents=True)
    images, annotations = [], []
    for image_id in range(1, count + 1):
        canvas, instances = compose_canvas(rng, digits, labels, spec)
        file_name = f"{image_id:012d}.png"
        Image.fromarray(canvas).save(folder / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": spec.canvas, "width": spec.canvas})
        for label, mask in instances:
            annotations.append(_annotation(len(annotations) + 1, image_id, label, mask))
    categories = [{"id": i + 1, "name": name, "supercategory": "digit"} for i, name in enumerate(DIGIT_CLASSES)]
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": categories,
        "info": {"description": f"MNIST test-split digits on {spec.canvas}px canvases (dropbench)"},
    }
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(coco))


def make_coco_digits(
    root: str | Path, num_train: int = 200, num_val: int = 50, spec: CanvasSpec = CanvasSpec()
) -> Path:
    """Write the dataset to ``root`` unless it is already there; built in a temp folder, then renamed."""
    root = Path(root)
    if (root / "annotations" / "instances_val2017.json").is_file():
        return root
    digits, labels = load_mnist("test")
    half = len(digits) // 2
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        _write_split(tmp, "train", num_train, digits[:half], labels[:half], spec, spec.seed)
        _write_split(tmp, "val", num_val, digits[half:], labels[half:], spec, spec.seed + 1)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
