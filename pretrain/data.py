"""Training data: an ImageNet-layout folder (``train/`` and ``val/`` of class folders), WebDataset shards of one
(``dropbench data shard``), embedded MNIST or Fashion-MNIST, or ``synthetic``: random ImageNet-shaped images held in
memory, for measuring the training step's speed; and the loaders over it, which a resumed epoch enters at any
batch."""

import copy
import itertools
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, Subset, TensorDataset
from torch.utils.data.distributed import DistributedSampler
from torchvision import transforms

from dropbench.core.embedded import EMBEDDED_ARRAYS
from dropbench.core.errors import UserInputError
from dropbench.core.loop import epoch_seed
from dropbench.core.readers import (
    IMAGENET_1K,
    ArrayImageDataset,
    image_folders,
    imagenet_1k_classes,
    imagenet_1k_layout,
    load_embedded,
)
from dropbench.core.transforms import build_transform
from dropbench.pretrain.augment import geometric_only
from dropbench.pretrain.config import HOLDOUT_IMAGES
from dropbench.pretrain.distributed import Processes
from dropbench.pretrain.shards import is_shard_folder, read_info, shard_datasets

MNIST = "mnist"
SYNTHETIC = "synthetic"
SYNTHETIC_CLASSES = 1000
SYNTHETIC_SIZE = 256  # px: larger than the input, so that the random resized crop resamples as on ImageNet


def dataset_name(data: str, recipe=None, data_name: str | None = None) -> str:
    """The name records give the data: ``--data-name``, else the recipe's ``dataset_name``, else ``mnist``,
    ``imagenet-1k`` for a folder in ImageNet-1k's layout (1000 WordNet-id class folders in ``train/``), else the
    folder's name."""
    if data_name or getattr(recipe, "dataset_name", None):
        return data_name or recipe.dataset_name
    if data in (*EMBEDDED_ARRAYS, SYNTHETIC):
        return data
    if is_shard_folder(data):  # named as the folder it was made from
        info = read_info(Path(data))
        return IMAGENET_1K if imagenet_1k_classes(info["classes"]) else info["name"]
    if imagenet_1k_layout(Path(data) / "train"):
        return IMAGENET_1K
    return Path(data).resolve().name


class ArrayBatches(Dataset):
    """Images held in memory (grey ``(N, H, W)`` or ``(N, C, H, W)``), served a batch at a time (index with a list)
    as raw uint8 ``(B, C, H, W)`` tensors: the crop, flip and normalisation happen for the whole batch on the device
    (``DeviceAugment``)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels.astype(np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.from_numpy(self.images[indices])
        return images[:, None] if images.ndim == 3 else images, torch.from_numpy(self.labels[indices])


@dataclass
class DataSplits:
    name: str
    train: Dataset  # uint8 images; an ArrayBatches when ``raw_batches``; a stream (IterableDataset) when ``streamed``
    val: Dataset
    num_classes: int
    train_plain: Dataset | None  # the training images through the evaluation transform (for measurements)
    raw_batches: bool  # the training set serves whole uncropped batches, augmented on the device
    train_images: int  # in the whole training set (a stream has no length of its own)
    streamed: bool = False


def _train_transform(recipe, input_size: int):
    """timm's per-image training transform up to a uint8 tensor (normalisation and erasing are on the device)."""
    tf = build_transform(recipe, input_size, is_training=True, use_prefetcher=True)
    if recipe.pad:  # a border to crop from: objects land anywhere in the frame, at any size the crop scale allows
        tf = transforms.Compose([transforms.Pad(recipe.pad), tf])
    return tf


