"""The ImageNet input pipeline on this machine: images/s per loader worker, ours against timm's own loader, and an
image folder against its WebDataset shards.

Data: real photos (the two JPEGs scikit-learn ships, 427 × 640) cut into ``--images`` different JPEG files of
ImageNet's typical size (random crops of 60–100 % of the photo, resized so the short side is 375 px, flipped at
random; quality 90) in 10 class folders, ``train/`` and a small ``val/``, then sharded with ``dropbench data shard``.
Every arm decodes, applies the paper's training transform (``basic`` recipe: RandAugment rand-m9-mstd0.5-inc1,
random resized crop to 224 px, flip, bicubic) and ends with normalised float batches (random erasing 0.25):

- timm: ``timm.data.create_dataset`` + ``create_loader`` (its prefetcher normalises and erases, here on the CPU);
- dropbench, folder: the pretraining loader (per-image seeded transforms to uint8) + ``DeviceAugment``;
- dropbench, shards: the same over the shards, streamed by timm's ``wds/`` reader.

    python benchmarks/bench_loader.py [--images 3000] [--workers 1 2] [--batch 64]
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import sklearn.datasets
import torch
from PIL import Image
from timm.data import create_dataset, create_loader

from dropbench.pretrain.augment import DeviceAugment
from dropbench.pretrain.config import Recipe
from dropbench.pretrain.data import build_data, build_loaders
from dropbench.pretrain.distributed import Processes
from dropbench.pretrain.shards import write_shards

INPUT = 224


def photo_folder(root: Path, count: int, classes: int = 10, seed: int = 0) -> Path:
    images = Path(sklearn.datasets.__file__).parent / "images"
    photos = [Image.open(images / name) for name in ("china.jpg", "flower.jpg")]
    rng = np.random.default_rng(seed)
    for split, n in (("train", count), ("val", max(count // 20, classes))):
        for index in range(n):
            photo = photos[index % 2]
            scale = rng.uniform(0.6, 1.0)
            width, height = int(photo.width * scale), int(photo.height * scale)
            left, top = rng.integers(0, photo.width - width + 1), rng.integers(0, photo.height - height + 1)
            image = photo.crop((left, top, left + width, top + height))
            image = image.resize((round(375 * width / height), 375), Image.BICUBIC)
            if rng.random() < 0.5:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
            folder = root / split / f"class{index % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{index:06d}.jpg", quality=90)
    return root


def recipe(batch: int, workers: int, shards: bool) -> Recipe:
    overrides = {"epochs": 2, "warmup_epochs": 0, "batch_size": batch, "per_device_batch": batch, "workers": workers}
    return Recipe.load("basic", overrides | ({"train_subset": None, "val_subset": None} if shards else {}))


def images_per_second(batches, finish, limit: int) -> float:
    """Batches after the first (worker start-up excluded) until ``limit`` images, finished by ``finish``."""
    iterator = iter(batches)
    finish(next(iterator)[0])
    seen, start = 0, time.perf_counter()
    for images, _ in iterator:
        finish(images)
        seen += len(images)
        if seen >= limit:
            break
    return seen / (time.perf_counter() - start)


def timm_arm(folder: Path, batch: int, workers: int, limit: int) -> float:
    config = recipe(batch, workers, shards=False)
    dataset = create_dataset("", root=str(folder / "train"), is_training=True)
    loader = create_loader(
        dataset,
        input_size=(3, INPUT, INPUT),
        batch_size=batch,
        is_training=True,
        scale=config.scale,
        hflip=config.hflip,
        auto_augment=config.aa,
        interpolation=config.interpolation,
        re_prob=config.reprob,
        re_mode="const",
        num_workers=workers,
        device=torch.device("cpu"),
        use_prefetcher=True,
    )
    return images_per_second(loader, lambda images: images, limit)


def dropbench_arm(data: Path, batch: int, workers: int, limit: int, shards: bool) -> float:
    config = recipe(batch, workers, shards)
    splits = build_data(str(data), config, INPUT, check_images=False)
    sampler, loader, generator, _ = build_loaders(splits, config, Processes(), torch.device("cpu"))
    sampler.set_epoch(0)
    generator.manual_seed(0)
    augment = DeviceAugment(config, INPUT, torch.device("cpu"), geometric=False)
    return images_per_second(loader, augment, limit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    limit = args.images - 2 * args.batch
    with tempfile.TemporaryDirectory() as tmp:
        folder = photo_folder(Path(tmp) / "photos", args.images)
        shards = Path(tmp) / "shards"
        write_shards(folder, shards, shard_size=500)
        arms = {
            "timm create_loader, folder": lambda w: timm_arm(folder, args.batch, w, limit),
            "dropbench, folder": lambda w: dropbench_arm(folder, args.batch, w, limit, shards=False),
            "dropbench, shards": lambda w: dropbench_arm(shards, args.batch, w, limit, shards=True),
        }
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.images} JPEGs (375 px short side)")
        print(f"batch {args.batch}, median of {args.repeats}, the arms interleaved\n")
        print("| loader | workers | images/s | per worker | vs timm |\n|---|---|---|---|---|")
        for workers in args.workers:
            speeds = {name: [] for name in arms}
            for _ in range(args.repeats):
                for name, arm in arms.items():
                    speeds[name].append(arm(workers))
            median = {name: float(np.median(values)) for name, values in speeds.items()}
            for name, value in median.items():
                ratio = value / median["timm create_loader, folder"]
                print(f"| {name} | {workers} | {value:.0f} | {value / workers:.0f} | {ratio:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
