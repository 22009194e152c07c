"""``dropbench eval``: an export's top-1 / top-5 on ImageNet-layout val images (or MNIST's test split), with the
export's own evaluation transform, written as a record of stage ``eval``."""

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, resolve_data_config
from torch.utils.data import DataLoader, Dataset

from dropbench.core.embedded import EMBEDDED_ARRAYS
from dropbench.core.errors import UserInputError
from dropbench.core.export import ExportSidecar, load_exported_model
from dropbench.core.identity import Part, StageName
from dropbench.core.lifecycle import Measured, RecordedRun, RunContext
from dropbench.core.loop import autocast_for, evaluate
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
        metrics = evaluate(self.model.to(dev), loader, self.sidecar.num_classes, dev, autocast_for(dev, True))
        self.values = {"top1": metrics["top1"], "top5": metrics["top5"]}
        logger.info(
            f"{self.sidecar.name} / {self.sidecar.regime or '?'} on {self.identity.dataset}: "
            f"top1 {self.values['top1']:.2f}%  top5 {self.values['top5']:.2f}%  ({len(self.dataset)} images)"
        )
        return Measured(self.values, model=self.sidecar.model, run_dir=self.export)
