"""Per-iteration drop-rate schedules.

``standard``/``early``/``late`` with the ``constant`` and ``linear`` shapes follow the reference semantics of
*Dropout Reduces Underfitting* (Liu et al., ICML 2023): the array has ``epochs * iters_per_epoch`` entries;
``early`` holds (or decays linearly from) the rate over the first ``cutoff_epoch`` epochs and is 0 after;
``late`` is 0 before the cutoff and the rate after. Ablation shapes from the paper: ``cosine`` (early, a
half-cosine from the rate to 0), and the whole-run ``increasing`` (curriculum dropout, 0 → rate) and
``decreasing`` (annealed dropout, rate → 0) under ``standard``.
"""

import numpy as np

from dropbench.errors import UserInputError

SHAPES_BY_MODE: dict[str, tuple[str, ...]] = {
    "standard": ("constant", "increasing", "decreasing"),
    "early": ("constant", "linear", "cosine"),
    "late": ("constant",),
}
MODES = tuple(SHAPES_BY_MODE)
SHAPES = tuple(dict.fromkeys(s for shapes in SHAPES_BY_MODE.values() for s in shapes))


def _decay(rate: float, n: int, shape: str) -> np.ndarray:
    """``n`` values from ``rate`` down to 0 inclusive (a single value is ``rate``)."""
    if shape == "constant":
        return np.full(n, rate)
    if shape == "linear":
        return np.linspace(rate, 0.0, n)
    progress = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(n)
    return rate * 0.5 * (1.0 + np.cos(np.pi * progress))  # cosine


def validate_schedule(
    rate: float, epochs: int, iters_per_epoch: int, cutoff_epoch: int, mode: str, shape: str, prefix: str = ""
) -> None:
    """Raise UserInputError naming the first bad argument (``prefix`` is prepended to the field names)."""
    if mode not in SHAPES_BY_MODE:
        raise UserInputError(f"{prefix}mode", f"unknown mode '{mode}'; choose from {', '.join(MODES)}")
    if shape not in SHAPES_BY_MODE[mode]:
        raise UserInputError(
            f"{prefix}shape",
            f"shape '{shape}' does not apply to mode '{mode}'; choose from {', '.join(SHAPES_BY_MODE[mode])}",
        )
    if not 0.0 <= rate < 1.0:
        raise UserInputError(f"{prefix}rate", f"{rate} is outside [0, 1); a drop rate is a probability below 1")
    if int(epochs) != epochs or epochs < 1:
        raise UserInputError(f"{prefix}epochs", f"{epochs} must be a positive integer")
    if int(iters_per_epoch) != iters_per_epoch or iters_per_epoch < 1:
        raise UserInputError(f"{prefix}iters_per_epoch", f"{iters_per_epoch} must be a positive integer")
    if mode != "standard" and not (int(cutoff_epoch) == cutoff_epoch and 1 <= cutoff_epoch <= epochs):
        raise UserInputError(
            f"{prefix}cutoff_epoch",
            f"{cutoff_epoch} must be an integer in [1, {epochs}] (the run has {epochs} epochs)",
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
    total = epochs * iters_per_epoch
    if mode == "standard":
        if shape == "constant":
            return np.full(total, rate)
        ramp = np.linspace(0.0, rate, total)
        return ramp if shape == "increasing" else ramp[::-1].copy()
    on_iters = cutoff_epoch * iters_per_epoch
    off_iters = total - on_iters
    if mode == "early":
        return np.concatenate([_decay(rate, on_iters, shape), np.zeros(off_iters)])
    return np.concatenate([np.zeros(on_iters), np.full(off_iters, rate)])  # late
