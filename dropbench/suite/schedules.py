"""The drop-rate schedules a suite's regimes give its runs (a sweep's every point), in one figure with its csv."""

import math
from pathlib import Path

import numpy as np

from dropbench.core.embedded import ARRAY_TRAIN_IMAGES, EMBEDDED_ARRAYS
from dropbench.core.io import atomic_write_csv
from dropbench.suite.plan import Suite

DEFAULT_ITERS_PER_EPOCH = 100


def iters_per_epoch(recipe, data: str) -> int:
    """Updates per epoch of a recipe: its training subset (or MNIST's 60k) over its batch size; a folder's size is
    not read here, so it falls back to a resolution of 100 points an epoch."""
    images = recipe.train_subset or (ARRAY_TRAIN_IMAGES if data in EMBEDDED_ARRAYS else None)
    return math.ceil(images / recipe.batch_size) if images else DEFAULT_ITERS_PER_EPOCH


def plot_suite_schedules(suite: Suite, out: Path, iters: int | None = None) -> list[Path]:
    """``out`` (PNG): one line per regime × kind of rate, at each recipe's length; ``out`` with ``.csv``: the
    rates it draws, one column per line, one row per update."""
    from dropbench.plots import plot_schedules

    first_seed = min(seed for _, seed in suite.recipes)  # seeds leave schedules alone: one recipe per variant
    recipes = {name: recipe for (name, seed), recipe in suite.recipes.items() if seed == first_seed}
    schedules, per_epoch = {}, iters
    for recipe in recipes.values():
        per_epoch = iters or iters_per_epoch(recipe, suite.data)
        for name, regime in suite.regimes.items():
            for kind, setting in regime.schedules().items():
                label = f"{name} ({kind})" + (f", {recipe.name}" if len(recipes) > 1 else "")
                schedules[label] = setting.rates(recipe.epochs, per_epoch)
    length = max((len(r) for r in schedules.values()), default=0)
    rows = [
        {"epoch": step / per_epoch} | {label: float(r[step]) if step < len(r) else "" for label, r in schedules.items()}
        for step in range(length)
    ]
    csv = atomic_write_csv(out.with_suffix(".csv"), ["epoch", *schedules], rows)
    return [plot_schedules({k: np.asarray(v) for k, v in schedules.items()}, per_epoch, out), csv]
