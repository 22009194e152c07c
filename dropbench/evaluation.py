"""``dropbench eval``: an export's top-1 / top-5 on ImageNet-layout val images (or MNIST's test split), with the
export's own evaluation transform, and how well its probabilities are calibrated (``dropbench.core.calibration``:
ECE, NLL and Brier score before and after temperature scaling, with a reliability diagram beside the records),
written as records of stage ``eval``.

``--corruptions N`` measures it instead on N test images under ImageNet-C's 15 corruptions × 5 severities
(``dropbench.core.corruptions``), as protocol ``corruptions``: the mean top-1 over the 75 cells, each corruption's,
the drop from the clean top-1 on the same images, and the mCE against a reference run's errors where one is given.
An ImageNet-C folder (``<corruption>/<severity>/<class>/``) is measured so as it is, without --corruptions.

It is the registry's ``eval`` task (``dropbench.tasks.evaluation``), which a suite runs on every export: the
options give the settings (``eval_settings``), which give the records' identity (``EvalSettings.part``)."""

import csv
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
    summarise_cells,
    test_subset,
)
from dropbench.core.corruptions import (
    PROTOCOL as CORRUPTIONS_PROTOCOL,
)
from dropbench.core.embedded import EMBEDDED_ARRAYS
from dropbench.core.errors import UserInputError
from dropbench.core.export import ExportSidecar, load_exported_model
from dropbench.core.identity import CORRUPTION_DROP, MCE, Part, RunIdentity
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


@dataclass(frozen=True)
class EvalSettings:
    """What an evaluation measures, from its options alone: the export's own settings (its input size and
    evaluation transform) are the export's, which the records' pretraining identity names.

    ``data`` is an embedded set, a folder with ``val/<class>/``, a folder of ImageNet-1k class folders
    (ImageNet-V2, -R, -A, -Sketch) or an ImageNet-C folder (``<corruption>/<severity>/<class>/``)."""

    data: str
    dataset: str  # as the records name it
    protocol: str  # "val", or "corruptions"
    corruptions: int = 0  # generated corruptions of that many test images (embedded sets)
    mce_reference: Path | None = None
    reference: list[dict] | None = field(default=None, compare=False, repr=False)  # its cells
    reference_digest: str | None = None
    class_subset: list[int] | None = None  # the ImageNet-1k classes a folder holds, where they are a subset
    imagenet_c: bool = False  # a folder in ImageNet-C's layout
    batch_size: int = 128
    workers: int = 4
    device: str | None = None

    def part(self) -> Part:
        """The records' task part: what tells this evaluation's variants apart."""
        content: dict = {"class_subset": self.class_subset} if self.class_subset is not None else {}
        if self.protocol == CORRUPTIONS_PROTOCOL:
            images = "imagenet-c folder" if self.imagenet_c else self.corruptions
            content |= {"corruptions": images, "corruption_seed": SEED, "mce_reference": self.reference_digest}
        return Part.of(content)


def eval_settings(
    data: str,
    corruptions: int = 0,
    mce_reference: Path | None = None,
    batch_size: int = 128,
    workers: int = 4,
    device: str | None = None,
) -> EvalSettings:
    """An evaluation's options checked before any export is read (a suite's plan checks them so)."""
    imagenet_c = imagenet_c_layout(Path(data))
    if mce_reference is not None and not corruptions and not imagenet_c:
        raise UserInputError("--mce-reference", "normalises a corruption evaluation's mCE: give --corruptions N too")
    common = dict(batch_size=batch_size, workers=min(workers, 8), device=device)
    if imagenet_c:
        if corruptions:
            raise UserInputError("--corruptions", f"'{data}' holds its corrupted images already; leave it out")
        name = Path(data).resolve().name
        cells, digest = _mce_reference(mce_reference, name, None) if mce_reference else (None, None)
        subset = _class_subset(_class_names(Path(data) / CORRUPTIONS[0] / str(SEVERITIES[0])))
        return EvalSettings(data, name, CORRUPTIONS_PROTOCOL, 0, mce_reference, cells, digest, subset, True, **common)
    if corruptions:
        corruption_test_images(data, corruptions)
        cells, digest = _mce_reference(mce_reference, data, corruptions) if mce_reference else (None, None)
        return EvalSettings(data, data, CORRUPTIONS_PROTOCOL, corruptions, mce_reference, cells, digest, **common)
    name, subset = _describe_data(data)
    return EvalSettings(data, name, "val", class_subset=subset, **common)


def imagenet_c_layout(root: Path) -> bool:
    """Whether a folder is in ImageNet-C's layout: a folder per corruption, a folder per severity in each."""
    return (root / CORRUPTIONS[0] / str(SEVERITIES[0])).is_dir()


