"""ADE20K semantic segmentation with UperNet (mmseg 1.x) on an exported backbone."""

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.config import Config, ConfigDict
from mmseg.models.losses import CrossEntropyLoss
from mmseg.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS
from PIL import Image

from dropbench.core.errors import UserInputError
from dropbench.transfer import backbone as backbone_module
from dropbench.transfer import optim
from dropbench.transfer.embedded_data import IGNORE_INDEX, make_from_config
from dropbench.transfer.mm_runner import TaskSpec, custom_data_datasets

backbone_module.register(MODELS)
optim.register(OPTIM_WRAPPER_CONSTRUCTORS)


def class_weighted_cross_entropy(
    pred, label, weight=None, class_weight=None, reduction="mean", avg_factor=None, ignore_index=255, **_
) -> torch.Tensor:
    """Cross-entropy with class weights, averaged over the weights of the labelled pixels (as PyTorch's own).

    mmseg 1.2's ``cross_entropy`` indexes the class weights with every label to find that average, the ignore
    index included, and fails wherever a label map has an ignored pixel."""
    loss = F.cross_entropy(pred, label, weight=class_weight, reduction="none", ignore_index=ignore_index)
    if weight is not None:
        loss = loss * weight
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if avg_factor is None:
        labelled = label != ignore_index
        pixel = torch.ones_like(loss) if class_weight is None else class_weight[label.clamp(0, len(class_weight) - 1)]
        if weight is not None:
            pixel = pixel * weight
        avg_factor = (pixel * labelled).sum()
    return loss.sum() / torch.as_tensor(avg_factor, dtype=loss.dtype).clamp(min=1e-12)


class ClassWeightedCrossEntropyLoss(CrossEntropyLoss):
    """mmseg's ``CrossEntropyLoss`` (softmax) whose ``class_weight`` works beside ignored pixels."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.use_sigmoid or self.use_mask:
            raise ValueError("ClassWeightedCrossEntropyLoss is the softmax cross-entropy")
        self.cls_criterion = class_weighted_cross_entropy


if MODELS.get("ClassWeightedCrossEntropyLoss") is None:
    MODELS.register_module(module=ClassWeightedCrossEntropyLoss)

# mmseg's IoUMetric already reports percent.
LABEL_SPOT_CHECK = 200  # annotation maps per split whose label values are read before training


def _check_split(dataset: Config, num_classes: int, field: str) -> None:
    root = Path(dataset.get("data_root", ""))
    images = root / dataset.data_prefix.img_path
    labels = root / dataset.data_prefix.seg_map_path
    for folder in (images, labels):
        if not folder.is_dir():
            raise UserInputError(field, f"no such folder '{folder}'")
    img_suffix, seg_suffix = dataset.get("img_suffix", ".jpg"), dataset.get("seg_map_suffix", ".png")
    image_files = sorted(images.glob(f"*{img_suffix}"))
    if not image_files:
        raise UserInputError(field, f"'{images}' holds no '*{img_suffix}' images")
    reduce_zero_label = dataset.get("reduce_zero_label", True)
    highest = num_classes if reduce_zero_label else num_classes - 1
    for index, image_file in enumerate(image_files):
        label_file = labels / f"{image_file.stem}{seg_suffix}"
        if not label_file.is_file():
            raise UserInputError(field, f"image '{image_file.name}' has no annotation '{label_file}'")
        with Image.open(image_file) as image, Image.open(label_file) as label:
            if image.size != label.size:
                sizes = f"{label.size[0]}x{label.size[1]}, its image {image.size[0]}x{image.size[1]}"
                raise UserInputError(field, f"annotation '{label_file.name}' is {sizes}")
            if index < LABEL_SPOT_CHECK:
                values = np.unique(np.asarray(label))
                bad = values[(values > highest) & (values != IGNORE_INDEX)]
                if bad.size:
                    raise UserInputError(
                        field, f"label {int(bad[0])} in '{label_file.name}' is outside the {num_classes} classes"
                    )


def _wire(cfg: Config, out_channels: list[int]) -> None:
    cfg.model.decode_head.in_channels = out_channels
    auxiliary = cfg.model.get("auxiliary_head")
    if auxiliary is not None:
        auxiliary.in_channels = out_channels[auxiliary.in_index]
    for head in ("decode_head", "auxiliary_head"):
        _check_class_weights(cfg.model.get(head), f"model.{head}")


def _check_class_weights(head: ConfigDict | None, where: str) -> None:
    """A loss's class weights name one weight per class: a head whose ``num_classes`` differs (a config that
    inherits the embedded one and sets its own classes) is refused before the run, not in its first step."""
    if head is None:
        return
    losses = head.get("loss_decode")
    for index, loss in enumerate(losses if isinstance(losses, (list, tuple)) else [losses]):
        weights = loss.get("class_weight") if loss is not None else None
        if weights is None or isinstance(weights, str):  # a str is a file of weights that mmseg reads itself
            continue
        if len(weights) != head.num_classes:
            field = f"{where}.loss_decode{f'.{index}' if isinstance(losses, (list, tuple)) else ''}.class_weight"
            raise UserInputError(
                f"{where}.num_classes",
                f"{head.num_classes} classes, but {field} has {len(weights)} weights; "
                f"give one weight per class, or {field}=None",
            )


def _use_data(cfg: Config, data: ConfigDict) -> None:
    """Your own ADE-layout data: folder, image and label folders, suffixes and classes into every dataloader
    (as mmseg's ``BaseSegDataset``: ``ADE20KDataset`` fixes ADE20K's 150 names) and both heads."""
    classes = tuple(data.classes)
    palette = [[(37 * i) % 256, (101 * i) % 256, (173 * i) % 256] for i in range(len(classes))]
    for dataset, split in custom_data_datasets(cfg):
        dataset.type = "BaseSegDataset"
        dataset.data_root = data.root
        dataset.data_prefix = dict(img_path=data[f"{split}_img"], seg_map_path=data[f"{split}_ann"])
        dataset.metainfo = dict(classes=classes, palette=palette)
        dataset.img_suffix, dataset.seg_map_suffix = data.img_suffix, data.seg_map_suffix
        dataset.reduce_zero_label = data.reduce_zero_label
        for transform in dataset.get("pipeline", []):
            if transform.get("type") == "LoadAnnotations":
                transform.reduce_zero_label = data.reduce_zero_label
    cfg.model.decode_head.num_classes = len(classes)
    if cfg.model.get("auxiliary_head") is not None:
        cfg.model.auxiliary_head.num_classes = len(classes)


def _prepare_data(cfg: Config) -> None:
    embedded = cfg.pop("embedded_data", None)
    if embedded is not None:
        make_from_config(embedded, cfg.data_root, "ade_digits")
    num_classes = cfg.model.decode_head.num_classes
    for head in ("decode_head", "auxiliary_head"):
        if cfg.model.get(head) is not None and cfg.model[head].num_classes != num_classes:
            raise UserInputError(
                f"model.{head}.num_classes", f"{cfg.model[head].num_classes} differs from {num_classes}"
            )
    for split in ("train_dataloader", "val_dataloader"):
        dataset = cfg[split].dataset
        classes = dataset.get("metainfo", {}).get("classes")
        if classes is not None and len(classes) != num_classes:
            raise UserInputError(
                "model.decode_head.num_classes", f"{num_classes}, but {split} names {len(classes)} classes"
            )
        _check_split(dataset, num_classes, f"{split}.dataset")


def _evaluate_multi_scale_flip(runner, cfg: Config) -> dict[str, float]:
    """mIoU with the config's ``tta_pipeline`` (scales × flips), when ``evaluate_tta = True``."""
    if not cfg.get("evaluate_tta", False):
        return {}
    from mmseg.models import SegTTAModel

    model = getattr(runner.model, "module", runner.model)
    tta = SegTTAModel(module=model).eval()
    loader_cfg = copy.deepcopy(cfg.val_dataloader)
    loader_cfg.batch_size = 1
    loader_cfg.dataset.pipeline = cfg.tta_pipeline
    loader = runner.build_dataloader(loader_cfg)
    evaluator = runner.build_evaluator(cfg.val_evaluator)
    evaluator.dataset_meta = loader.dataset.metainfo
    with torch.no_grad():
        for batch in loader:
            evaluator.process(data_samples=tta.test_step(batch), data_batch=batch)
    return {f"tta/{key}": value for key, value in evaluator.evaluate(len(loader.dataset)).items()}


