"""``dropbench eval``: an export's top-1 / top-5 on ImageNet-layout val images (or MNIST's test split), with the
export's own evaluation transform, and how well its probabilities are calibrated (``dropbench.core.calibration``:
ECE, NLL and Brier score before and after temperature scaling, with a reliability diagram beside the records),
written as records of stage ``eval``.

``--corruptions N`` measures it instead on N test images under ImageNet-C's 15 corruptions × 5 severities
(``dropbench.core.corruptions``), as protocol ``corruptions``: the mean top-1 over the 75 cells, each corruption's,
the drop from the clean top-1 on the same images, and the mCE against a reference run's errors where one is given."""

import csv
import dataclasses
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, ImageNetInfo, resolve_data_config
from torch.utils.data import DataLoader, Dataset

from dropbench.core.calibration import UNITS as CALIBRATION_UNITS
from dropbench.core.calibration import calibrate, plot_reliability
from dropbench.core.corruptions import (
    CACHE,
    CELL_COLUMNS,
    CLEAN_TOP1,
    CORRUPTED_TOP1,
    CORRUPTIONS,
    SEED,
    SEVERITIES,
    cell_top1,
    corruption_errors,
    mce_of,
    measure_corruptions,
    test_subset,
)
from dropbench.core.corruptions import (
    PROTOCOL as CORRUPTIONS_PROTOCOL,
)
from dropbench.core.embedded import EMBEDDED_ARRAYS
from dropbench.core.errors import UserInputError
from dropbench.core.export import ExportSidecar, load_exported_model
from dropbench.core.identity import CORRUPTION_DROP, MCE, Part, StageName
from dropbench.core.io import atomic_write_csv
from dropbench.core.lifecycle import Measured, RecordedRun, RunContext
from dropbench.core.loop import accuracy_metrics, autocast_for, predict_logits
from dropbench.core.readers import (
    IMAGENET_1K,
    ArrayImageDataset,
    image_folders,
    imagenet_1k_layout,
    load_embedded,
)
from dropbench.core.transforms import build_transform

logger = logging.getLogger(__name__)


def eval_transform_settings(sidecar: ExportSidecar, model: torch.nn.Module) -> dict:
    """crop_pct, interpolation, mean, std: the sidecar's ``eval_transform``, else a dropbench recipe's, else the
    timm pretrained config of the architecture."""
    if sidecar.eval_transform is not None:
        return dict(sidecar.eval_transform)
    if sidecar.recipe and sidecar.imported_from is None:
        from dropbench.pretrain.config import Recipe

        try:
            recipe = Recipe.load(sidecar.recipe)
        except UserInputError:
            recipe = None
        if recipe is not None:  # dropbench's pretraining: timm's default mean/std, the recipe's crop and resize
            return {
                "crop_pct": recipe.crop_pct,
                "interpolation": recipe.interpolation,
                "mean": IMAGENET_DEFAULT_MEAN,
                "std": IMAGENET_DEFAULT_STD,
            }
    config = resolve_data_config({}, model=model)
    return {key: config[key] for key in ("crop_pct", "interpolation", "mean", "std")}


def _dataset(data: str, transform) -> tuple[torch.utils.data.Dataset, str, list[int] | None]:
    """``(dataset, its name, the ImageNet-1k classes it holds where they are a subset)``."""
    if data in EMBEDDED_ARRAYS:
        return ArrayImageDataset(*load_embedded(data, "test"), transform=transform), data, None
    root = Path(data)
    if not root.is_dir():
        raise UserInputError("--data", f"'{data}' is neither one of {EMBEDDED_ARRAYS} nor a folder")
    if (root / "val").is_dir():
        (val,) = image_folders(root, ("val",), "--data")
        val.transform = transform
        return val, IMAGENET_1K if imagenet_1k_layout(root / "val") else root.resolve().name, None
    # a test set of ImageNet-1k classes with its class folders at the top: ImageNet-V2, -R, -A, -Sketch
    (folder,) = image_folders(root.resolve().parent, (root.resolve().name,), "--data")
    targets = imagenet_class_indices(folder.classes)
    folder.transform, folder.target_transform = transform, targets.__getitem__
    return folder, root.resolve().name, sorted(targets) if len(targets) < IMAGENET_CLASSES else None


IMAGENET_CLASSES = 1000


