"""WebDataset shards of an ImageNet-layout folder, read by timm's ``wds/`` reader.

``write_shards`` packs ``FOLDER/{train,val}/<class>/<image>`` into ``OUT/{train,val}-NNNNNN.tar`` (each image's
own bytes as ``<key>.<jpg|png|webp>`` and its class index as ``<key>.cls``; the training images in a seeded random
order, so every shard mixes the classes) and ``OUT/_info.json`` in the form timm's reader takes (sample counts,
shard names and lengths per split), plus the class names. A few large files instead of a million small ones: a
cluster file system serves them as sequential reads, without a metadata lookup per image.
"""

import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from timm.data import create_dataset
from tqdm import tqdm

from dropbench.core.errors import UserInputError
from dropbench.core.readers import image_folders

INFO_FILE = "_info.json"
SPLITS = ("train", "val")
_KEEP_BYTES = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}  # what timm's reader decodes


def is_shard_folder(path: str | Path) -> bool:
    return (Path(path) / INFO_FILE).is_file()


def write_shards(folder: str | Path, out: str | Path, shard_size: int = 1000, seed: int = 0) -> dict:
    """Write the shards of ``folder`` to ``out`` (made in a temp folder beside it, then renamed); returns the info."""
    folder, out = Path(folder), Path(out)
    if shard_size < 1:
        raise UserInputError("--shard-size", f"{shard_size} must be a positive number of images per shard")
    if out.exists():
        raise UserInputError("out", f"'{out}' already exists; pick a new folder for the shards")
    splits = dict(zip(SPLITS, image_folders(folder, SPLITS, "folder", check_images=True), strict=True))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        info = {"name": folder.resolve().name, "classes": splits["train"].classes, "splits": {}}
        for split, images in splits.items():
            order = np.random.default_rng(seed).permutation(len(images)) if split == "train" else range(len(images))
            samples = [images.samples[i] for i in order]
            info["splits"][split] = _write_split(tmp, split, samples, shard_size)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=1))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def _write_split(root: Path, split: str, samples: list[tuple[str, int]], shard_size: int) -> dict:
    filenames, lengths = [], []
    starts = range(0, len(samples), shard_size)
    for shard, start in enumerate(tqdm(starts, desc=f"{split} shards", unit="shard")):
        name = f"{split}-{shard:06d}.tar"
        chunk = samples[start : start + shard_size]
        with tarfile.open(root / name, "w") as tar:
            for offset, (path, label) in enumerate(chunk):
                key = f"{start + offset:08d}"
                extension, data = _image_bytes(path)
                _add(tar, f"{key}.{extension}", data)
                _add(tar, f"{key}.cls", str(label).encode())
        filenames.append(name)
        lengths.append(len(chunk))
    return {"name": split, "num_samples": len(samples), "filenames": filenames, "shard_lengths": lengths}


def _image_bytes(path: str) -> tuple[str, bytes]:
    """The file's own bytes where timm's reader decodes its format; other formats re-encoded as PNG (lossless)."""
    extension = _KEEP_BYTES.get(Path(path).suffix.lower())
    if extension:
        return extension, Path(path).read_bytes()
    buffer = io.BytesIO()
    with Image.open(path) as image:
        image.convert("RGB").save(buffer, format="PNG")
    return "png", buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(data)
    tar.addfile(member, io.BytesIO(data))


def read_info(root: Path) -> dict:
    try:
        info = json.loads((root / INFO_FILE).read_text())
        return info | {"splits": {split: info["splits"][split] for split in SPLITS}}
    except (OSError, ValueError, KeyError) as err:
        raise UserInputError("data", f"'{root / INFO_FILE}' is not the info of train and val shards ({err})") from None


def shard_datasets(root: Path, batch_size: int, seed: int, workers: int, train_tf, val_tf):
    """timm's ``wds/`` datasets for the train and val shards: the training stream reshuffles shards and a buffer of
    samples every epoch (``set_epoch``), seeded from ``seed`` and each loader worker's seed."""
    info = read_info(root)
    train = create_dataset("wds/", root=str(root), split="train", is_training=True, batch_size=batch_size, seed=seed)
    val = create_dataset("wds/", root=str(root), split="val", is_training=False, batch_size=batch_size)
    for dataset, transform in ((train, train_tf), (val, val_tf)):
        dataset.transform = transform
        dataset.set_loader_cfg(num_workers=workers)
    return info, train, val
