"""Training data: an ImageNet-layout folder (``train/`` and ``val/`` of class folders) or embedded MNIST."""

from dataclasses import dataclass
from pathlib import Path

from timm.data import create_transform
from torch.utils.data import Dataset, Subset
from torchvision import transforms
from torchvision.datasets import ImageFolder

from dropbench.core.errors import UserInputError
from dropbench.core.readers import IMAGENET_1K, ArrayImageDataset, image_folders, imagenet_1k_layout, load_mnist

MNIST = "mnist"


def dataset_name(data: str, recipe=None, data_name: str | None = None) -> str:
    """The name records give the data: ``--data-name``, else the recipe's ``dataset_name``, else ``mnist``,
    ``imagenet-1k`` for a folder in ImageNet-1k's layout (1000 WordNet-id class folders in ``train/``), else the
    folder's name."""
    if data_name or getattr(recipe, "dataset_name", None):
        return data_name or recipe.dataset_name
    if data == MNIST:
        return MNIST
    if imagenet_1k_layout(Path(data) / "train"):
        return IMAGENET_1K
    return Path(data).resolve().name


@dataclass
class DataSplits:
    name: str
    train: Dataset
    val: Dataset
    num_classes: int
    train_plain: Dataset  # the training images through the evaluation transform (for measurements)


def build_data(
    data: str, recipe, input_size: int, check_images: bool = True, data_name: str | None = None
) -> DataSplits:
    """Train and val datasets with timm's transforms for ``recipe`` at ``input_size`` px."""
    train_tf = create_transform(
        input_size=input_size,
        is_training=True,
        scale=recipe.scale,
        hflip=recipe.hflip,
        color_jitter=recipe.color_jitter,
        auto_augment=recipe.aa,
        interpolation=recipe.interpolation,
        re_prob=recipe.reprob,
    )
    if recipe.pad:  # a border to crop from: objects land anywhere in the frame, at any size the crop scale allows
        train_tf = transforms.Compose([transforms.Pad(recipe.pad), train_tf])
    val_tf = create_transform(
        input_size=input_size, is_training=False, interpolation=recipe.interpolation, crop_pct=recipe.crop_pct
    )
    if data == MNIST:
        train_arrays = load_mnist("train")
        train = ArrayImageDataset(*train_arrays, transform=train_tf)
        train_plain = ArrayImageDataset(*train_arrays, transform=val_tf)
        val = ArrayImageDataset(*load_mnist("test"), transform=val_tf)
        name, num_classes = dataset_name(data, recipe, data_name), 10
    else:
        root = Path(data)
        if not root.is_dir():
            raise UserInputError("data", f"'{data}' is neither 'mnist' nor an existing folder")
        train, val = image_folders(root, ("train", "val"), "data", check_images)
        train_plain = ImageFolder(str(root / "train"), loader=train.loader, transform=val_tf)
        train.transform, val.transform = train_tf, val_tf
        num_classes = len(train.classes)
        name = dataset_name(data, recipe, data_name)
    if recipe.train_subset:
        keep = range(min(recipe.train_subset, len(train)))
        train, train_plain = Subset(train, keep), Subset(train_plain, keep)
    if recipe.val_subset:
        val = Subset(val, range(min(recipe.val_subset, len(val))))
    return DataSplits(name=name, train=train, val=val, num_classes=num_classes, train_plain=train_plain)
