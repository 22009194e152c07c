"""Regimes and recipes: YAML files under ``configs/regimes`` and ``configs/pretrain``, read into typed settings
(``dropbench.core.settings``)."""

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from dropbench.core import training_fields as shared
from dropbench.core.configs import known_configs, load_yaml, resolve_config
from dropbench.core.embedded import ARRAY_TRAIN_IMAGES
from dropbench.core.errors import UserInputError, did_you_mean
from dropbench.core.fields import renamed_fields
from dropbench.core.identity import EXPORT_EPOCH, Part, RunIdentity, StageName, settings_digest
from dropbench.core.layout import epoch_export_dir
from dropbench.core.models import BackboneConfig
from dropbench.core.settings import (
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    OPTIONAL_NON_NEGATIVE,
    OPTIONAL_POSITIVE_INT,
    POSITIVE_INT,
    PROBABILITY,
    Settings,
    one_of,
    setting,
    variant_name,
    within,
)
from dropbench.core.tracking import check_trackers
from dropbench.pretrain.schedules import DropSetting

__all__ = ["DropSetting", "Recipe", "Regime", "pretrain_identity", "split_overrides"]


@dataclass(frozen=True)
class Regime(Settings):
    """How a backbone is regularised during pretraining: a schedule for dropout and one for stochastic depth."""

    PREFIX: ClassVar[str] = "regime."

    name: str = setting("", result=False)
    dropout: DropSetting | None = None
    drop_path: DropSetting | None = None
    description: str = setting("", result=False)
    train: bool = True  # False: the reference row `random_init`, the backbone's initialisation exported untrained

    @classmethod
    def load(cls, value: str, overrides: Mapping[str, Any] | None = None) -> "Regime":
        """A regime file (or its name under ``configs/regimes``); ``overrides`` (dotted: ``dropout.cutoff_epoch``)
        make a variant named after them (``early_dropout.cutoff_epoch=25``)."""
        path = resolve_config(value, "regimes")
        if path is None:
            raise UserInputError("regime", f"unknown regime '{value}'{did_you_mean(value, known_configs('regimes'))}")
        regime = cls.from_config({"name": path.stem} | load_yaml(path, "regime"), overrides)
        unscheduled = [kind for kind in ("dropout", "drop_path") if regime.max_rates().get(kind) == 0]
        regime = dataclasses.replace(regime, **dict.fromkeys(unscheduled))  # a rate of 0 is no schedule
        if overrides:
            regime = dataclasses.replace(regime, name=variant_name(regime.name, overrides), variant=dict(overrides))
        return regime

    def check(self, prefix: str) -> None:
        if not self.train and (self.dropout or self.drop_path):
            raise UserInputError(f"{prefix}train", "a regime that does not train has no dropout or drop_path schedule")

    def max_rates(self) -> dict[str, float]:
        return {k: s.rate for k, s in self.schedules().items()}

    def schedules(self) -> dict[str, DropSetting]:
        """The scheduled rates, by kind (``dropout``, ``drop_path``)."""
        return {k: s for k, s in (("dropout", self.dropout), ("drop_path", self.drop_path)) if s}

    def check_run(self, epochs: int) -> None:
        """Every schedule fits a run of ``epochs`` (a cutoff within it), errors naming ``<kind>.<field>``."""
        for kind, schedule in self.schedules().items():
            with renamed_fields(lambda field_name, kind=kind: f"{kind}.{field_name}"):
                schedule.for_run(epochs)._check_run(epochs, 1, "")

    def effective(self, epochs: int) -> str:
        """What the regime does in a run of ``epochs``: equal for two regimes that give the same schedules."""
        schedules = {kind: schedule.for_run(epochs).to_dict() for kind, schedule in self.schedules().items()}
        return settings_digest({"train": self.train, **schedules})

    def why_unchanged(self, key: str, epochs: int) -> str:
        """Why a swept field (``dropout.cutoff_epoch``) leaves the schedules as they are."""
        kind, _, name = key.partition(".")
        schedule = self.schedules().get(kind)
        if schedule is not None and schedule.ignores(name):
            return f"mode '{schedule.mode}' ignores {name}"
        if name == "cutoff_epoch" and schedule is not None and schedule.reference_epochs:
            return f"its cutoffs scale from {schedule.reference_epochs} to the same epochs of a {epochs}-epoch run"
        return f"every value gives the same schedules in a {epochs}-epoch run"


VAL_SPLITS = ("test", "holdout")
HOLDOUT_IMAGES = 10_000  # a held-out validation slice's size, by default