def build_data(
    data: str, recipe, input_size: int, check_images: bool = True, data_name: str | None = None
) -> DataSplits:
    """Train and val datasets for ``recipe`` at ``input_size`` px: training images as uint8 (finished on the
    device by ``DeviceAugment``), validation images through timm's evaluation transform."""
    if recipe.val_split == "holdout" and data not in EMBEDDED_ARRAYS:
        raise UserInputError(
            "recipe.val_split", f"'holdout' is for the embedded data ({', '.join(EMBEDDED_ARRAYS)}); a folder has val/"
        )
    if data == SYNTHETIC:
        return _synthetic(recipe, input_size)
    val_tf = build_transform(recipe, input_size, is_training=False)
    if is_shard_folder(data):
        return _shards(Path(data), recipe, input_size, val_tf, data_name)
    if data in EMBEDDED_ARRAYS:
        (images, labels), (val_images, val_labels) = _embedded_splits(data, recipe)
        raw = geometric_only(recipe)
        if raw:
            train = ArrayBatches(images, labels)
        else:
            train = ArrayImageDataset(images, labels, transform=_train_transform(recipe, input_size))
        train_plain = ArrayImageDataset(images, labels, transform=val_tf)
        val = ArrayImageDataset(val_images, val_labels, transform=val_tf)
        name, num_classes = dataset_name(data, recipe, data_name), 10
    else:
        root = Path(data)
        if not root.is_dir():
            raise UserInputError("data", f"'{data}' is neither one of {EMBEDDED_ARRAYS} nor an existing folder")
        train, val = image_folders(root, ("train", "val"), "data", check_images)
        train_plain = copy.copy(train)  # the same scan of the folder, another transform
        train.transform, train_plain.transform, val.transform = _train_transform(recipe, input_size), val_tf, val_tf
        num_classes, raw = len(train.classes), False
        name = dataset_name(data, recipe, data_name)
        if recipe.train_subset:
            keep = range(min(recipe.train_subset, len(train)))
            train, train_plain = Subset(train, keep), Subset(train_plain, keep)
    if recipe.val_subset:
        val = Subset(val, range(min(recipe.val_subset, len(val))))
    return DataSplits(name, train, val, num_classes, train_plain, raw, train_images=len(train))


def _embedded_splits(data: str, recipe) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The training images (the first ``train_subset``) and the validation images: the test split, or with
    ``val_split: holdout`` the last ``val_subset`` (default 10,000) training images, which no run trains on."""
    images, labels = load_embedded(data, "train")
    if recipe.val_split == "holdout":
        held = recipe.val_subset or HOLDOUT_IMAGES
        validation = images[-held:], labels[-held:]
        images, labels = images[:-held], labels[:-held]
    else:
        validation = load_embedded(data, "test")
    if recipe.train_subset:
        images, labels = images[: recipe.train_subset], labels[: recipe.train_subset]
    return (images, labels), validation


def _synthetic(recipe, input_size: int) -> DataSplits:
    """``train_subset`` (default 2,560) random RGB images of ``SYNTHETIC_SIZE`` px in 1,000 classes, augmented on
    the device; ``val_subset`` (default 256) random normalised ones. Seeded: the same images every run."""
    if not geometric_only(recipe):
        raise UserInputError("recipe.aa", "synthetic images are augmented on the device: set aa=null color_jitter=null")
    generator = np.random.default_rng(recipe.seed)
    count, val_count = recipe.train_subset or 2560, recipe.val_subset or 256
    images = generator.integers(0, 256, size=(count, 3, SYNTHETIC_SIZE, SYNTHETIC_SIZE), dtype=np.uint8)
    train = ArrayBatches(images, generator.integers(0, SYNTHETIC_CLASSES, size=count))
    val = TensorDataset(
        torch.from_numpy(generator.standard_normal((val_count, 3, input_size, input_size), dtype=np.float32)),
        torch.from_numpy(generator.integers(0, SYNTHETIC_CLASSES, size=val_count)),
    )
    return DataSplits(SYNTHETIC, train, val, SYNTHETIC_CLASSES, val, raw_batches=True, train_images=count)


def _shards(root: Path, recipe, input_size: int, val_tf, data_name: str | None) -> DataSplits:
    """The shards of ``dropbench data shard``, streamed through timm's ``wds/`` reader by the loader's workers."""
    if recipe.workers < 1:
        raise UserInputError("recipe.workers", "shards are streamed by loader workers: set workers >= 1")
    if recipe.train_subset or recipe.val_subset:
        raise UserInputError(
            "recipe.train_subset", "a stream of shards has no subset: set train_subset and val_subset to null"
        )
    info, train, val = shard_datasets(
        root, recipe.per_device_batch, recipe.seed, recipe.workers, _train_transform(recipe, input_size), val_tf
    )
    name = dataset_name(str(root), recipe, data_name)
    count = info["splits"]["train"]["num_samples"]
    return DataSplits(name, train, val, len(info["classes"]), None, False, train_images=count, streamed=True)


# ------------------------------------------------------------------------------------------------ loaders


class EpochSampler(Sampler):
    """The distributed sampler's order for an epoch, from its ``skip``-th index on (a mid-epoch recovery point); with
    ``seeded``, each index goes out as ``(epoch, index)`` for ``SeededSamples``."""

    def __init__(self, sampler: DistributedSampler, seeded: bool = False):
        self.sampler, self.seeded, self.epoch, self.skip = sampler, seeded, 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        indices = itertools.islice(iter(self.sampler), self.skip, None)
        return ((self.epoch, index) for index in indices) if self.seeded else indices

    def __len__(self) -> int:
        return len(self.sampler) - self.skip


class SeededSamples(Dataset):
    """Seeds Python's, NumPy's and torch's generators from (seed, epoch, index) before each image's transform, so
    that its augmentation does not depend on which loader worker reads it, nor on where a resumed epoch starts.
    Indexed by ``(epoch, index)``: the epoch travels with the index, so persistent workers need no message."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        seed = epoch_seed(self.seed, epoch) * 1_000_003 + index
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.default_generator.manual_seed(seed)  # the CPU's: torch.manual_seed also seeds GPUs, 0.2 ms a call
        return self.dataset[index]


