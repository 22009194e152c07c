"""Dense-transfer speed on this machine:

1. the adapter's forward beside a bare ``timm.create_model(..., features_only=True)`` forward of the same
   architecture and input (the obvious alternative), per family;
2. seconds per training iteration of the embedded Mask R-CNN and UperNet configs, per family.

    python benchmarks/bench_dense_transfer.py --exports runs/bench_exports [--iters 12]

Exports for the four micro families are made there on first use (one short MNIST epoch each).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dropbench.core.models import BackboneConfig, create_timm_model
from dropbench.pretrain.config import Recipe, Regime
from dropbench.pretrain.train import pretrain
from dropbench.transfer.backbone import TimmBackbone

FAMILIES = ("vit_micro", "swin_micro", "convnext_micro", "mixer_micro")
ROOT = Path(__file__).resolve().parents[1]


def make_exports(root: Path) -> dict[str, Path]:
    tiny = dict(epochs=1, train_subset=512, val_subset=64, batch_size=64, per_device_batch=64, warmup_epochs=0)
    for family in FAMILIES:
        if not (root / family / "export").is_dir():
            pretrain(
                BackboneConfig.load(family),
                Regime.load("no_dropout"),
                Recipe.load("cpu", tiny),
                "mnist",
                root / family,
                results_dir=None,
            )
    return {family: root / family / "export" for family in FAMILIES}


class _LastIntermediate(torch.nn.Module):
    """timm's ``forward_intermediates`` for the last block: the feature API where ``features_only`` is missing."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        return self.model.forward_intermediates(images, indices=1, intermediates_only=True)


def time_forward(module: torch.nn.Module, images: torch.Tensor, repeats: int = 20) -> float:
    module.eval()
    with torch.no_grad():
        module(images)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            module(images)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def seconds_per_iteration(export: Path, config: str, iters: int) -> float:
    """Median 'time' of mmengine's train log lines for a short run of the embedded config."""
    with tempfile.TemporaryDirectory() as tmp:
        task = "det" if "detection" in config else "seg"
        command = [
            sys.executable,
            "-m",
            "dropbench.cli",
            "transfer",
            task,
            "--backbone",
            str(export),
            "--config",
            str(ROOT / "configs" / config),
            "--work-dir",
            f"{tmp}/work",
            "--results",
            f"{tmp}/results",
            "--cfg-options",
            f"train_cfg.max_iters={iters}",
            "embedded_data.num_val=2",
            "default_hooks.logger.interval=1",
        ]
        subprocess.run(command, cwd=tmp, check=True, capture_output=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
        log = next(Path(tmp, "work").glob("*/vis_data/scalars.json"))
        times = [json.loads(line)["time"] for line in log.read_text().splitlines() if '"loss"' in line]
    return statistics.median(times[2:] or times)  # the first iterations warm up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exports", type=Path, default=Path("runs/bench_exports"))
    parser.add_argument("--iters", type=int, default=12)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES))
    args = parser.parse_args()
    exports = make_exports(args.exports)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch 4 at {args.size} px\n")
    print("| family | timm features_only ms | adapter ms | adapter / timm | Mask R-CNN s/iter | UperNet s/iter |")
    print("|---|---|---|---|---|---|")
    for family, export in exports.items():
        if family not in args.families:
            continue
        sidecar = json.loads((export / "backbone.json").read_text())
        adapter = TimmBackbone(str(export))
        # A fixed token grid (MLP-Mixer) runs at its pretraining size, and the embedded det/seg configs refuse it.
        size = adapter.fixed_size[0] if adapter.fixed_size else args.size
        images = torch.randn(4, 3, size, size)
        try:
            bare = create_timm_model(sidecar["model"], dict(sidecar["kwargs"], features_only=True))
        except (IndexError, KeyError):  # MLP-Mixer built through its class has no feature wrapper
            bare = _LastIntermediate(create_timm_model(sidecar["model"], dict(sidecar["kwargs"])))
        bare_s, adapter_s = time_forward(bare, images), time_forward(adapter, images)
        dense = ["refused", "refused"]
        if adapter.fixed_size is None:
            configs = ("detection/mask_rcnn_cpu.py", "segmentation/upernet_cpu.py")
            dense = [f"{seconds_per_iteration(export, config, args.iters):.2f}" for config in configs]
        times = f"{1000 * bare_s:.1f} | {1000 * adapter_s:.1f} | {adapter_s / bare_s:.2f}×"
        print(f"| {family} | {times} | {dense[0]} | {dense[1]} |")


if __name__ == "__main__":
    main()
