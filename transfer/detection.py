"""COCO detection and instance segmentation with Mask R-CNN (mmdet 3.x) on an exported backbone."""

import json
from pathlib import Path

from mmdet.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.config import Config

from dropbench.core.errors import UserInputError
from dropbench.transfer import backbone as backbone_module
from dropbench.transfer import optim
from dropbench.transfer.embedded_data import make_from_config
from dropbench.transfer.mm_runner import TaskSpec, run_transfer

backbone_module.register(MODELS)
optim.register(OPTIM_WRAPPER_CONSTRUCTORS)

# mmdet's CocoMetric reports fractions; records are in percent.


def validate_coco(ann_file: Path, image_dir: Path, classes: tuple[str, ...] | None, field: str) -> None:
    """Refuse a COCO json that mmdet would load wrongly or crash on, naming the first problem."""
    if not ann_file.is_file():
        raise UserInputError(field, f"no such annotation file '{ann_file}'")
    try:
        coco = json.loads(ann_file.read_text())
    except json.JSONDecodeError as err:
        raise UserInputError(field, f"'{ann_file}' is not valid JSON ({err.msg})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise UserInputError(field, f"'{ann_file}' has no '{key}' list; is it a COCO instances file?")
    images = {image["id"]: image for image in coco["images"]}
    categories = {c["id"]: c["name"] for c in coco["categories"]}
    for ann in coco["annotations"]:
        if ann.get("image_id") not in images:
            raise UserInputError(
                field, f"annotation {ann.get('id')} in '{ann_file.name}' names unknown image {ann.get('image_id')}"
            )
        if ann.get("category_id") not in categories:
            raise UserInputError(
                field,
                f"annotation {ann.get('id')} in '{ann_file.name}' has category_id {ann.get('category_id')}, "
                f"not one of the file's categories",
            )
        bbox = ann.get("bbox", [])
        if len(bbox) != 4 or min(bbox) < 0:
            raise UserInputError(
                field, f"annotation {ann.get('id')} in '{ann_file.name}' has a negative or malformed box {bbox}"
            )
    if classes is not None:
        missing = [c for c in classes if c not in categories.values()]
        if missing:
            raise UserInputError(
                "metainfo.classes",
                f"{missing[:3]} are not categories of '{ann_file.name}' ({sorted(categories.values())[:5]}...)",
            )
    for image in coco["images"]:
        if not (image_dir / image["file_name"]).is_file():
            raise UserInputError(
                field, f"image {image['id']} of '{ann_file.name}' is missing: '{image_dir / image['file_name']}'"
            )


def _wire(cfg: Config, out_channels: list[int]) -> None:
    cfg.model.neck.in_channels = out_channels


def _prepare_data(cfg: Config) -> None:
    embedded = cfg.pop("embedded_data", None)
    if embedded is not None:
        make_from_config(embedded, cfg.data_root, "coco_digits")
    for split in ("train_dataloader", "val_dataloader"):
        dataset = cfg[split].dataset
        root = Path(dataset.get("data_root", ""))
        classes = dataset.get("metainfo", {}).get("classes")
        validate_coco(
            root / dataset.ann_file,
            root / dataset.data_prefix.get("img", ""),
            tuple(classes) if classes else None,
            f"{split}.dataset.ann_file",
        )


DETECTION = TaskSpec(
    task="detection",
    metrics={
        "coco/bbox_mAP": ("box_AP", 100.0),
        "coco/bbox_mAP_50": ("box_AP50", 100.0),
        "coco/bbox_mAP_75": ("box_AP75", 100.0),
        "coco/segm_mAP": ("mask_AP", 100.0),
        "coco/segm_mAP_50": ("mask_AP50", 100.0),
        "coco/segm_mAP_75": ("mask_AP75", 100.0),
    },
    wire=_wire,
    prepare_data=_prepare_data,
    empty_means_zero=True,  # mmdet's CocoMetric returns nothing when no box was predicted
)


def transfer_detection(
    backbone: Path,
    config: Path,
    work_dir: Path,
    results_dir: Path | None = Path("results"),
    cfg_options: list[str] | None = None,
    launcher: str = "none",
    seed: int = 0,
    force: bool = False,
) -> list[Path]:
    """Fine-tune Mask R-CNN on ``backbone`` with ``config``; records box and mask AP (and AP50/AP75)."""
    return run_transfer(
        DETECTION,
        backbone,
        config,
        work_dir,
        results_dir,
        cfg_options or [],
        launcher,
        seed=seed,
        force=force,
    )