def imagenet_class_indices(classes: list[str]) -> list[int]:
    """Each class folder's ImageNet-1k index: a WordNet id's place in timm's ImageNet-1k synsets (ImageNet-R, -A
    and -Sketch name their folders so), or the index itself (ImageNet-V2's folders are 0 to 999)."""
    if all(name.isdigit() for name in classes):
        indices = [int(name) for name in classes]
        if max(indices) >= IMAGENET_CLASSES:
            raise UserInputError("--data", f"class folder '{max(indices)}' is no ImageNet-1k index (0 to 999)")
        return indices
    synsets = {wnid: index for index, wnid in enumerate(ImageNetInfo("imagenet-1k").label_names())}
    unknown = [name for name in classes if name not in synsets]
    if unknown:
        raise UserInputError(
            "--data",
            f"class folder '{unknown[0]}' is neither an ImageNet-1k WordNet id nor an index; "
            "give a folder with val/<class>/ for other classes",
        )
    return [synsets[name] for name in classes]


def evaluate_export(
    backbone: Path,
    data: str,
    results_dir: Path | None,
    batch_size: int = 128,
    workers: int = 4,
    device: str | None = None,
    corruptions: int = 0,
    mce_reference: Path | None = None,
    cache_dir: Path = CACHE,
) -> dict[str, float]:
    """Top-1 and top-5 (percent) of the export's classifier and its calibration, or with ``corruptions`` > 0 its
    top-1 under corruptions on that many test images; one record per metric unless ``results_dir`` is None."""
    if mce_reference is not None and not corruptions:
        raise UserInputError("--mce-reference", "normalises a corruption evaluation's mCE: give --corruptions N too")
    model, sidecar = load_exported_model(backbone)
    settings = eval_transform_settings(sidecar, model)
    size = sidecar.image_size
    transform = build_transform(settings, size, is_training=False, mean=settings["mean"], std=settings["std"])
    content = {"input_size": size, **{k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}}
    workers = min(workers, 8)
    if corruptions:
        images, labels = corruption_test_images(data, corruptions)
        cells, digest = _mce_reference(mce_reference, data, corruptions) if mce_reference else (None, None)
        content |= {"corruptions": corruptions, "corruption_seed": SEED, "mce_reference": digest}
        identity = _eval_identity(sidecar, data, CORRUPTIONS_PROTOCOL, Part.of(content))
        stage = CorruptionEvaluation(
            identity,
            model,
            sidecar,
            None,
            Path(backbone),
            batch_size,
            workers,
            device,
            images=images,
            labels=labels,
            transform=transform,
            cache_dir=Path(cache_dir),
            reference=cells,
        )
    else:
        dataset, name, subset = _dataset(data, transform)
        if subset is not None or getattr(dataset, "target_transform", None) is not None:
            if sidecar.num_classes != IMAGENET_CLASSES:
                raise UserInputError("--data", f"ImageNet-1k classes, the export's head has {sidecar.num_classes}")
        elif len(getattr(dataset, "classes", [])) > sidecar.num_classes:
            classes = len(dataset.classes)
            raise UserInputError("--data", f"{classes} classes, the export's head has {sidecar.num_classes}")
        content |= {"class_subset": subset} if subset is not None else {}
        identity = _eval_identity(sidecar, name, "val", Part.of(content))
        stage = Evaluation(identity, model, sidecar, dataset, Path(backbone), batch_size, workers, device, subset)
    # an evaluation is measured again whenever it is asked for: its records replace the earlier ones
    stage.run(results_dir, force=True)
    return stage.values


def _eval_identity(sidecar: ExportSidecar, dataset: str, protocol: str, part: Part):
    identity = sidecar.pretraining_identity().transfer("classification", dataset, protocol, 0, part)
    return dataclasses.replace(identity, stage=StageName.EVAL)