@dataclass(frozen=True)
class Recipe(Settings):
    """Optimisation and augmentation settings (timm names where timm has one). Name, seed, logging, checkpoint
    cadence, dataset name, trackers and compilation do not change a result (compilation, like the thread count,
    only at float rounding); the last three may change when a run resumes."""

    PREFIX: ClassVar[str] = "recipe."

    name: str = setting("custom", result=False)
    epochs: int = shared.EPOCHS(300)
    batch_size: int = shared.BATCH_SIZE(4096)  # global batch per optimizer update
    per_device_batch: int = setting(128, check=POSITIVE_INT)  # gradient accumulation makes up the difference
    opt: str = shared.OPT("adamw")
    lr: float = shared.LR(4e-3)
    weight_decay: float = shared.WEIGHT_DECAY(0.05)
    weight_decay_end: float | None = setting(None, check=OPTIONAL_NON_NEGATIVE)  # cosine schedule when set
    momentum: float = setting(0.9, check=NON_NEGATIVE)
    clip_grad: float | None = shared.CLIP_GRAD(None)
    sched: str = shared.SCHED("cosine")
    warmup_epochs: int = shared.WARMUP_EPOCHS(50)
    warmup_lr: float = shared.WARMUP_LR(1e-6)
    min_lr: float = shared.MIN_LR(1e-6)
    aa: str | None = shared.AA("rand-m9-mstd0.5-inc1")
    scale: tuple[float, float] = shared.SCALE((0.08, 1.0))
    pad: int = setting(0, check=NON_NEGATIVE_INT)  # pixels of border before the random crop, so crops also zoom out
    hflip: float = shared.HFLIP(0.5)
    color_jitter: float | None = shared.COLOR_JITTER(None)
    crop_pct: float = shared.CROP_PCT(0.875)
    interpolation: str = shared.INTERPOLATION("bicubic")
    smoothing: float = shared.SMOOTHING(0.1)
    reprob: float = shared.REPROB(0.25)
    mixup: float = shared.MIXUP(0.8)
    cutmix: float = shared.CUTMIX(1.0)
    mixup_prob: float = setting(1.0, check=PROBABILITY)
    mixup_switch_prob: float = setting(0.5, check=PROBABILITY)
    model_ema: bool = False
    model_ema_decay: float = setting(0.9999, check=within(0, 1))
    amp: bool = shared.AMP(True)
    workers: int = shared.WORKERS(8)
    train_subset: int | None = shared.SUBSET(None)
    val_subset: int | None = shared.SUBSET(None)
    # embedded data only: validate on its test split, or on a held-out slice of its training images (the last
    # val_subset, default 10,000), disjoint from train_subset, for choosing a setting without looking at test numbers
    val_split: str = setting("test", check=one_of(VAL_SPLITS, "validation split"), omit_at_default=True)
    # the final training loss (dropout off, no label smoothing, the evaluation transform) is measured on this many
    # training images drawn once with seed 0 (null: all of them)
    train_eval_images: int | None = setting(10_000, check=OPTIONAL_POSITIVE_INT, omit_at_default=True)
    seed: int = shared.SEED(0)
    log_every: int = setting(50, check=POSITIVE_INT, result=False)
    # also checkpoint every N updates inside an epoch, to resume there (0: epoch ends only)
    recovery_every: int = setting(0, check=NON_NEGATIVE_INT, result=False, resumable=True)
    # also export the model after these epochs (exports/epoch<N>/), each transferred by a suite: transfer over
    # pretraining time; the last epoch's is the run's own export
    export_epochs: tuple[int, ...] = setting((), result=False, resumable=True)
    # torch.compile the training step: false, true (inductor) or a backend name (e.g. aot_eager, eager)
    compile: bool | str = setting(False, result=False, resumable=True)
    # any of tensorboard, wandb, mlflow (dropbench.core.tracking)
    loggers: tuple[str, ...] = setting(("tensorboard",), check=check_trackers, result=False, resumable=True)
    dataset_name: str | None = setting(None, result=False)  # the records' dataset name (default: from the data)
    # what was given on top of the recipe file (command line, suite): labels a variant in the table
    overrides: dict = dataclasses.field(default_factory=dict, compare=False, repr=False, metadata={"key": False})

    @property
    def earlier_export_epochs(self) -> tuple[int, ...]:
        """The epochs of ``export_epochs`` before the last, each exported to ``exports/epoch<N>/``."""
        return tuple(epoch for epoch in self.export_epochs if epoch < self.epochs)

    def missing_epoch_exports(self, run_dir: Path, epochs_done: int) -> list[int]:
        """The earlier export epochs a run in ``run_dir`` has passed (``epochs_done``) without an export of them:
        epochs listed after it ran them."""
        done = [epoch for epoch in self.earlier_export_epochs if epoch <= epochs_done]
        return [epoch for epoch in done if not (run_dir / epoch_export_dir(epoch)).is_dir()]

    @classmethod
    def load(
        cls, value: str, overrides: Mapping[str, Any] | None = None, variant: Mapping[str, Any] | None = None
    ) -> "Recipe":
        """A recipe file (or its name under ``configs/pretrain``) with ``overrides``, which label the recipe in the
        table (``cpu·epochs=4``), and a sweep's ``variant`` values, which name it (``cpu.epochs=20``)."""
        path = resolve_config(value, "pretrain")
        if path is None:
            raise UserInputError("recipe", f"unknown recipe '{value}'{did_you_mean(value, known_configs('pretrain'))}")
        overrides = dict(overrides or {}) | dict(variant or {})
        recipe = cls.from_config({"name": path.stem} | load_yaml(path, "recipe"), overrides)
        name = variant_name(recipe.name, variant or {})
        return dataclasses.replace(recipe, name=name, overrides=overrides, variant=dict(variant or {}))

    def check(self, prefix: str) -> None:
        if self.batch_size % self.per_device_batch:
            raise UserInputError(
                f"{prefix}per_device_batch",
                f"{self.per_device_batch} must divide batch_size={self.batch_size} (accumulation fills the rest)",
            )
        shared.check_warmup(self, prefix)
        held_out = self.val_subset or HOLDOUT_IMAGES
        if self.val_split == "holdout" and (self.train_subset or ARRAY_TRAIN_IMAGES) + held_out > ARRAY_TRAIN_IMAGES:
            raise UserInputError(
                f"{prefix}train_subset",
                f"{self.train_subset} training images and {held_out} held out exceed the {ARRAY_TRAIN_IMAGES} there "
                f"are: lower train_subset or val_subset",
            )
        epochs = list(self.export_epochs)
        if any(not isinstance(e, int) or isinstance(e, bool) or not 1 <= e <= self.epochs for e in epochs):
            raise UserInputError(f"{prefix}export_epochs", f"{epochs}: each must be an epoch from 1 to {self.epochs}")
        if epochs != sorted(set(epochs)):
            raise UserInputError(f"{prefix}export_epochs", f"{epochs}: list each epoch once, in order")
        if self.compile is not False and self.compile_backend not in _compile_backends():
            raise UserInputError(
                f"{prefix}compile",
                f"{self.compile!r} is not true, false or a torch.compile backend"
                f"{did_you_mean(str(self.compile), _compile_backends())}",
            )

    @property
    def compile_backend(self) -> str | None:
        """The torch.compile backend, None when the step runs eagerly."""
        return "inductor" if self.compile is True else (self.compile or None)


