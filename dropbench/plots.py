"""PNG figures for the pretraining stage."""

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from dropbench.core.errors import UserInputError  # noqa: E402
from dropbench.core.io import save_png  # noqa: E402


def plot_schedules(schedules: dict[str, np.ndarray], iters_per_epoch: int, out: str | Path) -> Path:
    """One line per schedule, rate against epoch."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    for label, rates in schedules.items():
        ax.plot(np.arange(len(rates)) / iters_per_epoch, rates, label=label, linewidth=1.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("drop rate")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    return save_png(fig, out)


DIAGNOSTIC_TITLES = {
    "grad_norm": "gradient norm",
    "model_distance": "distance from initialisation",
    "gdv": "gradient direction variance",
    "gde": "gradient direction error",
}


def _run_identity(run_dir: Path) -> tuple[str, str]:
    """(backbone and regime, seed) of a run folder, from its config.json."""
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        return run_dir.name, ""
    config = json.loads(config_path.read_text())
    return f"{config['backbone']['name']} {config['regime']['name']}", f"seed {config['recipe']['seed']}"


def plot_diagnostics(run_dirs: list[Path], out_dir: Path) -> list[Path]:
    """One PNG per metric (``diagnostics_<metric>.png``), one line per run (a colour per regime), by iteration."""
    tables = {}
    for run_dir in map(Path, run_dirs):
        path = run_dir / "diagnostics.csv"
        if not path.is_file():
            raise UserInputError("run_dirs", f"'{run_dir}' has no diagnostics.csv; pretrain it with --diagnostics")
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        group, seed = _run_identity(run_dir)
        label = f"{group} {seed}".strip()
        while label in tables:
            label += "'"
        columns = {column: np.array([float(r[column]) for r in rows]) for column in rows[0]} if rows else {}
        tables[label] = (group, columns)
    # one colour per backbone + regime; its seeds share it
    groups = list(dict.fromkeys(group for group, _ in tables.values()))
    colours = {group: plt.get_cmap("tab10")(i % 10) for i, group in enumerate(groups)}
    written = []
    for metric, title in DIAGNOSTIC_TITLES.items():
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
        for label, (group, columns) in tables.items():
            if columns:
                ax.plot(
                    columns["update"], columns[metric], label=label, color=colours[group], linewidth=1.4, alpha=0.85
                )
        ax.set_xlabel("iteration")
        ax.set_ylabel(title)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=8)
        written.append(save_png(fig, Path(out_dir) / f"diagnostics_{metric}.png"))
    return written


def plot_curves(logs: dict[str, list[dict]], out: str | Path, title: str = "") -> Path:
    """Train loss and val top-1 per epoch, one line per run (``logs``: label → rows of a run's log.csv)."""
    fig, (loss_ax, top1_ax) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120)
    for label, rows in logs.items():
        epochs = [int(r["epoch"]) for r in rows]
        loss_ax.plot(epochs, [float(r["train_loss"]) for r in rows], marker="o", markersize=3, label=label)
        top1_ax.plot(epochs, [float(r["val_top1"]) for r in rows], marker="o", markersize=3, label=label)
    for ax, name in ((loss_ax, "train loss (the objective: dropout on, smoothing)"), (top1_ax, "val top-1 (%)")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    top1_ax.legend(frameon=False, fontsize=8)
    if title:
        fig.suptitle(title)
    return save_png(fig, out)


def plot_corruption_examples(clean: np.ndarray, cells: dict[str, np.ndarray], out: str | Path) -> list[Path]:
    """``out`` (PNG): one image clean and under each corruption (rows) at each severity (columns), from ``cells``
    (``"<corruption>/<severity>"`` → image); ``out`` with ``.csv``: each cell's mean absolute change in pixel value."""
    from dropbench.core.io import atomic_write_csv

    corruptions = list(dict.fromkeys(key.split("/")[0] for key in cells))
    severities = sorted({int(key.split("/")[1]) for key in cells})
    shape = (len(corruptions), len(severities) + 1)
    fig, axes = plt.subplots(*shape, figsize=(1.1 * shape[1], 1.1 * shape[0]), dpi=110)
    rows = []
    for r, corruption in enumerate(corruptions):
        for c, image in enumerate([clean, *(cells[f"{corruption}/{s}"] for s in severities)]):
            ax = axes[r, c]
            ax.imshow(image, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("clean" if c == 0 else f"severity {severities[c - 1]}", fontsize=7)
            if c == 0:
                ax.set_ylabel(corruption.replace("_", " "), fontsize=6, rotation=0, ha="right", va="center")
            else:
                change = float(np.abs(image.astype(float) - clean.astype(float)).mean())
                rows.append({"corruption": corruption, "severity": severities[c - 1], "mean_abs_change": change})
    png = save_png(fig, out)
    return [png, atomic_write_csv(Path(out).with_suffix(".csv"), ["corruption", "severity", "mean_abs_change"], rows)]
