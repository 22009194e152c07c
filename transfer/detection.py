"""COCO detection and instance segmentation with Mask R-CNN (mmdet 3.x) on an exported backbone."""

import json
import os
from pathlib import Path

from mmdet.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.config import Config, ConfigDict

from dropbench.core.errors import UserInputError
from dropbench.transfer import backbone as backbone_module
from dropbench.transfer import optim
from dropbench.transfer.embedded_data import make_from_config
from dropbench.transfer.mm_runner import TaskSpec, custom_data_datasets

backbone_module.register(MODELS)
optim.register(OPTIM_WRAPPER_CONSTRUCTORS)

# mmdet's CocoMetric reports fractions; records are in percent.


def validate_coco(ann_file: Path, image_dir: Path, classes: tuple[str, ...] | None, field: str) -> None:
    """Refuse a COCO json that mmdet would load wrongly or crash on, naming the first problem.

    One parse of the json and one listing per image folder (no stat per image). Images without annotations and
    crowd regions are left to mmdet (``filter_empty_gt``, ``iscrowd``)."""
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
        problem = _annotation_problem(ann, images, categories)
        if problem:
            raise UserInputError(field, f"annotation {ann.get('id')} in '{ann_file.name}' {problem}")
    if classes is not None:
        missing = [c for c in classes if c not in categories.values()]
        if missing:
            raise UserInputError(
                "metainfo.classes",
                f"{missing[:3]} are not categories of '{ann_file.name}' ({sorted(categories.values())[:5]}...)",
            )
    present = _files_under(image_dir, {str(Path(image["file_name"]).parent) for image in coco["images"]})
    for image in coco["images"]:
        if str(Path(image["file_name"])) not in present:
            raise UserInputError(
                field, f"image {image['id']} of '{ann_file.name}' is missing: '{image_dir / image['file_name']}'"
            )


def _annotation_problem(ann: dict, images: dict, categories: dict) -> str | None:
    """What is wrong with one annotation, in words; None when mmdet can take it."""
    image = images.get(ann.get("image_id"))
    if image is None:
        return f"names unknown image {ann.get('image_id')}"
    if ann.get("category_id") not in categories:
        return f"has category_id {ann.get('category_id')}, not one of the file's categories"
    bbox = ann.get("bbox", [])
    if len(bbox) != 4 or min(bbox) < 0:
        return f"has a negative or malformed box {bbox}"
    width, height = image.get("width"), image.get("height")
    if width and height and (bbox[0] + bbox[2] > width + 1 or bbox[1] + bbox[3] > height + 1):
        return f"has a box {bbox} outside its {width}×{height} image {image['id']}"
    segmentation = ann.get("segmentation")
    if isinstance(segmentation, list) and any(len(polygon) < 6 for polygon in segmentation):
        return "has a polygon with fewer than 3 points"
    return None


def _files_under(root: Path, folders: set[str]) -> set[str]:
    """Relative paths of the files in each of ``folders`` (relative to ``root``): one listing per folder."""
    present = set()
    for folder in folders:
        directory = root / folder
        if directory.is_dir():
            present |= {str(Path(folder) / entry.name) for entry in os.scandir(directory) if entry.is_file()}
    return present


def _wire(cfg: Config, out_channels: list[int]) -> None:
    cfg.model.neck.in_channels = out_channels


def _use_data(cfg: Config, data: ConfigDict) -> None:
    """Your own COCO-format data: folder, json files, image folders and classes into every dataloader, the
    evaluators and both heads."""
    for dataset, split in custom_data_datasets(cfg):
        dataset.data_root = data.root
        dataset.ann_file = data[f"{split}_ann"]
        dataset.data_prefix = dict(img=data[f"{split}_img"])
        dataset.metainfo = dict(classes=data.classes)
    for evaluator in ("val_evaluator", "test_evaluator"):
        if cfg.get(evaluator) is not None:
            cfg[evaluator].ann_file = str(Path(data.root) / data.val_ann)
    cfg.model.roi_head.bbox_head.num_classes = len(data.classes)
    if cfg.model.roi_head.get("mask_head") is not None:
        cfg.model.roi_head.mask_head.num_classes = len(data.classes)


def _prepare_data(cfg: Config) -> None:
    embedded = cfg.pop("embedded_data", None)
    if embedded is not None:
        make_from_config(embedded, cfg.data_root, "coco_digits")
    if int(os.environ.get("RANK", "0")) != 0:
        return  # the main process checks the annotations; under torchrun its error ends the job
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


def _fixed_grid_problem(cfg: Config, size: tuple[int, int]) -> str:
    """Mask R-CNN has no sound protocol for a fixed token grid: it reads whole images of 480-1333 px, so the grid
    would have to be padded to one large square or its token-mixing weights resampled to a new grid, and the
    numbers would measure that resampling more than the pretrained backbone."""
    return (
        "Mask R-CNN reads whole images of varying size, and padding them to one square or resampling the "
        "token-mixing weights measures the resampling, not the backbone; transfer it by segmentation on fixed-size "
        "crops (configs/segmentation/upernet_160k_ade20k_224.py) or classification"
    )


DETECTION = TaskSpec(
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
    use_data=_use_data,
    empty_means_zero=True,  # mmdet's CocoMetric returns nothing when no box was predicted
    fixed_grid_problem=_fixed_grid_problem,
)