class StreamedEpochs:
    """A loader over a stream of shards, with ``EpochSampler``'s ``set_epoch``: timm's reader reshuffles shards and
    samples from the epoch and each worker's seed (the loader's generator gives those per epoch, and the workers start
    afresh every epoch), so an epoch's stream is the same every time; a resumed epoch reads through the batches its
    recovery point had done."""

    def __init__(self, loader: DataLoader):
        self.loader, self.skip = loader, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.loader.dataset.set_epoch(epoch)
        self.skip = skip // self.loader.batch_size

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.skip, None)


def _stream_loaders(splits: DataSplits, recipe, dev: torch.device):
    """``build_loaders`` for shards: timm's reader gives each rank and worker its own shards (of val too)."""
    generator = torch.Generator()
    common = {"batch_size": recipe.per_device_batch, "num_workers": recipe.workers, "pin_memory": dev.type == "cuda"}
    epochs = StreamedEpochs(DataLoader(splits.train, **common, drop_last=True, generator=generator))
    return epochs, epochs, generator, DataLoader(splits.val, **common)


def train_eval_loader(splits: DataSplits, recipe, processes: Processes, dev: torch.device) -> DataLoader | None:
    """This rank's shard of the images the final training loss is measured on: ``train_eval_images`` training
    images drawn once with seed 0 (all with null), through the evaluation transform; None for streamed shards."""
    if splits.train_plain is None:
        return None
    total = len(splits.train_plain)
    count = min(recipe.train_eval_images or total, total)
    chosen = np.sort(np.random.default_rng(0).choice(total, count, replace=False)) if count < total else range(total)
    shard = Subset(splits.train_plain, [int(i) for i in chosen[processes.rank :: processes.world]])
    return DataLoader(shard, batch_size=recipe.per_device_batch, shuffle=False, num_workers=recipe.workers)


def build_loaders(splits: DataSplits, recipe, processes: Processes, dev: torch.device):
    """``(sampler, train loader, its generator, val loader over this rank's shard)``. Images transformed in loader
    workers are seeded one by one (``SeededSamples``); the workers persist across epochs."""
    if splits.streamed:
        return _stream_loaders(splits, recipe, dev)
    seeded = recipe.workers > 0 and not splits.raw_batches
    train = SeededSamples(splits.train, recipe.seed) if seeded else splits.train
    sampler = EpochSampler(
        DistributedSampler(
            train, num_replicas=processes.world, rank=processes.rank, shuffle=True, seed=recipe.seed, drop_last=True
        ),
        seeded,
    )
    generator = torch.Generator()
    if splits.raw_batches:  # the dataset takes a batch's index list and returns the batch as one array slice
        batches = {"sampler": BatchSampler(sampler, recipe.per_device_batch, drop_last=True), "batch_size": None}
    else:
        batches = {"sampler": sampler, "batch_size": recipe.per_device_batch, "drop_last": True}
    train_loader = DataLoader(
        train,
        **batches,
        num_workers=recipe.workers,
        pin_memory=dev.type == "cuda",
        generator=generator,
        persistent_workers=recipe.workers > 0,
    )
    val_shard = Subset(splits.val, range(processes.rank, len(splits.val), processes.world))
    val_loader = DataLoader(
        val_shard,
        batch_size=recipe.per_device_batch,
        shuffle=False,
        num_workers=recipe.workers,
        pin_memory=dev.type == "cuda",
        persistent_workers=recipe.workers > 0,
    )
    return sampler, train_loader, generator, val_loader
