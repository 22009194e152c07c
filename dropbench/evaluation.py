"""``dropbench eval``: an export's top-1 / top-5 on ImageNet-layout val images (or MNIST's test split), with the
export's own evaluation transform, and how well its probabilities are calibrated (``dropbench.core.calibration``:
ECE, NLL and Brier score before and after temperature scaling, with a reliability diagram beside the records),
written as records of stage ``eval``."""

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, resolve_data_config
from torch.utils.data import DataLoader, Dataset

from dropbench.core.calibration import UNITS as CALIBRATION_UNITS
from dropbench.core.calibration import calibrate
from dropbench.core.embedded import EMBEDDED_ARRAYS
from dropbench.core.errors import UserInputError
from dropbench.core.export import ExportSidecar, load_exported_model
from dropbench.core.identity import Part, StageName
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
from dropbench.plots import plot_reliability

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


def _dataset(data: str, transform) -> tuple[torch.utils.data.Dataset, str]:
    if data in EMBEDDED_ARRAYS:
        return ArrayImageDataset(*load_embedded(data, "test"), transform=transform), data
    root = Path(data)
    if not root.is_dir():
        raise UserInputError("--data", f"'{data}' is neither one of {EMBEDDED_ARRAYS} nor a folder with val/")
    (val,) = image_folders(root, ("val",), "--data")
    val.transform = transform
    return val, IMAGENET_1K if imagenet_1k_layout(root / "val") else root.resolve().name


def evaluate_export(
    backbone: Path,
    data: str,
    results_dir: Path | None,
    batch_size: int = 128,
    workers: int = 4,
    device: str | None = None,
) -> dict[str, float]:
    """Top-1 and top-5 (percent) of the export's classifier; one record per metric unless ``results_dir`` is None."""
    model, sidecar = load_exported_model(backbone)
    settings = eval_transform_settings(sidecar, model)
    size = sidecar.image_size
    transform = build_transform(settings, size, is_training=False, mean=settings["mean"], std=settings["std"])
    dataset, name = _dataset(data, transform)
    if len(getattr(dataset, "classes", [])) > sidecar.num_classes:
        raise UserInputError("--data", f"{len(dataset.classes)} classes, the export's head has {sidecar.num_classes}")
    part = Part.of({"input_size": size, **{k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}})
    identity = sidecar.pretraining_identity().transfer("classification", name, "val", 0, part)
    identity = dataclasses.replace(identity, stage=StageName.EVAL)
    stage = Evaluation(identity, model, sidecar, dataset, Path(backbone), batch_size, min(workers, 8), device)
    # an evaluation is measured again whenever it is asked for: its records replace the earlier ones
    stage.run(results_dir, force=True)
    return stage.values


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
    values: dict[str, float] = field(default_factory=dict)

    def execute(self, context: RunContext) -> Measured:
        dev = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        loader = DataLoader(self.dataset, self.batch_size, num_workers=self.workers, pin_memory=dev.type == "cuda")
        logits, labels = predict_logits(self.model.to(dev), loader, dev, autocast_for(dev, True))
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
