"""Dense transfers on one process and on two (torchrun, gloo, CPU): do the records agree within seed noise?

The embedded Mask R-CNN and UperNet configs run on one export for transfer seeds 0..n-1, once in one process and
once under ``torchrun --nproc_per_node=2 ... --launcher pytorch`` with half the per-process batch (the same total
batch and, through ``auto_scale_lr``, the same lr). Each pair shares its transfer seed; the table gives each side's
mean ± sd and the paired difference with its t interval (n seeds).

What can differ by design: every rank draws its own augmentation and RoI/anchor sampling (``diff_rank_seed``), the
shards of the training data differ, mmdet's losses normalise by the positives of each process's own batch before
DDP averages the gradients, and the embedded UperNet's BatchNorm sees 8 images per process instead of 16 (mm*'s
paper configs use SyncBN for this).

    python benchmarks/distributed_dense.py --export runs/.../pretrain/export [--seeds 3] [--tasks det seg]
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

from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
TASKS = {
    "det": ("configs/detection/mask_rcnn_cpu.py", "train_dataloader.batch_size=2", ("box_AP", "mask_AP")),
    "seg": ("configs/segmentation/upernet_cpu.py", "train_dataloader.batch_size=8", ("mIoU",)),
}


def run(task: str, export: Path, seed: int, processes: int, folder: Path) -> tuple[dict[str, float], float]:
    config, half_batch, _ = TASKS[task]
    out = folder / f"{task}-p{processes}-s{seed}"
    command = ["-m", "dropbench.cli", "transfer", task, "--backbone", str(export), "--config", str(ROOT / config)]
    command += ["--work-dir", str(out / "work"), "--results", str(out / "results"), "--seed", str(seed)]
    if processes > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        command = [*launch, *command, "--launcher", "pytorch", "--cfg-options", half_batch]
    else:
        command = [sys.executable, *command]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=dict(os.environ, PYTHONHASHSEED="0"))
    seconds = time.perf_counter() - start
    records = (json.loads(p.read_text()) for p in (out / "results" / "records").glob("*.json"))
    return {r["metric"]: r["value"] for r in records}, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, required=True, help="a pretrained export folder")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tasks", nargs="+", choices=tuple(TASKS), default=list(TASKS))
    args = parser.parse_args()
    print("| task | metric | 1 process | 2 processes | 2 − 1 (paired t 95 %) | n | s/run 1 → 2 |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for task in args.tasks:
            runs = {p: [run(task, args.export, s, p, Path(folder)) for s in range(args.seeds)] for p in (1, 2)}
            seconds = {p: statistics.median(t for _, t in runs[p]) for p in runs}
            for metric in TASKS[task][2]:
                one, two = ([values[metric] for values, _ in runs[p]] for p in (1, 2))
                diffs = [b - a for a, b in zip(one, two, strict=True)]
                mean, n = statistics.mean(diffs), len(diffs)
                half = stats.t.ppf(0.975, n - 1) * statistics.stdev(diffs) / n**0.5 if n > 1 else float("nan")
                cells = (f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" for v in (one, two))
                print(
                    f"| {task} | {metric} | {' | '.join(cells)} | {mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]"
                    f" | {n} | {seconds[1]:.0f} → {seconds[2]:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
