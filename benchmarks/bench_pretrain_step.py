"""Pretraining speed on this machine, two comparisons in one run:

1. the DropController's cost: the same training step with and without ``controller.step`` (goal ≤ 1 %);
2. ``dropbench pretrain`` against a plain timm + torch loop on the same micro model, data and batch
   (goal ≥ 1.0× its throughput), both timed over the training epoch only;
3. the gradient diagnostics at their default cadence (goal ≤ 10 % of training time).

    python benchmarks/bench_pretrain_step.py [--backbone vit_micro] [--steps 60] [--repeats 5]
"""

import argparse
import csv
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from torch import nn
from torch.utils.data import DataLoader

from dropbench.core.models import BackboneConfig
from dropbench.pretrain.config import Recipe, Regime
from dropbench.pretrain.controller import DropController
from dropbench.pretrain.data import MNIST, build_data
from dropbench.pretrain.diagnostics import DiagnosticsConfig
from dropbench.pretrain.train import pretrain


def controller_overhead(backbone: BackboneConfig, steps: int, repeats: int, batch: int) -> tuple[float, float, float]:
    """Median seconds per training step without and with the controller, and seconds per ``controller.step``."""
    torch.manual_seed(0)
    model = backbone.create_model(10, dropout=0.1, drop_path=0.1).train()
    # A rate that changes every iteration (so every module is rewritten each step) but stays near 0.1, so
    # that both arms do the same dropout work: a rate of 0 would skip the dropout kernels altogether.
    rates = np.linspace(0.1, 0.0999, steps)
    controller = DropController(model, {"dropout": (rates, 0.1), "drop_path": (rates, 0.1)})
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05)
    images = torch.randn(batch, 3, backbone.input_size, backbone.input_size)
    targets = torch.randint(0, 10, (batch,))
    criterion = nn.CrossEntropyLoss()

    def run(with_controller: bool) -> float:
        start = time.perf_counter()
        for step in range(steps):
            if with_controller:
                controller.step(step)
            loss = criterion(model(images), targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return (time.perf_counter() - start) / steps

    run(False)  # warm-up
    without, with_ = [], []
    for _ in range(repeats):  # interleaved, so drift in machine load hits both alike
        without.append(run(False))
        with_.append(run(True))
    start = time.perf_counter()
    for step in range(10_000):
        controller.step(step % steps)
    per_call = (time.perf_counter() - start) / 10_000
    return statistics.median(without), statistics.median(with_), per_call


def plain_timm_loop(backbone: BackboneConfig, recipe: Recipe) -> float:
    """Images/s of the obvious alternative: timm model + AdamW + cross-entropy over the same loader."""
    torch.manual_seed(0)
    splits = build_data(MNIST, recipe, backbone.input_size)
    model = backbone.create_model(splits.num_classes, dropout=0.1).train()
    optimizer = create_optimizer_v2(model, opt=recipe.opt, lr=recipe.lr, weight_decay=recipe.weight_decay)
    criterion = nn.CrossEntropyLoss(label_smoothing=recipe.smoothing)
    loader = DataLoader(
        splits.train, batch_size=recipe.batch_size, shuffle=True, drop_last=True, num_workers=recipe.workers
    )
    start = time.perf_counter()
    seen = 0
    for images, targets in loader:
        loss = criterion(model(images), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seen += len(images)
    return seen / (time.perf_counter() - start)


def dropbench_loop(backbone: BackboneConfig, recipe: Recipe, diagnostics: DiagnosticsConfig | None = None) -> float:
    """Training images/s of ``dropbench pretrain`` over all epochs (evaluation excluded)."""
    with tempfile.TemporaryDirectory() as tmp:
        pretrain(
            backbone,
            Regime.load("early_dropout"),
            recipe,
            MNIST,
            Path(tmp) / "run",
            results_dir=None,
            diagnostics=diagnostics,
        )
        with (Path(tmp) / "run" / "log.csv").open() as f:
            rows = list(csv.DictReader(f))
    seconds = sum(float(r["epoch_seconds"]) for r in rows)
    return sum(float(r["train_images_per_s"]) * float(r["epoch_seconds"]) for r in rows) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="vit_micro")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--images", type=int, default=6400)
    args = parser.parse_args()
    backbone = BackboneConfig.load(args.backbone)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, backbone {backbone.name}")

    without, with_, per_call = controller_overhead(backbone, args.steps, args.repeats, args.batch)
    print(f"\n| training step (batch {args.batch}) | ms/step |\n|---|---|")
    print(f"| without controller | {1000 * without:.2f} |\n| with controller | {1000 * with_:.2f} |")
    print(f"controller overhead: {100 * (with_ / without - 1):+.2f} % (timed steps; noise of a few % either way)")
    print(f"controller.step alone: {1e6 * per_call:.1f} µs per call = {100 * per_call / without:.3f} % of a step")

    recipe = Recipe.load(
        "cpu",
        {
            "epochs": 1,
            "warmup_epochs": 0,
            "batch_size": args.batch,
            "per_device_batch": args.batch,
            "train_subset": args.images,
            "val_subset": 128,
        },
    )
    plain, ours = [], []
    for _ in range(3):
        plain.append(plain_timm_loop(backbone, recipe))
        ours.append(dropbench_loop(backbone, recipe))
    plain_median, ours_median = statistics.median(plain), statistics.median(ours)
    print(f"\n| loop ({args.images} MNIST images, batch {args.batch}) | images/s |\n|---|---|")
    print(f"| plain timm + torch | {plain_median:.0f} |\n| dropbench pretrain | {ours_median:.0f} |")
    print(f"dropbench / plain: {ours_median / plain_median:.3f}×")

    # Gradient diagnostics at their default cadence need a run long enough to contain the cadence.
    default = DiagnosticsConfig()
    epochs = max(1, -(-default.every // (args.images // args.batch)))
    long_recipe = dataclasses.replace(recipe, epochs=epochs)
    without_diag = dropbench_loop(backbone, long_recipe)
    with_diag = dropbench_loop(backbone, long_recipe, default)
    print(
        f"\n| {epochs} epochs, diagnostics every={default.every} batches={default.batches} full={default.full} "
        f"| images/s |\n|---|---|"
    )
    print(f"| without diagnostics | {without_diag:.0f} |\n| with diagnostics | {with_diag:.0f} |")
    print(f"diagnostics overhead: {100 * (without_diag / with_diag - 1):+.1f} % training time")


if __name__ == "__main__":
    main()
