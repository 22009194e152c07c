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

import numpy as np

from dropbench.core.errors import UserInputError

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


def _whole(value, name: str, prefix: str) -> None:
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise UserInputError(f"{prefix}{name}", f"{value} must be a whole number >= 0")


def validate_schedule(
    rate: float, epochs: int, iters_per_epoch: int, cutoff_epoch: int, mode: str, shape: str, prefix: str = ""
) -> None:
    """Raise UserInputError naming the first argument the schedule cannot take (``prefix`` goes before the name)."""
    if mode not in SHAPES_BY_MODE:
        raise UserInputError(f"{prefix}mode", f"unknown mode '{mode}'; choose from {', '.join(MODES)}")
    if shape not in SHAPES_BY_MODE[mode]:
        raise UserInputError(
            f"{prefix}shape",
            f"shape '{shape}' does not apply to mode '{mode}'; choose from {', '.join(SHAPES_BY_MODE[mode])}",
        )
    if not np.isfinite(rate):
        raise UserInputError(f"{prefix}rate", f"{rate} is not a number")
    _whole(epochs, "epochs", prefix)
    _whole(iters_per_epoch, "iters_per_epoch", prefix)
    if mode in CUTOFF_MODES and not (int(cutoff_epoch) == cutoff_epoch and 0 <= cutoff_epoch <= epochs):
        raise UserInputError(
            f"{prefix}cutoff_epoch",
            f"{cutoff_epoch} must be a whole number in [0, {epochs}] (the run has {epochs} epochs)",
        )


def drop_schedule(
    rate: float,
    epochs: int,
    iters_per_epoch: int,
    cutoff_epoch: int = 0,
    mode: str = "standard",
    shape: str = "constant",
) -> np.ndarray:
    """The drop rate for every training iteration, shape ``(epochs * iters_per_epoch,)``, dtype float64."""
    validate_schedule(rate, epochs, iters_per_epoch, cutoff_epoch, mode, shape)
    total = int(epochs) * int(iters_per_epoch)
    if mode == "standard":
        return np.full(total, rate, dtype=np.float64)
    if mode in ("curriculum", "annealed"):
        ramp = np.linspace(0.0, rate, total)
        return ramp if mode == "curriculum" else ramp[::-1].copy()
    on_iters = int(cutoff_epoch) * int(iters_per_epoch)
    off_iters = total - on_iters
    if mode == "early":
        return np.concatenate([_decay(rate, on_iters, shape), np.zeros(off_iters)])
    return np.concatenate([np.zeros(on_iters), np.full(off_iters, rate, dtype=np.float64)])  # late
