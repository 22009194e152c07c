"""Embedded dense-prediction data: real MNIST test-split digits composed onto canvases.

``make_ade_digits`` writes the same kind of canvases as semantic segmentation in the ADE20K layout.

``make_coco_digits`` writes the COCO 2017 layout — ``train2017/``, ``val2017/`` and
``annotations/instances_{train,val}2017.json`` with boxes, RLE masks, areas and ten categories ('0'..'9') —
so mmdet's ``CocoDataset`` reads it exactly as it reads real COCO. Digits come from MNIST's *test* split, which
pretraining never trains on; train and val canvases use disjoint digits. Every canvas looks like MNIST — a dark,
noisy, slowly varying grey background and 1..``max_digits`` light digits of varied scale, position and
brightness, at about the scale the 32 px pretraining sees them — so that the transfer measures what the backbone
learned rather than how it copes with a new domain. Digits do not overlap: each mask is the digit's own strokes
(with ``placement="strokes"`` their boxes may overlap, as COCO's do).
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

from dropbench.core.errors import UserInputError
from dropbench.core.lock import RunLock
from dropbench.core.readers import load_mnist

DIGIT_CLASSES = tuple(str(d) for d in range(10))
# Semantic classes after mmseg's reduce_zero_label (as for ADE20K): 0 background, 1..10 the digits.
SEGMENTATION_CLASSES = ("background", *DIGIT_CLASSES)
IGNORE_INDEX = 255
PLACEMENTS = ("boxes", "strokes")


@dataclass(frozen=True)
class CanvasSpec:
    canvas: int = 96  # the canvas's width, and its height unless `height` is given
    max_digits: int = 3
    min_digit: int = 28  # side of the resized 28 px MNIST image: about the scale the 32 px pretraining sees
    max_digit: int = 44
    mask_threshold: float = 0.1  # stroke intensity above which a pixel is the digit's; its fringe (0.02, t] is
    seed: int = 0  # neither digit nor background
    # "boxes": digits' boxes do not overlap; "strokes": boxes may overlap while strokes keep `gap` px apart, which
    # packs about twice as many digits onto a canvas (an MNIST digit's box is mostly empty margin).
    placement: str = "boxes"
    gap: int = 2
    height: int | None = None  # a landscape canvas, as COCO's and ADE20K's images mostly are

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` of a canvas."""
        return (self.height or self.canvas), self.canvas


def _grow(ink: np.ndarray, pixels: int) -> np.ndarray:
    """``ink`` dilated by ``pixels`` in each direction (a square structuring element)."""
    height, width = ink.shape
    grown = np.zeros((height + 2 * pixels, width + 2 * pixels), dtype=bool)
    for dy in range(2 * pixels + 1):
        for dx in range(2 * pixels + 1):
            grown[dy : dy + height, dx : dx + width] |= ink
    return grown