def _compile_backends() -> list[str]:
    import torch._dynamo

    return torch._dynamo.list_backends(exclude_tags=())


def split_overrides(items: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``key=value`` items of the command line by the config they set: a regime's fields (``dropout.rate``), a
    backbone's (``kwargs.depth``), else the recipe's (where an unknown key is refused with a did-you-mean)."""
    parts: dict[str, dict[str, Any]] = {"backbone": {}, "regime": {}, "recipe": {}}
    regime_keys = set(Regime.keys()) - {"name", "description"}
    backbone_keys = set(BackboneConfig.keys()) - {"name"}
    for key, value in items.items():
        head = key.partition(".")[0]
        part = "regime" if head in regime_keys else "backbone" if head in backbone_keys else "recipe"
        parts[part][key] = value
    return parts


def pretrain_identity(backbone: BackboneConfig, regime: Regime, recipe: Recipe, dataset: str) -> RunIdentity:
    """The identity of a pretraining run (``dataset``: the name ``pretrain.data.dataset_name`` gives the data)."""
    settings = recipe.settings()
    recipe_overrides = {k: v for k, v in recipe.overrides.items() if k in settings}  # the seed is a field
    parts = {"backbone": backbone, "regime": regime, "recipe": recipe}
    return RunIdentity(
        backbone=backbone.name,
        regime=regime.name,
        recipe=recipe.name,
        seed=recipe.seed,
        stage=StageName.PRETRAIN,
        task="classification",
        dataset=dataset,
        protocol="from_scratch",
        sweep={f"{part}.{key}": value for part, config in parts.items() for key, value in config.variant.items()}
        | ({EXPORT_EPOCH: recipe.epochs} if recipe.export_epochs and regime.train else {}),  # the last export
        parts={
            "backbone": Part.of(backbone.settings()),
            "regime": Part.of(regime.settings()),
            "recipe": Part.of(settings, recipe_overrides),
        },
    )