def _fixed_grid_problem(cfg: Config, size: tuple[int, int]) -> str | None:
    """A backbone with a fixed token grid segments on crops no larger than its grid's input size, and infers by
    sliding windows of that size, so that every pretrained weight is used as it was trained."""
    side = f"{size[0]}×{size[1]}"
    fix = f"use a config with {side} crops and slide inference (configs/segmentation/upernet_160k_ade20k_224.py)"
    crops = [t for t in cfg.train_dataloader.dataset.get("pipeline", []) if t.get("type") == "RandomCrop"]
    if not crops or any(not _fits(t.crop_size, size) for t in crops):
        return f"the training pipeline must end its resizing in a RandomCrop no larger than {side}; {fix}"
    preprocessor_size = cfg.model.get("data_preprocessor", {}).get("size")
    if preprocessor_size is None or not _fits(preprocessor_size, size):
        return f"model.data_preprocessor.size {preprocessor_size} is not within {side}; {fix}"
    test_cfg = cfg.model.get("test_cfg", {})
    if test_cfg.get("mode") != "slide" or not _fits(test_cfg.get("crop_size", (0, 0)), size):
        return f"inference must slide windows no larger than {side} (model.test_cfg mode='slide', crop_size); {fix}"
    return None


def _fits(crop: Sequence[int], size: tuple[int, int]) -> bool:
    return 0 < crop[0] <= size[0] and 0 < crop[1] <= size[1]


SEGMENTATION = TaskSpec(
    metrics={
        "mIoU": ("mIoU", 1.0),
        "mAcc": ("mAcc", 1.0),
        "aAcc": ("aAcc", 1.0),
        "tta/mIoU": ("mIoU_ms_flip", 1.0),
    },
    wire=_wire,
    prepare_data=_prepare_data,
    use_data=_use_data,
    optional=("tta/mIoU",),  # with evaluate_tta = True only
    extra_evaluation=_evaluate_multi_scale_flip,
    fixed_grid_problem=_fixed_grid_problem,
)