def _background(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A dark, noisy, slowly varying grey background, as MNIST's own: the pretraining never saw colour."""
    corners = rng.uniform(0, 40, size=(2, 2))
    t = np.linspace(0.0, 1.0, shape[0])[:, None]
    s = np.linspace(0.0, 1.0, shape[1])[None, :]
    top = corners[0, 0] * (1 - s) + corners[0, 1] * s
    bottom = corners[1, 0] * (1 - s) + corners[1, 1] * s
    image = top * (1 - t) + bottom * t + rng.normal(0, 8, size=shape)
    return np.clip(image, 0, 255)


def compose_canvas(
    rng: np.random.Generator, digits: np.ndarray, labels: np.ndarray, spec: CanvasSpec
) -> tuple[np.ndarray, list[tuple[int, np.ndarray, np.ndarray, int]]]:
    """One RGB canvas (grey, like MNIST) and its instances as (label, binary mask, anti-aliased fringe, index of
    the digit in ``digits``).

    A digit's mask is where its (resized) stroke intensity exceeds ``spec.mask_threshold``; its fringe is the faint
    rim around it (intensity in (0.02, threshold]), neither clearly digit nor background.
    """
    shape = spec.shape
    image = _background(rng, shape)
    taken = np.zeros(shape, dtype=bool)
    instances = []
    for _ in range(int(rng.integers(1, spec.max_digits + 1))):
        index = int(rng.integers(len(digits)))
        side = int(rng.integers(spec.min_digit, spec.max_digit + 1))
        digit = np.asarray(Image.fromarray(digits[index]).resize((side, side), Image.BILINEAR), dtype=np.float64) / 255
        ink = digit > 0.02
        # What a placed digit takes of the canvas: its whole box, or its ink and `gap` px around it.
        footprint, gap = (np.ones_like(ink), 0) if spec.placement == "boxes" else (ink, spec.gap)
        grown, padded = _grow(footprint, gap), np.pad(taken, gap)
        for _attempt in range(20 if spec.placement == "boxes" else 50):
            y, x = (int(v) for v in rng.integers(0, (shape[0] - side + 1, shape[1] - side + 1)))
            if not (padded[y : y + side + 2 * gap, x : x + side + 2 * gap] & grown).any():
                break
        else:
            continue
        mask = np.zeros(shape, dtype=bool)
        mask[y : y + side, x : x + side] = digit > spec.mask_threshold
        fringe = np.zeros(shape, dtype=bool)
        fringe[y : y + side, x : x + side] = ink & (digit <= spec.mask_threshold)
        if mask.sum() < 12:
            continue
        brightness = rng.uniform(170, 255)  # brighter than the background's 0..40
        alpha = np.zeros(shape)
        alpha[y : y + side, x : x + side] = digit
        image = image * (1 - alpha) + brightness * alpha
        taken[y : y + side, x : x + side] |= footprint
        instances.append((int(labels[index]), mask, fringe, index))
    return np.repeat(image.astype(np.uint8)[..., None], 3, axis=2), instances


def _annotation(ann_id: int, image_id: int, label: int, mask: np.ndarray, source: int) -> dict:
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
        "mnist_test_index": source,  # which digit of MNIST's test split (mmdet ignores the extra key)
    }


