"""The embedded default, end to end: the micro ViT pretrained on MNIST under no / standard / early / late
dropout, each export transferred to the embedded detection and segmentation configs, then the comparison table
and figures. Finished runs (their records exist) are not run again.
"""

import csv
import time
from pathlib import Path

from dropbench import CONFIG_ROOT
from dropbench.compare import plot_deltas, read_records, render, summarise
from dropbench.io import atomic_write_text
from pretrain.config import BackboneConfig, Recipe, Regime
from pretrain.data import MNIST
from pretrain.plots import plot_curves, plot_schedules
from pretrain.train import pretrain

DEMO_BACKBONE = "vit_micro"
DEMO_REGIMES = ("no_dropout", "standard_dropout", "early_dropout", "late_dropout")
DEMO_RECIPE = "cpu"
# (task, config, cfg-options): short fine-tunes, sized for a few minutes on 2 cores in all
DEMO_TRANSFERS = (
    ("det", CONFIG_ROOT / "detection" / "mask_rcnn_cpu.py", ["train_cfg.max_iters=20", "embedded_data.num_val=16"]),
    ("seg", CONFIG_ROOT / "segmentation" / "upernet_cpu.py", ["train_cfg.max_iters=20", "embedded_data.num_val=16"]),
)


def _transfer(task: str, export: Path, config: Path, work_dir: Path, results_dir: Path, options: list[str]) -> None:
    if task == "det":
        from transfer.detection import transfer_detection as run
    else:
        from transfer.segmentation import transfer_segmentation as run
    run(export, config, work_dir, results_dir, options)


def _transfer_done(results_dir: Path, task: str, regime: str, config: Path) -> bool:
    folder = results_dir / "records"
    pattern = f"{DEMO_BACKBONE}__{regime}__{DEMO_RECIPE}__*__transfer__*__{config.stem}__*.json"
    return folder.is_dir() and any(folder.glob(pattern))


def run_demo(runs_dir: Path, results_dir: Path, transfers: bool = True) -> dict[str, float]:
    """Run the demo; returns the wall time of each stage in seconds."""
    backbone, recipe = BackboneConfig.load(DEMO_BACKBONE), Recipe.load(DEMO_RECIPE)
    stage_seconds = {"pretrain": 0.0, "det": 0.0, "seg": 0.0}
    summaries = {}
    for name in DEMO_REGIMES:
        run_dir = runs_dir / f"{DEMO_BACKBONE}-{name}"
        print(f"── pretrain {DEMO_BACKBONE} / {name}", flush=True)
        start = time.perf_counter()
        summaries[name] = pretrain(
            backbone, Regime.load(name), recipe, MNIST, run_dir, results_dir=results_dir, resume=run_dir.exists()
        )
        stage_seconds["pretrain"] += time.perf_counter() - start
    for task, config, options in DEMO_TRANSFERS if transfers else ():
        for name in DEMO_REGIMES:
            if _transfer_done(results_dir, task, name, config):
                continue
            print(f"── {task} {DEMO_BACKBONE} / {name}", flush=True)
            start = time.perf_counter()
            work_dir = runs_dir / f"{DEMO_BACKBONE}-{name}-{config.stem}"
            _transfer(task, runs_dir / f"{DEMO_BACKBONE}-{name}" / "export", config, work_dir, results_dir, options)
            stage_seconds[task] += time.perf_counter() - start

    print(f"\n{DEMO_BACKBONE} on MNIST, recipe '{recipe.name}' ({recipe.epochs} epochs)")
    print(f"{'regime':<18} {'final train loss':>16} {'val top-1 %':>12}")
    for name, summary in summaries.items():
        print(f"{name:<18} {summary.train_loss:>16.4f} {summary.val_top1:>12.2f}")

    records, _ = read_records(results_dir)
    stats = summarise(records)
    table = render(stats, "md")
    atomic_write_text(results_dir / "table.md", table)
    print("\n" + table)
    figures = results_dir / "figures"
    epochs_per_run = {}
    for name in DEMO_REGIMES:
        with (runs_dir / f"{DEMO_BACKBONE}-{name}" / "log.csv").open(newline="") as f:
            epochs_per_run[name] = list(csv.DictReader(f))
    written = [
        plot_curves(epochs_per_run, figures / "pretrain_curves.png", title=f"{DEMO_BACKBONE} on MNIST"),
        plot_deltas(stats, figures / "deltas.png"),
        plot_schedules(
            {
                name: Regime.load(name).dropout.schedule(recipe.epochs, summaries[name].iters_per_epoch)
                for name in DEMO_REGIMES
                if Regime.load(name).dropout
            },
            summaries[DEMO_REGIMES[0]].iters_per_epoch,
            figures / "schedules.png",
        ),
    ]
    print("table:", results_dir / "table.md")
    print("figures:", ", ".join(str(p) for p in written))
    return stage_seconds
