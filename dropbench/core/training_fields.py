"""The training fields that pretraining recipes and classification dataset configs share, declared once: timm's
names, each with its check. A class takes one as ``lr: float = LR(4e-3)``, with its own default and flags."""

from dataclasses import dataclass, field
from typing import Any

from dropbench.core.errors import UserInputError
from dropbench.core.settings import (
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    OPTIONAL_NON_NEGATIVE,
    OPTIONAL_POSITIVE_INT,
    POSITIVE_INT,
    PROBABILITY,
    Check,
    one_of,
    setting,
)

# The schedulers timm's create_scheduler_v2 knows (timm 1.0).
TIMM_SCHEDULERS = ("cosine", "tanh", "step", "multistep", "plateau", "poly", "rsqrt", "constant")


def _timm_optimizers() -> list[str]:
    from timm.optim import list_optimizers

    return list_optimizers()


@dataclass(frozen=True)
class Shared:
    """One shared field: its check and flags; calling it with a default declares the field in a class."""

    check: Any = None
    flags: dict = field(default_factory=dict)

    def __call__(self, default: Any, **flags: bool) -> Any:
        return setting(default, check=self.check, **(self.flags | flags))


SCALE_CHECK = Check(lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 1, "must be [min, max] with 0 < min <= max <= 1")

EPOCHS = Shared(POSITIVE_INT)
BATCH_SIZE = Shared(POSITIVE_INT)
OPT = Shared(one_of(_timm_optimizers, "timm optimizer"))
LR = Shared(NON_NEGATIVE)
WEIGHT_DECAY = Shared(NON_NEGATIVE)
CLIP_GRAD = Shared(OPTIONAL_NON_NEGATIVE)
SCHED = Shared(one_of(TIMM_SCHEDULERS, "timm scheduler"))
WARMUP_EPOCHS = Shared(NON_NEGATIVE_INT)  # and below epochs: check_warmup
WARMUP_LR = Shared(NON_NEGATIVE)
MIN_LR = Shared(NON_NEGATIVE)
SMOOTHING = Shared(PROBABILITY)
MIXUP = Shared(NON_NEGATIVE)  # the Beta distribution's alpha; 0 is off
CUTMIX = Shared(NON_NEGATIVE)
AA = Shared()  # a timm auto-augment policy string, or null
SCALE = Shared(SCALE_CHECK)
HFLIP = Shared(PROBABILITY)
COLOR_JITTER = Shared(OPTIONAL_NON_NEGATIVE)
REPROB = Shared(PROBABILITY)
CROP_PCT = Shared()
INTERPOLATION = Shared()
AMP = Shared()  # bf16 autocast where a GPU is used
WORKERS = Shared(NON_NEGATIVE_INT)
SUBSET = Shared(OPTIONAL_POSITIVE_INT)  # the first N images (null: all)
SEED = Shared(flags={"result": False, "features": False})


def check_warmup(settings: Any, prefix: str) -> None:
    """Warm-up ends before the run does."""
    if not 0 <= settings.warmup_epochs < settings.epochs:
        raise UserInputError(
            f"{prefix}warmup_epochs", f"{settings.warmup_epochs} must be in [0, epochs={settings.epochs})"
        )