def _class_names(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(entry.name for entry in entries if entry.is_dir())


def _class_subset(classes: list[str]) -> list[int] | None:
    targets = imagenet_class_indices(classes)
    return sorted(targets) if len(targets) < IMAGENET_CLASSES else None


def _describe_data(data: str) -> tuple[str, list[int] | None]:
    """``(the set's name, the ImageNet-1k classes it holds where they are a subset)``, from its folders alone."""
    if data in EMBEDDED_ARRAYS:
        return data, None
    root = Path(data)
    if not root.is_dir():
        raise UserInputError(
            "--data", f"'{data}' is neither one of {EMBEDDED_ARRAYS} nor a folder; give a set name or a folder"
        )
    if (root / "val").is_dir():
        return IMAGENET_1K if imagenet_1k_layout(root / "val") else root.resolve().name, None
    # a test set of ImageNet-1k classes with its class folders at the top: ImageNet-V2, -R, -A, -Sketch
    return root.resolve().name, _class_subset(_class_names(root))


def _dataset(data: str, transform, check_images: bool = True) -> Dataset:
    """The labelled images of an evaluation's ``data``; class folders of ImageNet-1k classes are labelled with
    their ImageNet-1k index."""
    if data in EMBEDDED_ARRAYS:
        return ArrayImageDataset(*load_embedded(data, "test"), transform=transform)
    root = Path(data)
    if (root / "val").is_dir():
        (val,) = image_folders(root, ("val",), "--data")
        val.transform = transform
        return val
    (folder,) = image_folders(root.resolve().parent, (root.resolve().name,), "--data", check_images)
    folder.transform, folder.target_transform = transform, imagenet_class_indices(folder.classes).__getitem__
    return folder


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
    """Top-1 and top-5 (percent) of the export's classifier and its calibration, or with ``corruptions`` > 0 (or
    an ImageNet-C folder) its top-1 under corruptions; one record per metric unless ``results_dir`` is None."""
    from dropbench.core.export import read_sidecar
    from dropbench.tasks.evaluation import EVAL_TASK

    settings = eval_settings(data, corruptions, mce_reference, batch_size, workers, device)
    identity = EVAL_TASK.run_identity(settings, read_sidecar(backbone).pretraining_identity(), None)
    return measure_export(Path(backbone), settings, identity, results_dir, cache_dir)


def measure_export(
    backbone: Path, settings: EvalSettings, identity: RunIdentity, results_dir: Path | None, cache_dir: Path = CACHE
) -> dict[str, float]:
    """Run the evaluation ``settings`` describe on the export, as ``identity``; its values."""
    model, sidecar = load_exported_model(backbone)
    transform_settings = eval_transform_settings(sidecar, model)
    mean, std = transform_settings["mean"], transform_settings["std"]
    transform = build_transform(transform_settings, sidecar.image_size, is_training=False, mean=mean, std=std)
    common = (identity, model, sidecar, Path(backbone), settings, transform)
    if settings.protocol == CORRUPTIONS_PROTOCOL:
        _check_head(sidecar, settings.imagenet_c, settings.class_subset)
        stage = CorruptionEvaluation(*common, cache_dir=Path(cache_dir))
    else:
        dataset = _dataset(settings.data, transform)
        _check_head(sidecar, getattr(dataset, "target_transform", None) is not None, settings.class_subset)
        if len(getattr(dataset, "classes", [])) > sidecar.num_classes:
            classes = len(dataset.classes)
            raise UserInputError("--data", f"{classes} classes, the export's head has {sidecar.num_classes}")
        stage = Evaluation(*common, dataset=dataset)
    # an evaluation is measured again whenever it is asked for: its records replace the earlier ones
    stage.run(results_dir, force=True)
    return stage.values


def _check_head(sidecar: ExportSidecar, imagenet_classes: bool, subset: list[int] | None) -> None:
    if (imagenet_classes or subset is not None) and sidecar.num_classes != IMAGENET_CLASSES:
        raise UserInputError("--data", f"ImageNet-1k classes, the export's head has {sidecar.num_classes}")


def corruption_test_images(data: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` test images (and labels) a corruption evaluation measures, drawn with the corruption seed."""
    if data not in EMBEDDED_ARRAYS:
        raise UserInputError(
            "--corruptions",
            f"corruptions are generated on {' or '.join(EMBEDDED_ARRAYS)}; '{data}' is neither (an ImageNet-C "
            "folder needs no --corruptions)",
        )
    images, labels = load_embedded(data, "test")
    if not 0 < count <= len(images):
        raise UserInputError("--corruptions", f"{count} images: choose 1 to {len(images)}")
    chosen = test_subset(count, len(images))
    return images[chosen], labels[chosen]


def _mce_reference(path: Path, data: str, count: int | None) -> tuple[list[dict], str]:
    """The reference's cells, measured on the same images (``count`` of them; None: an ImageNet-C folder's, which
    are compared cell by cell once its folders are read), and the digest of its file."""
    cells = _read_cells(path)
    if {row["dataset"] for row in cells} != {data} or (count is not None and {r["images"] for r in cells} != {count}):
        what = f"{count} {data} images" if count is not None else f"'{data}'"
        raise UserInputError("--mce-reference", f"'{path}' was not measured on {what}")
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
    export: Path
    settings: EvalSettings
    transform: object
    dataset: Dataset | None = None  # the labelled images (a corruption evaluation reads its own)
    values: dict[str, float] = field(default_factory=dict)

    def predict(self, dataset: Dataset, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and labels; where the set holds some of the head's classes the logits are restricted to them
        (ImageNet-R and -A hold 200 of ImageNet-1k's, and timm's validate.py restricts them so with --class-map)."""
        batch, workers = self.settings.batch_size, self.settings.workers
        loader = DataLoader(dataset, batch, num_workers=workers, pin_memory=dev.type == "cuda")
        logits, labels = predict_logits(self.model.to(dev), loader, dev, autocast_for(dev, True))
        if self.settings.class_subset is not None:
            subset = torch.tensor(self.settings.class_subset)
            logits, labels = logits[:, subset], torch.searchsorted(subset, labels)
        return logits, labels

    def device(self) -> torch.device:
        return torch.device(self.settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def execute(self, context: RunContext) -> Measured:
        logits, labels = self.predict(self.dataset, self.device())
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
    """The export's classifier on corrupted copies of test images (generated ones, or an ImageNet-C folder's),
    each cell's top-1 in a csv."""

    cache_dir: Path = CACHE

    def execute(self, context: RunContext) -> Measured:
        dev, settings = self.device(), self.settings
        if settings.imagenet_c:
            self.values, rows = self._measure_folders(dev)
            images = f"{rows[0]['images']} images"
        else:
            chosen, labels = corruption_test_images(settings.data, settings.corruptions)
            makers = max(1, min(settings.workers, os.cpu_count() or 1))
            measure = dict(batch_size=settings.batch_size, device=dev, makers=makers)
            self.values, rows = measure_corruptions(
                self.model.to(dev), chosen, labels, self.transform, settings.dataset, self.cache_dir, **measure
            )
            images = f"{len(chosen)} images"
        if settings.reference is not None:
            self.values[MCE] = mce_of(rows, settings.reference)
        if context.results_dir is not None:
            stem = self.identity.stem().rstrip("_")
            atomic_write_csv(Path(context.results_dir) / "corruptions" / f"{stem}.csv", CELL_COLUMNS, rows)
        shown = f"mCE {self.values[MCE]:.1f}%" if MCE in self.values else "no mCE reference"
        clean = self.values.get(CLEAN_TOP1)
        clean = f" (clean {clean:.2f}%, drop {self.values[CORRUPTION_DROP]:.2f})" if clean is not None else ""
        logger.info(
            f"{self.sidecar.name} / {self.sidecar.regime or '?'} on corrupted {settings.dataset}: "
            f"top1 {self.values[CORRUPTED_TOP1]:.2f}%{clean}, {shown} ({images} × 75 cells)"
        )
        return Measured(self.values, units={CORRUPTION_DROP: "points"}, model=self.sidecar.model, run_dir=self.export)

    def _measure_folders(self, dev: torch.device) -> tuple[dict[str, float], list[dict]]:
        """Each cell of an ImageNet-C folder (``<corruption>/<severity>/<class>/``): its top-1, as
        ``measure_corruptions`` gives it for generated cells (ImageNet-C has no clean images: no drop)."""
        from tqdm import tqdm

        root = Path(self.settings.data)
        cells = [f"{c}/{s}" for c in CORRUPTIONS for s in SEVERITIES]
        missing = [cell for cell in cells if not (root / cell).is_dir()]
        if missing:
            raise UserInputError("--data", f"'{root}' has no {missing[0]}/ folder: ImageNet-C has 15 × 5 cells")
        # 75 × 50,000 files: no header is read before the run
        folders = {cell: _dataset(str(root / cell), self.transform, False) for cell in cells}
        if self.settings.reference is not None:
            expected = {f"{r['corruption']}/{r['severity']}": r["images"] for r in self.settings.reference}
            differing = [cell for cell, folder in folders.items() if len(folder) != expected[cell]]
            if differing:
                raise UserInputError("--mce-reference", f"its {differing[0]} cell holds other images than '{root}'s")
        top1 = {}
        for cell, folder in tqdm(folders.items(), desc=f"corrupted {self.settings.dataset}"):
            logits, labels = self.predict(folder, dev)
            top1[cell] = 100.0 * logits.argmax(dim=1).eq(labels).double().mean().item()
        return summarise_cells(top1, self.settings.dataset, {cell: len(folder) for cell, folder in folders.items()})
