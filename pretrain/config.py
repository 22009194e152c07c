"""Regimes and recipes: YAML files under ``configs/regimes`` and ``configs/pretrain``, validated into dataclasses."""

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from dropbench.core.configs import check_keys, known_configs, load_yaml, resolve_config
from dropbench.core.errors import UserInputError, did_you_mean
from dropbench.core.identity import Part, RunIdentity
from dropbench.core.models import BackboneConfig
from dropbench.core.tracking import check_trackers
from dropbench.pretrain.schedules import CUTOFF_MODES, drop_schedule, validate_schedule

# The schedulers timm's create_scheduler_v2 knows (timm 1.0).
TIMM_SCHEDULERS = ("cosine", "tanh", "step", "multistep", "plateau", "poly", "rsqrt", "constant")


@dataclass(frozen=True)
class DropSetting:
    """One scheduled rate: the paper's settings, with the cutoff given for ``reference_epochs``."""

    rate: float
    mode: str = "standard"
    shape: str = "constant"
    cutoff_epoch: int = 0
    reference_epochs: int | None = None

    def cutoff_for(self, epochs: int) -> int:
        """The cutoff scaled to a shorter run (a cutoff > 0 stays >= 1); longer runs keep the paper's cutoff."""
        if self.mode not in CUTOFF_MODES or not self.reference_epochs or epochs >= self.reference_epochs:
            return self.cutoff_epoch
        if self.cutoff_epoch == 0:
            return 0
        return max(1, round(self.cutoff_epoch * epochs / self.reference_epochs))

    def schedule(self, epochs: int, iters_per_epoch: int):
        return drop_schedule(self.rate, epochs, iters_per_epoch, self.cutoff_for(epochs), self.mode, self.shape)


