"""Per-iteration drop-rate schedules.

``standard``/``early``/``late`` follow the reference semantics of *Dropout Reduces Underfitting* (Liu et al.,
ICML 2023), input for input: the array has ``epochs * iters_per_epoch`` entries; ``standard`` is the rate at
every iteration (whatever the shape and cutoff); ``early`` holds (``constant``) or decays linearly from
(``linear``) the rate over the first ``cutoff_epoch`` epochs and is 0 after — a cutoff of 0 means never on;
``late`` is 0 before the cutoff and the rate after — a cutoff of 0 is ``standard``. Ablation schedules from the
paper, beyond the reference: ``early`` with a ``cosine`` shape (a half-cosine from the rate to 0), and the
whole-run modes ``curriculum`` (curriculum dropout, 0 → rate) and ``annealed`` (annealed dropout, rate → 0).

The rate is not checked here, as in the reference: a regime checks that it is a probability.
"""

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from dropbench.core.errors import UserInputError
from dropbench.core.settings import NON_NEGATIVE_INT, OPTIONAL_POSITIVE_INT, Settings, one_of, setting, within

SHAPES_BY_MODE: dict[str, tuple[str, ...]] = {
    "standard": ("constant", "linear", "cosine"),  # the shape is ignored, as in the reference
    "early": ("constant", "linear", "cosine"),
    "late": ("constant",),
    "curriculum": ("linear",),
    "annealed": ("linear",),
}
MODES = tuple(SHAPES_BY_MODE)
SHAPES = tuple(dict.fromkeys(s for shapes in SHAPES_BY_MODE.values() for s in shapes))
CUTOFF_MODES = ("early", "late")  # the modes whose schedule depends on cutoff_epoch


def _decay(rate: float, n: int, shape: str) -> np.ndarray:
    """``n`` values from ``rate`` down to 0 inclusive (a single value is ``rate``)."""
    if shape == "constant":
        return np.full(n, rate, dtype=np.float64)
    if shape == "linear":
        return np.linspace(rate, 0.0, n)
    progress = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(n)
    return rate * 0.5 * (1.0 + np.cos(np.pi * progress))  # cosine


def drop_schedule(
    rate: float,
    epochs: int,
    iters_per_epoch: int,
    cutoff_epoch: int = 0,
    mode: str = "standard",
    shape: str = "constant",
) -> np.ndarray:
    """The drop rate for every training iteration, shape ``(epochs * iters_per_epoch,)``, dtype float64; the
    arguments of the reference's ``drop_scheduler``, in its order."""
    return DropSetting(rate, mode, shape, cutoff_epoch).rates(epochs, iters_per_epoch)


@dataclass(frozen=True)
class DropSetting(Settings):
    """One scheduled rate, as a regime gives it: the cutoff is for ``reference_epochs`` (the paper's 300) and
    scales to a shorter run. A schedule parameter is one field here, read in :meth:`rates`: regimes, the
    ``schedule`` command and the import of the authors' checkpoints take it from this class."""

    PREFIX: ClassVar[str] = "schedule."

    rate: float = setting(check=within(0, 1, high_open=True))
    mode: str = setting("standard", check=one_of(MODES, "mode"))
    shape: str = setting("constant", check=one_of(SHAPES, "shape"))
    cutoff_epoch: int = setting(0, check=NON_NEGATIVE_INT)
    reference_epochs: int | None = setting(None, check=OPTIONAL_POSITIVE_INT)

    def check(self, prefix: str) -> None:
        self._check_run(self.reference_epochs or max(self.cutoff_epoch, 1), 1, prefix)

    def ignores(self, name: str) -> bool:
        """Whether the mode leaves field ``name`` unread: ``standard`` reads the rate alone, ``curriculum`` and
        ``annealed`` no cutoff (as :meth:`for_run` drops them)."""
        cutoff = name in ("cutoff_epoch", "reference_epochs")
        return (self.mode == "standard" and (cutoff or name == "shape")) or (cutoff and self.mode not in CUTOFF_MODES)

    def cutoff_for(self, epochs: int) -> int:
        """The cutoff scaled to a shorter run (a cutoff > 0 stays >= 1); longer runs keep the paper's cutoff."""
        if self.mode not in CUTOFF_MODES or not self.reference_epochs or epochs >= self.reference_epochs:
            return self.cutoff_epoch
        if self.cutoff_epoch == 0:
            return 0
        return max(1, round(self.cutoff_epoch * epochs / self.reference_epochs))

    def for_run(self, epochs: int) -> "DropSetting":
        """The schedule a run of ``epochs`` gets: the cutoff scaled, and what the mode ignores left out, so two
        settings that give the same rates compare equal."""
        if self.mode == "standard":
            return dataclasses.replace(self, shape="constant", cutoff_epoch=0, reference_epochs=None)
        cutoff = self.cutoff_for(epochs) if self.mode in CUTOFF_MODES else 0
        return dataclasses.replace(self, cutoff_epoch=cutoff, reference_epochs=None)

    def rates(self, epochs: int, iters_per_epoch: int) -> np.ndarray:
        """The rate at every iteration of a run of ``epochs`` epochs (the rate itself is not checked here, as in
        the reference: a regime checks that it is a probability)."""
        setting = self.for_run(epochs)
        setting._check_run(epochs, iters_per_epoch, "")
        total = int(epochs) * int(iters_per_epoch)
        if setting.mode == "standard":
            return np.full(total, setting.rate, dtype=np.float64)
        if setting.mode in ("curriculum", "annealed"):
            ramp = np.linspace(0.0, setting.rate, total)
            return ramp if setting.mode == "curriculum" else ramp[::-1].copy()
        on_iters = setting.cutoff_epoch * int(iters_per_epoch)
        if setting.mode == "early":
            return np.concatenate([_decay(setting.rate, on_iters, setting.shape), np.zeros(total - on_iters)])
        return np.concatenate([np.zeros(on_iters), np.full(total - on_iters, setting.rate, dtype=np.float64)])

    def _check_run(self, epochs: int, iters_per_epoch: int, prefix: str) -> None:
        """What the schedule of a run cannot take, named with ``prefix``."""
        if self.mode not in SHAPES_BY_MODE:
            raise UserInputError(f"{prefix}mode", f"unknown mode '{self.mode}'; choose from {', '.join(MODES)}")
        if self.shape not in SHAPES_BY_MODE[self.mode]:
            raise UserInputError(
                f"{prefix}shape",
                f"shape '{self.shape}' does not apply to mode '{self.mode}'; "
                f"choose from {', '.join(SHAPES_BY_MODE[self.mode])}",
            )
        if not np.isfinite(self.rate):
            raise UserInputError(f"{prefix}rate", f"{self.rate} is not a number")
        for name, value in (("epochs", epochs), ("iters_per_epoch", iters_per_epoch)):
            if isinstance(value, bool) or int(value) != value or value < 0:
                raise UserInputError(f"{prefix}{name}", f"{value} must be a whole number >= 0")
        cutoff = self.cutoff_epoch
        if self.mode in CUTOFF_MODES and not (int(cutoff) == cutoff and 0 <= cutoff <= epochs):
            raise UserInputError(
                f"{prefix}cutoff_epoch",
                f"{cutoff} must be a whole number in [0, {epochs}] (the run has {epochs} epochs)",
            )
