"""Classification transfer speed on this machine, for one backbone (default: the micro ViT at 32 px).

1. feature extraction (the linear probe's eval-mode forward to pooled pre-logits), images/s: the whole pipeline
   (optdigits PIL images → timm eval transform → model) and the model alone on ready tensors;
2. fine-tuning, images/s: ``dropbench transfer cls --protocol finetune`` on optdigits (training time only, from
   its ``log.csv``) and the model's training step alone (forward, backward, AdamW) on ready tensors.

Speed does not depend on the weights, so the export is a freshly initialised model. On a shared machine the
numbers move with the other load: the load average is printed beside them.

    python benchmarks/bench_classification.py [--backbone vit_micro] [--repeats 3] [--epochs 2] [--threads 1]
"""

import argparse
import contextlib
import csv
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from timm.data import create_transform
from timm.optim import create_optimizer_v2
from torch import nn

from dropbench.core.export import ExportSidecar, export_backbone
from dropbench.core.models import BackboneConfig
from dropbench.transfer.classification import extract_features, transfer_classification
from dropbench.transfer.cls_data import TransformedDataset, load_cls_config, load_cls_data


def make_export(backbone: BackboneConfig, folder: Path) -> Path:
    torch.manual_seed(0)
    sidecar = ExportSidecar(
        backbone.model, backbone.kwargs, 10, backbone.input_size, backbone.name, "none", "none", config_hash="bench"
    )
    return export_backbone(backbone.create_model(10), folder, sidecar)


def feature_extraction(backbone: BackboneConfig, repeats: int, batch: int) -> tuple[float, float]:
    """Median images/s of the full feature pipeline on optdigits' training split, and of the model alone."""
    model = backbone.create_model(10).eval()
    config = load_cls_config("optdigits")
    data = load_cls_data(config)
    transform = create_transform(
        input_size=backbone.input_size, is_training=False, interpolation=config.interpolation, crop_pct=1.0
    )
    dataset = TransformedDataset(data.train, transform)
    device = torch.device("cpu")
    pipeline = [extract_features(model, dataset, batch, 0, device, contextlib.nullcontext)[2] for _ in range(repeats)]
    images = torch.randn(batch, 3, backbone.input_size, backbone.input_size)
    model_only = []
    with torch.no_grad():
        model.forward_head(model.forward_features(images), pre_logits=True)  # warm-up
        for _ in range(repeats):
            start, steps = time.perf_counter(), 20
            for _ in range(steps):
                model.forward_head(model.forward_features(images), pre_logits=True)
            model_only.append(steps * batch / (time.perf_counter() - start))
    return statistics.median(pipeline), statistics.median(model_only)


def training_step(backbone: BackboneConfig, repeats: int, batch: int) -> float:
    """Median images/s of forward + backward + AdamW on ready tensors (no data pipeline)."""
    model = backbone.create_model(10).train()
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    images = torch.randn(batch, 3, backbone.input_size, backbone.input_size)
    targets = torch.randint(0, 10, (batch,))
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)

    def steps(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            criterion(model(images), targets).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return n * batch / (time.perf_counter() - start)

    steps(3)
    return statistics.median(steps(20) for _ in range(repeats))


def finetune_command(export: Path, epochs: int) -> list[float]:
    """Training images/s of each epoch of the real fine-tuning command on optdigits."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        work_dir = Path(tmp) / "work"
        transfer_classification(
            export, "optdigits", "finetune", work_dir, None, {"epochs": epochs, "warmup_epochs": 0}, "cpu"
        )
        with (work_dir / "log.csv").open() as f:
            return [float(row["train_images_per_s"]) for row in csv.DictReader(f)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="vit_micro")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64, help="fine-tuning batch (the optdigits config's)")
    parser.add_argument("--feature-batch", type=int, default=256, help="feature-extraction batch")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice, one per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone = BackboneConfig.load(args.backbone)
    print(
        f"{backbone.name} at {backbone.input_size} px, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, load average before {os.getloadavg()[0]:.2f}"
    )
    pipeline, model_only = feature_extraction(backbone, args.repeats, args.feature_batch)
    print(f"feature extraction: {pipeline:8.0f} images/s (optdigits → transform → model), {model_only:8.0f} (model)")
    step = training_step(backbone, args.repeats, args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        per_epoch = finetune_command(make_export(backbone, Path(tmp) / "export"), args.epochs)
    shown = ", ".join(f"{v:.0f}" for v in per_epoch)
    print(
        f"fine-tuning:        {max(per_epoch):8.0f} images/s (transfer cls, best epoch of: {shown}), {step:8.0f} (step)"
    )
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