def _write_split(root: Path, split: str, count: int, pool: "_Pool", spec: CanvasSpec, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder = root / f"{split}2017"
    folder.mkdir(parents=True)
    images, annotations = [], []
    for image_id in range(1, count + 1):
        canvas, instances = compose_canvas(rng, pool.digits, pool.labels, spec)
        file_name = f"{image_id:012d}.png"
        Image.fromarray(canvas).save(folder / file_name)
        height, width = spec.shape
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for label, mask, _fringe, index in instances:
            annotations.append(_annotation(len(annotations) + 1, image_id, label, mask, pool.first + index))
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
    return _build_once(
        root, "annotations/instances_val2017.json", _write_split, ("train", "val"), num_train, num_val, spec
    )


SPEC_FILE = "dropbench_data.json"


@dataclass(frozen=True)
class _Pool:
    """The MNIST test digits one split draws from; ``first``: the index of ``digits[0]`` in the test split."""

    digits: np.ndarray
    labels: np.ndarray
    first: int


def _build_once(root, marker: str, write_split, splits: tuple[str, str], num_train: int, num_val: int, spec) -> Path:
    """Write both splits into a temp folder beside ``root`` and rename it into place.

    A folder made earlier with the same settings is reused; one made with other settings is replaced. Processes that
    make the same folder at once (the ranks of one torchrun) take turns on its lock: the first writes it, the others
    find it made, and none moves it aside while another reads it.
    """
    root = Path(root)
    given = {key: value for key, value in spec.__dict__.items() if value is not None}  # as data made before `height`
    settings = {"splits": list(splits), "num_train": num_train, "num_val": num_val, **given}

    def made_with_these_settings() -> bool:
        spec_file = root / SPEC_FILE
        return (root / marker).exists() and spec_file.is_file() and json.loads(spec_file.read_text()) == settings

    if made_with_these_settings():
        return root
    lock = RunLock(root)
    lock.take()
    try:
        if not made_with_these_settings():
            _write_both_splits(root, write_split, splits, (num_train, num_val), spec, settings)
    finally:
        lock.release()
    return root


def _write_both_splits(root: Path, write_split, splits, counts: tuple[int, int], spec, settings: dict) -> None:
    digits, labels = load_mnist("test")
    half = len(digits) // 2  # train canvases use the first half of the test digits, val the second
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        write_split(tmp, splits[0], counts[0], _Pool(digits[:half], labels[:half], 0), spec, spec.seed)
        write_split(tmp, splits[1], counts[1], _Pool(digits[half:], labels[half:], half), spec, spec.seed + 1)
        (tmp / SPEC_FILE).write_text(json.dumps(settings))
        if root.exists():  # made with other settings: move it aside, then swap
            stale = root.with_name(f".{root.name}.stale-{os.getpid()}")
            os.rename(root, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_segmentation_split(root: Path, split: str, count: int, pool: "_Pool", spec: CanvasSpec, seed: int) -> None:
    rng = np.random.default_rng(seed)
    images, annotations = root / "images" / split, root / "annotations" / split
    images.mkdir(parents=True)
    annotations.mkdir(parents=True)
    for index in range(1, count + 1):
        canvas, instances = compose_canvas(rng, pool.digits, pool.labels, spec)
        # ADE20K's encoding: 0 = unlabelled (ignored through reduce_zero_label), 1 = background, 2..11 = digits.
        label_map = np.ones(canvas.shape[:2], dtype=np.uint8)
        for label, mask, fringe, _index in instances:
            label_map[fringe] = 0
            label_map[mask] = label + 2
        name = f"ADE_{split}_{index:08d}"
        Image.fromarray(canvas).save(images / f"{name}.jpg", quality=95)
        Image.fromarray(label_map).save(annotations / f"{name}.png")


def make_ade_digits(root: str | Path, num_train: int = 200, num_val: int = 50, spec: CanvasSpec = CanvasSpec()) -> Path:
    """The same canvases as semantic segmentation in the ADE20K layout (``images/`` + ``annotations/``).

    Annotation PNGs use ADE20K's encoding, so mmseg's ``ADE20KDataset`` with ``reduce_zero_label=True`` reads
    them with ADE20K's own pipeline: the digits' anti-aliased fringe is 0 and becomes the ignore index 255;
    background becomes class 0 and digit d class d + 1 (``SEGMENTATION_CLASSES``).
    """
    return _build_once(
        root, "annotations/validation", _write_segmentation_split, ("training", "validation"), num_train, num_val, spec
    )


EMBEDDED_DATA = {"coco_digits": make_coco_digits, "ade_digits": make_ade_digits}


def make_from_config(embedded: dict, root: str | Path, expected_type: str) -> Path:
    """The data an mm* config's ``embedded_data = dict(type=..., num_train=..., num_val=..., canvas=..., height=...,
    max_digits=..., min_digit=..., max_digit=..., placement=..., gap=...)`` asks for."""
    if embedded.get("type") != expected_type:
        raise UserInputError("embedded_data.type", f"'{embedded.get('type')}' is not '{expected_type}'")
    fields = {}
    for key in ("canvas", "height", "max_digits", "min_digit", "max_digit", "gap", "num_train", "num_val"):
        if key in embedded:
            value, least = embedded[key], 0 if key == "gap" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise UserInputError(f"embedded_data.{key}", f"{value!r} is not an integer ≥ {least}")
            fields[key] = value
    counts = {key: fields.pop(key, default) for key, default in (("num_train", 200), ("num_val", 50))}
    if "placement" in embedded:
        if embedded["placement"] not in PLACEMENTS:
            raise UserInputError("embedded_data.placement", f"'{embedded['placement']}' is not one of {PLACEMENTS}")
        fields["placement"] = embedded["placement"]
    spec = CanvasSpec(**fields)
    make = EMBEDDED_DATA[expected_type]
    return make(root, counts["num_train"], counts["num_val"], spec)