@dataclass(frozen=True)
class Regime:
    name: str
    dropout: DropSetting | None = None
    drop_path: DropSetting | None = None
    description: str = ""
    train: bool = True  # False: the reference row `random_init`, the backbone's initialisation exported untrained

    @classmethod
    def load(cls, value: str) -> "Regime":
        path = resolve_config(value, "regimes")
        if path is None:
            raise UserInputError("regime", f"unknown regime '{value}'{did_you_mean(value, known_configs('regimes'))}")
        data = load_yaml(path, "regime")
        check_keys(data, {"name", "dropout", "drop_path", "description", "train"}, "regime.")
        train = data.get("train", True)
        if not isinstance(train, bool):
            raise UserInputError("regime.train", f"{train!r} is not true or false")
        if not train and (data.get("dropout") or data.get("drop_path")):
            raise UserInputError("regime.train", "a regime that does not train has no dropout or drop_path schedule")
        settings = {}
        for kind in ("dropout", "drop_path"):
            raw = data.get(kind)
            if raw is None:
                continue
            if not isinstance(raw, dict):
                raise UserInputError(f"regime.{kind}", "must be a mapping with rate, mode, shape, cutoff_epoch")
            check_keys(raw, {f.name for f in dataclasses.fields(DropSetting)}, f"regime.{kind}.")
            setting = DropSetting(**raw)
            if not isinstance(setting.rate, (int, float)) or not 0 <= setting.rate < 1:
                raise UserInputError(
                    f"regime.{kind}.rate", f"{setting.rate} is outside [0, 1); a drop rate is a probability"
                )
            epochs = setting.reference_epochs or max(setting.cutoff_epoch, 1)
            validate_schedule(
                setting.rate,
                epochs,
                1,
                setting.cutoff_epoch,
                setting.mode,
                setting.shape,
                prefix=f"regime.{kind}.",
            )
            if setting.rate > 0:
                settings[kind] = setting
        name, description = data.get("name", path.stem), data.get("description", "")
        return cls(name=name, description=description, train=train, **settings)

    def max_rates(self) -> dict[str, float]:
        return {k: s.rate for k, s in (("dropout", self.dropout), ("drop_path", self.drop_path)) if s}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Recipe:
    """Optimisation and augmentation settings (timm names where timm has one)."""

    name: str = "custom"
    epochs: int = 300
    batch_size: int = 4096  # global batch per optimizer update
    per_device_batch: int = 128  # gradient accumulation makes up the difference
    opt: str = "adamw"
    lr: float = 4e-3
    weight_decay: float = 0.05
    weight_decay_end: float | None = None  # cosine weight-decay schedule when set
    momentum: float = 0.9
    clip_grad: float | None = None
    sched: str = "cosine"
    warmup_epochs: int = 50
    warmup_lr: float = 1e-6
    min_lr: float = 1e-6
    aa: str | None = "rand-m9-mstd0.5-inc1"
    scale: tuple[float, float] = (0.08, 1.0)
    pad: int = 0  # pixels of border added before the random crop (0: none), so that crops also zoom out
    hflip: float = 0.5
    color_jitter: float | None = None
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    smoothing: float = 0.1
    reprob: float = 0.25
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    model_ema: bool = False
    model_ema_decay: float = 0.9999
    amp: bool = True  # bf16 autocast where a GPU is used
    workers: int = 8
    train_subset: int | None = None
    val_subset: int | None = None
    seed: int = 0
    log_every: int = 50
    recovery_every: int = 0  # also checkpoint every N updates inside an epoch, to resume there (0: epoch ends only)
    # torch.compile the training step: false, true (inductor) or a backend name (e.g. aot_eager, eager)
    compile: bool | str = False
    loggers: tuple[str, ...] = ("tensorboard",)  # any of tensorboard, wandb, mlflow (dropbench.core.tracking)
    dataset_name: str | None = None  # the records' dataset name (default: from the data, see pretrain.data)
    # what was given on top of the recipe file (command line, suite): labels a variant in the table
    overrides: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def load(cls, value: str, overrides: dict[str, Any] | None = None) -> "Recipe":
        path = resolve_config(value, "pretrain")
        if path is None:
            raise UserInputError("recipe", f"unknown recipe '{value}'{did_you_mean(value, known_configs('pretrain'))}")
        data = load_yaml(path, "recipe")
        data.setdefault("name", path.stem)
        allowed = {f.name for f in dataclasses.fields(cls)}
        check_keys(data, allowed, "recipe.")
        allowed.discard("overrides")
        for key, value_ in (overrides or {}).items():
            if key not in allowed:
                raise UserInputError(key, f"unknown override{did_you_mean(key, allowed)}")
            data[key] = value_
        data["overrides"] = dict(overrides or {})
        for key in _FLOAT_FIELDS & data.keys():
            data[key] = _as_float(data[key], f"recipe.{key}")
        if "scale" in data:
            data["scale"] = tuple(_as_float(v, "recipe.scale") for v in data["scale"])
        if "loggers" in data:
            data["loggers"] = check_trackers(data["loggers"] or [], "recipe.loggers")
        recipe = cls(**data)
        recipe.validate()
        return recipe

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "per_device_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UserInputError(f"recipe.{name}", f"{value!r} must be a positive integer")
        if not isinstance(self.recovery_every, int) or self.recovery_every < 0:
            raise UserInputError("recipe.recovery_every", f"{self.recovery_every!r} must be an integer >= 0 (0: off)")
        if self.batch_size % self.per_device_batch:
            raise UserInputError(
                "recipe.per_device_batch",
                f"{self.per_device_batch} must divide batch_size={self.batch_size} (accumulation fills the rest)",
            )
        if not 0 <= self.warmup_epochs < self.epochs:
            raise UserInputError("recipe.warmup_epochs", f"{self.warmup_epochs} must be in [0, epochs={self.epochs})")
        from timm.optim import list_optimizers

        if self.opt not in list_optimizers():
            raise UserInputError(
                "recipe.opt", f"unknown timm optimizer '{self.opt}'{did_you_mean(self.opt, list_optimizers())}"
            )
        if self.sched not in TIMM_SCHEDULERS:
            raise UserInputError(
                "recipe.sched", f"unknown timm scheduler '{self.sched}'{did_you_mean(self.sched, TIMM_SCHEDULERS)}"
            )
        for name in ("lr", "weight_decay", "smoothing", "reprob", "mixup", "cutmix"):
            if not isinstance(getattr(self, name), (int, float)) or getattr(self, name) < 0:
                raise UserInputError(f"recipe.{name}", f"{getattr(self, name)!r} must be a number >= 0")
        if self.compile is not False and self.compile_backend not in _compile_backends():
            raise UserInputError(
                "recipe.compile",
                f"{self.compile!r} is not true, false or a torch.compile backend"
                f"{did_you_mean(str(self.compile), _compile_backends())}",
            )
        for name in ("train_subset", "val_subset"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UserInputError(f"recipe.{name}", f"{value!r} must be a positive integer or null")

    @property
    def compile_backend(self) -> str | None:
        """The torch.compile backend, None when the step runs eagerly."""
        return "inductor" if self.compile is True else (self.compile or None)

    def to_dict(self) -> dict:
        settings = dataclasses.asdict(self) | {"scale": list(self.scale)}
        del settings["overrides"]
        return settings

    def settings(self) -> dict:
        """What changes a run's result: every field but its name, seed, logging and checkpoint cadence, dataset
        name, trackers and compilation (which, like the thread count, changes numbers only at float rounding)."""
        unchanged = ("name", "seed", "log_every", "recovery_every", "dataset_name", "compile", "loggers")
        return {k: v for k, v in self.to_dict().items() if k not in unchanged}


_FLOAT_FIELDS = {f.name for f in dataclasses.fields(Recipe) if f.type in (float, float | None)}


def _compile_backends() -> list[str]:
    import torch._dynamo

    return torch._dynamo.list_backends(exclude_tags=())


def _as_float(value: Any, field_name: str) -> Any:
    """YAML 1.1 reads ``4e-3`` as a string: accept it as the number it is meant to be."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise UserInputError(field_name, f"'{value}' is not a number") from None
    return value


def pretrain_identity(backbone: BackboneConfig, regime: Regime, recipe: Recipe, dataset: str) -> RunIdentity:
    """The identity of a pretraining run (``dataset``: the name ``pretrain.data.dataset_name`` gives the data)."""
    settings = recipe.settings()
    recipe_overrides = {k: v for k, v in recipe.overrides.items() if k in settings}  # the seed is a field
    return RunIdentity(
        backbone=backbone.name,
        regime=regime.name,
        recipe=recipe.name,
        seed=recipe.seed,
        stage="pretrain",
        task="classification",
        dataset=dataset,
        protocol="from_scratch",
        parts={
            "backbone": Part.of({k: v for k, v in backbone.to_dict().items() if k != "name"}),
            "regime": Part.of({k: v for k, v in regime.to_dict().items() if k not in ("name", "description")}),
            "recipe": Part.of(settings, recipe_overrides),
        },
    )
