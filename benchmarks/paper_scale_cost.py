"""What one iteration of each paper-scale det/seg config costs, per paper backbone, at the real input size:

- seconds per training iteration on this machine's CPU (float32: AMP needs CUDA), the median over ``--iters``
  iterations after one warm-up, at the config's own batch per process (2: 8 GPUs × 2 = 16 images a step);
- the process's peak resident memory;
- training GFLOP per image (forward + backward, counted by ``torch.utils.flop_counter`` over one training step;
  mmcv's RoIAlign and NMS kernels are not counted: they are a few per cent of a step), on the largest training
  scale (a 640×480 image at short side 800: 1067×800) for Mask R-CNN and on the 512×512 (Mixer: 224×224) crops
  for UperNet;
- what that implies for a whole schedule on 8 GPUs, at a sustained per-GPU throughput given by ``--gpu-tflops``
  (an assumption, not a measurement: detection steps are dominated by small kernels and run far below a GPU's
  peak; measure yours with ``benchmarks/gpu_check.sh``).

Each case runs in its own process (so that peak memory is its own) on the small real data of
``tests/paper_scale.py`` with untrained exports at the paper's widths.

    python benchmarks/paper_scale_cost.py [--iters 3] [--gpu-tflops 20] [--backbones vit_tiny ...]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Images a schedule trains on: 1x = 12 COCO epochs of 117,266 images; 160k iterations of 16 crops.
SCHEDULES = {"mask_rcnn_1x_coco.py": 12 * 117_266, "mask_rcnn_3x_coco.py": 36 * 117_266, "upernet_160k": 160_000 * 16}


def cases(backbones: list[str]) -> list[tuple[str, str, str]]:
    from tests.paper_scale import FIXED_GRID

    found = []
    for backbone in backbones:
        if backbone not in FIXED_GRID:  # Mask R-CNN refuses a fixed token grid
            found.append((backbone, "det", "detection/mask_rcnn_1x_coco.py"))
        seg = "upernet_160k_ade20k_224.py" if backbone in FIXED_GRID else "upernet_160k_ade20k.py"
        found.append((backbone, "seg", f"segmentation/{seg}"))
    return found


def measure(backbone: str, kind: str, config: str, iters: int, folder: Path) -> dict:
    """One case, in this process: seconds per iteration, training GFLOP per image, peak memory."""
    import torch
    from mmengine.hooks import Hook
    from mmengine.runner import Runner
    from torch.utils.flop_counter import FlopCounterMode

    from dropbench.transfer import mm_runner
    from dropbench.transfer.detection import DETECTION
    from dropbench.transfer.segmentation import SEGMENTATION
    from tests.conftest import make_untrained_export
    from tests.paper_scale import DET_SMOKE, SEG_SMOKE, make_paper_data

    make_paper_data(folder, num_train=4, num_val=1)
    os.chdir(folder)
    export = make_untrained_export(backbone, folder / "exports" / backbone, "random_init")
    spec = DETECTION if kind == "det" else SEGMENTATION
    skipped = ("batch_size", "max_", "val_interval")
    options = [o for o in (DET_SMOKE if kind == "det" else SEG_SMOKE) if not any(k in o for k in skipped)]
    steps = f"train_cfg.max_epochs={-(-(iters + 1) * 2 // 4)}" if kind == "det" else f"train_cfg.max_iters={iters + 1}"
    options += [steps, "train_dataloader.batch_size=2", "train_cfg.val_interval=1000"]
    cfg = mm_runner.configure(spec, export, ROOT / "configs" / config, options)
    spec.prepare_data(cfg)
    cfg.work_dir = str(folder / "work")
    cfg.pop("dataset_name", None)
    mm_runner.use_float32_without_gpu(cfg)
    cfg.randomness = dict(seed=0)

    class IterationTimes(Hook):
        def __init__(self):
            self.seconds: list[float] = []

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            self.start = time.perf_counter()

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            self.seconds.append(time.perf_counter() - self.start)

    runner = Runner.from_cfg(cfg)
    timer = IterationTimes()
    runner.register_hook(timer)
    runner.train()
    loader = runner.build_dataloader(cfg.val_dataloader if kind == "det" else cfg.train_dataloader)
    batch = next(iter(loader))
    if kind == "det":  # the val pipeline's 1333×800 resize: the largest training scale, as a batch of 2
        batch = {key: value * 2 for key, value in batch.items()}
    with FlopCounterMode(display=False) as counter:
        runner.model.train_step(batch, runner.optim_wrapper)
    size = tuple(batch["inputs"][0].shape[-2:])
    return {
        "backbone": backbone,
        "config": Path(config).name,
        "seconds_per_iteration": statistics.median(timer.seconds[1:]),
        "iterations": len(timer.seconds) - 1,
        "gflop_per_image": counter.get_total_flops() / 2 / 1e9,
        "input": f"{size[1]}×{size[0]}",
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "threads": torch.get_num_threads(),
    }


def projected_hours(row: dict, schedule_images: int, gpus: int, tflops: float) -> float:
    return row["gflop_per_image"] * 1e9 * schedule_images / (gpus * tflops * 1e12) / 3600


def main() -> None:
    from tests.paper_scale import PAPER_BACKBONES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--gpu-tflops", type=float, default=20.0, help="assumed sustained TFLOP/s per GPU")
    parser.add_argument("--backbones", nargs="+", default=list(PAPER_BACKBONES))
    parser.add_argument("--case", nargs=3, help=argparse.SUPPRESS)  # one case, in a child process
    args = parser.parse_args()
    if args.case:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(measure(*args.case, args.iters, Path(tmp))))
        return
    rows = []
    for backbone, kind, config in cases(args.backbones):
        command = [sys.executable, __file__, "--iters", str(args.iters), "--case", backbone, kind, config]
        done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"measured {backbone} {config}", file=sys.stderr, flush=True)
    print(f"CPU: {os.cpu_count()} cores, {rows[0]['threads']} threads; batch 2 per iteration; float32\n")
    head = "| backbone | config | input | CPU s/iter | peak RSS GiB | train GFLOP/image |"
    print(head + f" 8 GPUs at {args.gpu_tflops:g} TFLOP/s each: h per schedule |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        if row["config"].startswith("mask_rcnn"):
            schedules = ", ".join(
                f"{name.split('_')[2]} {projected_hours(row, SCHEDULES[name], 8, args.gpu_tflops):.1f}"
                for name in ("mask_rcnn_1x_coco.py", "mask_rcnn_3x_coco.py")
            )
        else:
            schedules = f"160k {projected_hours(row, SCHEDULES['upernet_160k'], 8, args.gpu_tflops):.1f}"
        print(
            f"| {row['backbone']} | {row['config']} | {row['input']} | {row['seconds_per_iteration']:.1f} "
            f"| {row['peak_rss_gib']:.1f} | {row['gflop_per_image']:.0f} | {schedules} |"
        )


if __name__ == "__main__":
    main()
