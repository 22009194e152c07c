"""The pretraining step on a GPU: ``dropbench pretrain`` against a plain timm + torch loop, eager and compiled.

For each backbone (default ``vit_tiny`` and ``convnext_femto``, the paper's): bf16 pretraining steps on synthetic
ImageNet-shaped data (224 px crops of random 256 px images, 1,000 classes, batch 256 per step) through
``dropbench pretrain`` (dropout annealed from 0.1 to 0, stochastic depth for ConvNeXt, whose only dropout is its
classifier's: a new rate every iteration, so the compiled run shows it does not recompile; its loader in worker
processes, as a real run has it) and through a plain loop on the same model and batch: timm model at a constant
rate 0.1,
``torch.optim.AdamW`` with its defaults, bf16 autocast, the batch already normalised on the GPU (no augmentation).
TF32 and cuDNN's autotuner are on for both; dropbench adds fused AdamW, channels_last for convolutional models
and its input: uint8 batches cropped, flipped and normalised on the GPU. Reported per arm: images/s (after one
epoch of warm-up and compilation), peak GPU memory, model FLOP utilisation (training FLOPs per image from
``torch.utils.flop_counter`` over the device's dense bf16 peak) and the compiled graphs counted.

    bash benchmarks/gpu_check.sh                       # on a GPU node; sized for under 8 minutes on one H100
    python benchmarks/gpu_check.py --device cpu --backbones vit_micro --steps 3 --batch 16 --compile aot_eager
"""

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch._dynamo.utils import counters
from torch.utils.flop_counter import FlopCounterMode

from dropbench.core.loop import gpu_step_settings
from dropbench.core.models import BackboneConfig
from dropbench.pretrain.config import DropSetting, Recipe, Regime
from dropbench.pretrain.controller import DROP_PATH, DROPOUT, block_drop_modules
from dropbench.pretrain.data import SYNTHETIC, SYNTHETIC_CLASSES
from dropbench.pretrain.train import pretrain

# Dense bf16 tensor-core peaks (FLOP/s) by device name; MFU is left out on other devices.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def training_flops_per_image(backbone: BackboneConfig, device: torch.device) -> float:
    """Forward + backward FLOPs of one image (matmuls and convolutions, as ``torch.utils.flop_counter`` counts)."""
    model = backbone.create_model(SYNTHETIC_CLASSES).to(device).train()
    images = torch.randn(2, 3, backbone.input_size, backbone.input_size, device=device)
    with FlopCounterMode(display=False) as counter:
        model(images).float().logsumexp(-1).sum().backward()
    return counter.get_total_flops() / len(images)


def recipe_for(args: argparse.Namespace, compile_backend: str | None) -> Recipe:
    """The basic (paper) recipe at a fixed batch, without the per-image augmentations a synthetic batch cannot take."""
    return Recipe.load(
        "basic",
        {
            "epochs": 2,
            "warmup_epochs": 1,
            "batch_size": args.batch,
            "per_device_batch": args.batch,
            "train_subset": args.batch * args.steps,
            "val_subset": args.batch,
            "aa": None,
            "mixup": 0.0,
            "cutmix": 0.0,
            "amp": True,
            "workers": min(8, os.cpu_count() or 1),
            "compile": compile_backend or False,
        },
    )


def scheduled_kind(backbone: BackboneConfig) -> str:
    """What the arms drop: dropout where the model has it inside its blocks (ViT, Swin, Mixer), else stochastic
    depth (ConvNeXt's only dropout is its classifier's, which a regime does not schedule)."""
    probe = backbone.create_model(SYNTHETIC_CLASSES, dropout=0.1)
    return DROPOUT if block_drop_modules(probe, DROPOUT) else DROP_PATH


def annealed_regime(backbone: BackboneConfig) -> Regime:
    """A rate annealed from 0.1 to 0, a new one every iteration: the compiled run shows it does not recompile."""
    setting = DropSetting(rate=0.1, mode="annealed", shape="linear")
    if scheduled_kind(backbone) == DROPOUT:
        return Regime("annealed_dropout", dropout=setting)
    return Regime("annealed_sd", drop_path=setting)


def dropbench_arm(backbone: BackboneConfig, args, device: torch.device, compile_backend: str | None) -> float:
    """Images/s of the second epoch of ``dropbench pretrain`` (the first one warms up and compiles)."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        pretrain(
            backbone,
            annealed_regime(backbone),
            recipe_for(args, compile_backend),
            SYNTHETIC,
            run,
            results_dir=None,
            device=str(device),
        )
        with (run / "log.csv").open() as f:
            return float(list(csv.DictReader(f))[-1]["train_images_per_s"])


def plain_arm(backbone: BackboneConfig, args, device: torch.device, compile_backend: str | None) -> float:
    """Images/s of a plain loop: timm model, torch AdamW, bf16 autocast, one normalised batch held on the GPU."""
    torch.manual_seed(0)
    rates = {"dropout" if scheduled_kind(backbone) == DROPOUT else "drop_path": 0.1}
    model = backbone.create_model(SYNTHETIC_CLASSES, **rates).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    step_model = torch.compile(model, backend=compile_backend) if compile_backend else model
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    images = torch.randn(args.batch, 3, backbone.input_size, backbone.input_size, device=device)
    targets = torch.randint(0, SYNTHETIC_CLASSES, (args.batch,), device=device)
    enabled = device.type == "cuda"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled):
            loss = criterion(step_model(images), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.steps):  # warm-up and compilation, as the first epoch of the dropbench arm
        step()
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    _synchronize(device)
    return args.steps * args.batch / (time.perf_counter() - start)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["vit_tiny", "convnext_femto"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per arm (and as many to warm up)")
    parser.add_argument("--compile", default="inductor", help="the torch.compile backend of the compiled arms")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {name}, batch {args.batch}, {args.steps} timed steps per arm", flush=True)
    peak = peak_flops(device)
    print("| backbone | loop | compile | images/s | vs plain | peak GiB | MFU | graphs |")
    print("|---|---|---|---|---|---|---|---|")
    for backbone_name in args.backbones:
        backbone = BackboneConfig.load(backbone_name)
        fast = gpu_step_settings(backbone.create_model(SYNTHETIC_CLASSES), "adamw", device)
        flops = training_flops_per_image(backbone, device)
        for compile_backend in (None, args.compile):
            speeds = {}
            for loop, arm in (("plain timm + torch", plain_arm), ("dropbench pretrain", dropbench_arm)):
                torch._dynamo.reset()
                counters.clear()
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                speeds[loop] = arm(backbone, args, device, compile_backend)
                memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
                mfu = f"{100 * speeds[loop] * flops / peak:.1f} %" if peak else "n/a"
                ratio = speeds[loop] / speeds["plain timm + torch"]
                graphs = counters["stats"]["unique_graphs"] if compile_backend else "-"
                print(
                    f"| {backbone.name} | {loop} | {compile_backend or 'eager'} | {speeds[loop]:.0f} | {ratio:.2f}× "
                    f"| {memory:.1f} | {mfu} | {graphs} |",
                    flush=True,
                )
        print(f"({backbone.name}: {flops / 1e9:.3g} GFLOP per training image; on this device {fast})", flush=True)


if __name__ == "__main__":
    main()