def corruption_test_images(data: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` test images (and labels) a corruption evaluation measures, drawn with the corruption seed."""
    if data not in EMBEDDED_ARRAYS:
        raise UserInputError(
            "--corruptions", f"corruptions are generated on {' or '.join(EMBEDDED_ARRAYS)}; '{data}' is neither"
        )
    images, labels = load_embedded(data, "test")
    if not 0 < count <= len(images):
        raise UserInputError("--corruptions", f"{count} images: choose 1 to {len(images)}")
    chosen = test_subset(count, len(images))
    return images[chosen], labels[chosen]


def _mce_reference(path: Path, data: str, count: int) -> tuple[list[dict], str]:
    """The reference's cells, measured on the same images, and the digest of its file."""
    cells = _read_cells(path)
    if {row["dataset"] for row in cells} != {data} or {row["images"] for row in cells} != {count}:
        raise UserInputError("--mce-reference", f"'{path}' was not measured on {count} {data} images")
    errors = corruption_errors(cell_top1(cells))
    flawless = [corruption for corruption, error in errors.items() if error <= 0]
    if flawless:
        raise UserInputError(
            "--mce-reference",
            f"'{path}' has no error under {flawless[0]}, and the mCE divides by it; choose a reference that errs "
            "under every corruption",
        )
    return cells, hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _read_cells(path: Path) -> list[dict]:
    """The per-cell top-1 of an earlier corruption evaluation (its ``corruptions/<run>.csv``)."""
    try:
        with open(path, newline="") as file:
            rows = list(csv.DictReader(file))
    except OSError as err:
        raise UserInputError("--mce-reference", f"cannot read '{path}' ({err.strerror})") from None
    wanted = {(c, str(s)) for c in CORRUPTIONS for s in SEVERITIES}
    if not rows or set(CELL_COLUMNS) - set(rows[0]) or wanted - {(r["corruption"], r["severity"]) for r in rows}:
        raise UserInputError(
            "--mce-reference", f"'{path}' is not a corruption evaluation's csv (columns {', '.join(CELL_COLUMNS)})"
        )
    try:
        return [row | {"images": int(row["images"]), "top1": float(row["top1"])} for row in rows]
    except ValueError:
        raise UserInputError("--mce-reference", f"'{path}' holds a cell whose images or top1 is no number") from None


@dataclass
class Evaluation(RecordedRun):
    """The export's classifier on a labelled dataset, as it is; ``values`` is what it measured once executed."""

    model: torch.nn.Module
    sidecar: ExportSidecar
    dataset: Dataset
    export: Path
    batch_size: int
    workers: int
    device: str | None
    # the classes the set holds, where it holds some of the head's: the logits are restricted to them (ImageNet-R
    # and -A hold 200 of ImageNet-1k's, and timm's validate.py restricts them so with --class-map)
    class_subset: list[int] | None = None
    values: dict[str, float] = field(default_factory=dict)

    def execute(self, context: RunContext) -> Measured:
        dev = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        loader = DataLoader(self.dataset, self.batch_size, num_workers=self.workers, pin_memory=dev.type == "cuda")
        logits, labels = predict_logits(self.model.to(dev), loader, dev, autocast_for(dev, True))
        if self.class_subset is not None:
            subset = torch.tensor(self.class_subset)
            logits, labels = logits[:, subset], torch.searchsorted(subset, labels)
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(labels[:, None]).any(dim=1)
        calibration, bins = calibrate(logits, labels)
        self.values = {
            "top1": accuracy_metrics(logits.argmax(dim=1), labels, logits.shape[1])["top1"],
            "top5": 100.0 * top5.double().mean().item(),
            **calibration,
        }
        if context.results_dir is not None:
            figure = Path(context.results_dir) / "figures" / "reliability" / f"{self.identity.stem().rstrip('_')}.png"
            plot_reliability(
                bins, figure, f"{self.sidecar.name} / {self.sidecar.regime or '?'} on {self.identity.dataset}"
            )
        logger.info(
            f"{self.sidecar.name} / {self.sidecar.regime or '?'} on {self.identity.dataset}: "
            f"top1 {self.values['top1']:.2f}%  top5 {self.values['top5']:.2f}%  ECE {calibration['ece']:.2f}% → "
            f"{calibration['ece_ts']:.2f}% at T {calibration['temperature']:.2f}  ({len(self.dataset)} images)"
        )
        return Measured(self.values, units=CALIBRATION_UNITS, model=self.sidecar.model, run_dir=self.export)


@dataclass
class CorruptionEvaluation(Evaluation):
    """The export's classifier on the corrupted copies of a set of test images, each cell's top-1 in a csv."""

    images: np.ndarray | None = None
    labels: np.ndarray | None = None
    transform: object = None
    cache_dir: Path = CACHE
    reference: list[dict] | None = None

    def execute(self, context: RunContext) -> Measured:
        dev = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        name, makers = self.identity.dataset, max(1, min(self.workers, os.cpu_count() or 1))
        measure = dict(batch_size=self.batch_size, device=dev, makers=makers)
        self.values, rows = measure_corruptions(
            self.model.to(dev), self.images, self.labels, self.transform, name, self.cache_dir, **measure
        )
        if self.reference is not None:
            self.values[MCE] = mce_of(rows, self.reference)
        if context.results_dir is not None:
            stem = self.identity.stem().rstrip("_")
            atomic_write_csv(Path(context.results_dir) / "corruptions" / f"{stem}.csv", CELL_COLUMNS, rows)
        shown = f"mCE {self.values[MCE]:.1f}%" if MCE in self.values else "no mCE reference"
        logger.info(
            f"{self.sidecar.name} / {self.sidecar.regime or '?'} on corrupted {name}: "
            f"top1 {self.values[CORRUPTED_TOP1]:.2f}% (clean {self.values[CLEAN_TOP1]:.2f}%, drop "
            f"{self.values[CORRUPTION_DROP]:.2f}), {shown} ({len(self.images)} images × 75 cells)"
        )
        return Measured(self.values, units={CORRUPTION_DROP: "points"}, model=self.sidecar.model, run_dir=self.export)
