"""PNG figures for the pretraining stage."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dropbench.io import atomic_write  # noqa: E402


def plot_schedules(schedules: dict[str, np.ndarray], iters_per_epoch: int, out: str | Path) -> Path:
    """One line per schedule, rate against epoch."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    for label, rates in schedules.items():
        ax.plot(np.arange(len(rates)) / iters_per_epoch, rates, label=label, linewidth=1.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("drop rate")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    fig.tight_layout()
    path = atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path
