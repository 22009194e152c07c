"""Pretraining speed on this machine, two comparisons in one run:

1. the DropController's cost: the same training step with and without ``controller.step`` (goal ≤ 1 %);
2. ``dropbench pretrain`` against a plain timm + torch loop (timm's per-image transform in a DataLoader) on the
   same micro model, data and batch (goal ≥ 1.0× its throughput), and against the model's step alone on a batch held
   in memory (goal ≥ 0.9×: the input pipeline's share), all timed over the training epoch only;
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
from timm.data import create_transform
from timm.optim import create_optimizer_v2
from torch import nn
from torch.utils.data import DataLoader

from dropbench.core.models import BackboneConfig
from dropbench.core.readers import ArrayImageDataset, load_mnist
from dropbench.pretrain.config import Recipe, Regime
from dropbench.pretrain.controller import DropController
from dropbench.pretrain.data import MNIST
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


def _step(model: nn.Module, optimizer, criterion, images: torch.Tensor, targets: torch.Tensor) -> None:
    loss = criterion(model(images), targets)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _plain_parts(backbone: BackboneConfig, recipe: Recipe):
    torch.manual_seed(0)
    model = backbone.create_model(10, dropout=0.1).train()
    optimizer = create_optimizer_v2(model, opt=recipe.opt, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return model, optimizer, nn.CrossEntropyLoss(label_smoothing=recipe.smoothing)


def plain_timm_loop(backbone: BackboneConfig, recipe: Recipe) -> float:
    """Images/s of the obvious alternative: timm's own transform per image (RandomResizedCrop, ToTensor, Normalize)
    in a DataLoader with the recipe's workers, timm model + AdamW + cross-entropy."""
    model, optimizer, criterion = _plain_parts(backbone, recipe)
    transform = create_transform(
        backbone.input_size, True, scale=recipe.scale, hflip=recipe.hflip, interpolation=recipe.interpolation
    )
    images, labels = load_mnist("train")
    data = ArrayImageDataset(images[: recipe.train_subset], labels[: recipe.train_subset], transform=transform)
    loader = DataLoader(data, batch_size=recipe.batch_size, shuffle=True, drop_last=True, num_workers=recipe.workers)
    start = time.perf_counter()
    seen = 0
    for images, targets in loader:
        _step(model, optimizer, criterion, images, targets)
        seen += len(images)
    return seen / (time.perf_counter() - start)


def model_step_only(backbone: BackboneConfig, recipe: Recipe) -> float:
    """Images/s of forward + backward + AdamW alone, on one batch held in memory (no input pipeline at all)."""
    model, optimizer, criterion = _plain_parts(backbone, recipe)
    images = torch.randn(recipe.batch_size, 3, backbone.input_size, backbone.input_size)
    targets = torch.randint(0, 10, (recipe.batch_size,))
    steps = recipe.train_subset // recipe.batch_size
    _step(model, optimizer, criterion, images, targets)
    start = time.perf_counter()
    for _ in range(steps):
        _step(model, optimizer, criterion, images, targets)
    return steps * recipe.batch_size / (time.perf_counter() - start)


def dropbench_loop(
    backbone: BackboneConfig, recipe: Recipe, diagnostics: DiagnosticsConfig | None = None, regime: str = "standard"
) -> float:
    """Training images/s of ``dropbench pretrain`` over all epochs (evaluation excluded). The default regime keeps
    dropout at 0.1 throughout, as the other arms do."""
    with tempfile.TemporaryDirectory() as tmp:
        pretrain(
            backbone,
            Regime.load(f"{regime}_dropout"),
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
    arms = {"model step only": model_step_only, "plain timm + torch": plain_timm_loop}
    arms["dropbench pretrain"] = dropbench_loop
    speeds: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(3):  # interleaved, so drift in machine load hits every arm alike
        for name, measure in arms.items():
            speeds[name].append(measure(backbone, recipe))
    median = {name: statistics.median(values) for name, values in speeds.items()}
    print(f"\n| loop ({args.images} MNIST images, batch {args.batch}, median of 3) | images/s |\n|---|---|")
    for name, value in median.items():
        print(f"| {name} | {value:.0f} |")
    ours = median["dropbench pretrain"]
    print(f"dropbench / plain: {ours / median['plain timm + torch']:.3f}×")
    print(f"dropbench / model step only: {ours / median['model step only']:.3f}× (goal ≥ 0.9)")

    # Gradient diagnostics at their default cadence need a run long enough to contain the cadence.
    default = DiagnosticsConfig()
    epochs = max(1, -(-default.every // (args.images // args.batch)))
    long_recipe = dataclasses.replace(recipe, epochs=epochs)
    without_diag = dropbench_loop(backbone, long_recipe, regime="early")
    with_diag = dropbench_loop(backbone, long_recipe, default, regime="early")
    print(
        f"\n| {epochs} epochs, diagnostics every={default.every} batches={default.batches} full={default.full} "
        f"| images/s |\n|---|---|"
    )
    print(f"| without diagnostics | {without_diag:.0f} |\n| with diagnostics | {with_diag:.0f} |")
    print(f"diagnostics overhead: {100 * (without_diag / with_diag - 1):+.1f} % training time")


if __name__ == "__main__":
    main()
