"""``dropbench eval``: an export's top-1 / top-5 on ImageNet-layout val images (or MNIST's test split), with the
export's own evaluation transform, written as a record of stage ``eval``."""

import dataclasses
import logging
from pathlib import Path

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform, resolve_data_config
from torch.utils.data import DataLoader

from dropbench.core.errors import UserInputError
from dropbench.core.export import ExportSidecar, load_exported_model
from dropbench.core.identity import Part, Stage
from dropbench.core.lifecycle import StageRun, now
from dropbench.core.loop import autocast_for, evaluate
from dropbench.core.readers import IMAGENET_1K, ArrayImageDataset, image_folders, imagenet_1k_layout, load_mnist

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
    if data == "mnist":
        return ArrayImageDataset(*load_mnist("test"), transform=transform), "mnist"
    root = Path(data)
    if not root.is_dir():
        raise UserInputError("--data", f"'{data}' is neither 'mnist' nor a folder with val/")
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
    started = now()
    model, sidecar = load_exported_model(backbone)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    settings = eval_transform_settings(sidecar, model)
    size = sidecar.image_size
    transform = create_transform(input_size=size, is_training=False, **settings)
    dataset, name = _dataset(data, transform)
    if len(getattr(dataset, "classes", [])) > sidecar.num_classes:
        raise UserInputError("--data", f"{len(dataset.classes)} classes, the export's head has {sidecar.num_classes}")
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=min(workers, 8), pin_memory=dev.type == "cuda")
    metrics = evaluate(model.to(dev), loader, sidecar.num_classes, dev, autocast_for(dev, True))
    values = {"top1": metrics["top1"], "top5": metrics["top5"]}
    if results_dir is not None:
        part = Part.of({"input_size": size, **{k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}})
        identity = dataclasses.replace(
            sidecar.pretraining_identity().transfer("classification", name, "val", 0, part), stage=Stage.EVAL
        )
        # an evaluation is measured again whenever it is asked for: its records replace the earlier ones
        StageRun(identity, Path(results_dir), force=True, started=started).record(
            values, model=sidecar.model, run_dir=Path(backbone)
        )
    logger.info(
        f"{sidecar.name} / {sidecar.regime or '?'} on {name}: "
        f"top1 {values['top1']:.2f}%  top5 {values['top5']:.2f}%  ({len(dataset)} images)"
    )
    return values
