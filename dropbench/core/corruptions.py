"""Common corruptions (Hendrycks & Dietterich 2019): the 15 types × 5 severities of ImageNet-C, drawn with the
``imagecorruptions`` package on any labelled image array, and the mean corruption error (mCE) against a reference.

A corrupted set is made once per (images, count, seed) and cached as one ``.npz``: every regime of a study is
measured on the same corrupted images. ``imagecorruptions`` needs images of at least 32 × 32 px: smaller ones (the
28 px digits) are corrupted zero-padded to 32 and cropped back. Each image of each cell draws from its own seed, so
a cell is the same whichever process makes it.
"""

import hashlib
import json
import os
import types
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from dropbench.core.io import atomic_write
from dropbench.core.lock import RunLock

# ImageNet-C's 15 benchmark corruptions, in its order: noise, blur, weather, digital
CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
SEVERITIES = (1, 2, 3, 4, 5)
MIN_SIDE = 32  # imagecorruptions refuses smaller images
SEED = 0  # which test images a protocol measures, and every corruption's draws
CACHE = Path("data") / "corruptions"  # the corrupted sets, relative to the working folder
CACHE_VERSION = 1


def _imagecorruptions():
    """``imagecorruptions.corrupt``, made to run on today's scikit-image and NumPy.

    Its last release (1.1.2) still passes ``multichannel=True`` to ``skimage.filters.gaussian`` (removed in
    scikit-image 0.19; bethgelab/imagecorruptions#30) and uses ``np.float_`` (removed in NumPy 2.0). Both are
    renamed for that module alone, as the fix merged upstream does. Its impulse noise calls
    ``skimage.util.random_noise``, which since scikit-image 0.19 draws from a fresh unseeded generator: it is given
    one seeded from NumPy's global RNG, as every other corruption draws."""
    with warnings.catch_warnings():  # its scipy.ndimage.interpolation and pkg_resources imports are deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        import imagecorruptions
        import imagecorruptions.corruptions as module

    if not getattr(module, "_dropbench_compatible", False):
        gaussian = module.gaussian

        def gaussian_with_channel_axis(image, *args, multichannel=None, **kwargs):
            if multichannel:
                kwargs.setdefault("channel_axis", -1)
            return gaussian(image, *args, **kwargs)

        module.gaussian = gaussian_with_channel_axis
        module.np = _NumpyWithFloat_("numpy")
        module.sk = _SkimageSeeded("skimage")
        module._dropbench_compatible = True
    return imagecorruptions.corrupt


class _NumpyWithFloat_(types.ModuleType):
    float_ = np.float64

    def __getattr__(self, name: str):
        return getattr(np, name)


class _SeededUtil(types.ModuleType):
    def __getattr__(self, name: str):
        import skimage.util

        return getattr(skimage.util, name)

    @staticmethod
    def random_noise(image, **kwargs):
        import skimage.util

        kwargs.setdefault("rng", int(np.random.randint(2**31)))
        return skimage.util.random_noise(image, **kwargs)


class _SkimageSeeded(types.ModuleType):
    util = _SeededUtil("skimage.util")

    def __getattr__(self, name: str):
        import skimage

        return getattr(skimage, name)


def test_subset(count: int, total: int) -> np.ndarray:
    """Which ``count`` of ``total`` test images a corruption protocol measures (sorted, drawn with ``SEED``)."""
    return np.sort(np.random.default_rng(SEED).choice(total, count, replace=False))


def image_seed(seed: int, corruption: str, severity: int, index: int) -> int:
    """The NumPy seed of one image of one cell."""
    digest = hashlib.sha256(f"{seed}/{corruption}/{severity}/{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def corrupt_images(images: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """``images`` (N × H × W grey or N × H × W × 3 RGB, uint8) with one corruption at one severity, same shape."""
    corrupt = _imagecorruptions()
    grey = images.ndim == 3
    height, width = images.shape[1:3]
    pad_h, pad_w = max(0, MIN_SIDE - height), max(0, MIN_SIDE - width)
    out = np.empty_like(images)
    state = np.random.get_state()  # imagecorruptions draws from NumPy's global RNG
    try:
        for index, image in enumerate(images):
            rgb = np.repeat(image[:, :, None], 3, axis=2) if grey else image
            rgb = np.pad(rgb, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
            np.random.seed(image_seed(seed, corruption, severity, index))
            corrupted = np.asarray(corrupt(rgb, corruption_name=corruption, severity=severity))
            corrupted = corrupted[pad_h // 2 : pad_h // 2 + height, pad_w // 2 : pad_w // 2 + width]
            # a grey image keeps the first channel: averaging would weaken noise drawn per channel
            out[index] = corrupted[:, :, 0] if grey else corrupted
    finally:
        np.random.set_state(state)
    return out


def _cell(args: tuple) -> np.ndarray:
    images, corruption, severity, seed = args
    return corrupt_images(images, corruption, severity, seed)


def corrupted_set(
    images: np.ndarray, name: str, cache_dir: Path, seed: int = 0, workers: int = 2, progress=None
) -> dict[str, np.ndarray]:
    """Every corruption × severity of ``images``, as ``{"<corruption>/<severity>": array}``, made once and cached in
    ``cache_dir`` under a name that carries ``name``, the images' digest and the seed. ``progress(done, total)`` is
    called as the cells are made."""
    digest = hashlib.sha256(images.tobytes() + repr(images.shape).encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"{name}-{len(images)}-seed{seed}-{digest}-v{CACHE_VERSION}.npz"
    if path.is_file():
        return dict(np.load(path))
    lock = RunLock(path)
    lock.take()
    try:
        if path.is_file():  # another process made it while this one waited
            return dict(np.load(path))
        cells = [(c, s) for c in CORRUPTIONS for s in SEVERITIES]
        jobs = [(images, c, s, seed) for c, s in cells]
        made: dict[str, np.ndarray] = {}
        with ProcessPoolExecutor(max(1, workers)) as pool:
            for done, ((c, s), array) in enumerate(zip(cells, pool.map(_cell, jobs), strict=True), start=1):
                made[f"{c}/{s}"] = array
                if progress is not None:
                    progress(done, len(cells))
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: _save_npz(tmp, made))
        meta = {"images": len(images), "seed": seed, "digest": digest, "version": CACHE_VERSION}
        atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(meta)))
    finally:
        lock.release()
    return made


def _save_npz(tmp: str, arrays: dict[str, np.ndarray]) -> None:
    with open(tmp, "wb") as file:  # a file object: np.savez would append .npz to a path
        np.savez(file, **arrays)
        file.flush()
        os.fsync(file.fileno())


def corruption_errors(top1: dict[str, float]) -> dict[str, float]:
    """Per corruption, the top-1 error (percent) summed over its severities, from ``{"<corruption>/<sev>": top1}``."""
    return {c: sum(100.0 - top1[f"{c}/{s}"] for s in SEVERITIES) for c in CORRUPTIONS}


def mean_corruption_error(errors: dict[str, float], reference: dict[str, float]) -> float:
    """mCE (percent): the mean over corruptions of the summed error divided by the reference's (Hendrycks &
    Dietterich's CE_c, normalised by a reference model's errors as theirs are by AlexNet's)."""
    return 100.0 * float(np.mean([errors[c] / reference[c] for c in CORRUPTIONS]))


PROTOCOL = "corruptions"  # the protocol of an export's evaluation under corruptions
CORRUPTED_TOP1 = "corrupted_top1"  # the mean top-1 over the 75 cells
CLEAN_TOP1 = "clean_top1"  # the top-1 on the same images, uncorrupted
CELL_COLUMNS = ["dataset", "corruption", "severity", "images", "top1"]


def measure_corruptions(
    model, images: np.ndarray, labels: np.ndarray, transform, name: str, cache_dir: Path, *, batch_size: int,
    device, makers: int = 2, amp: bool = True,
) -> tuple[dict[str, float], list[dict]]:  # fmt: skip
    """``model``'s top-1 on ``images`` clean and in every cell: ``(metrics, each cell's row for the csv)``. The
    metrics are ``corrupted_top1``, ``clean_top1``, ``corruption_drop`` and ``top1_<corruption>`` (the mean over
    its severities)."""
    from tqdm import tqdm

    from dropbench.core.identity import CORRUPTION_DROP

    with tqdm(total=len(CORRUPTIONS) * len(SEVERITIES), desc=f"corrupting {len(images)} {name}") as bar:
        cells = corrupted_set(images, name, cache_dir, SEED, makers, lambda *_: bar.update())
    clean = _top1(model, images, labels, transform, batch_size, device, amp)
    top1 = {c: _top1(model, array, labels, transform, batch_size, device, amp) for c, array in tqdm(cells.items())}
    metrics, rows = summarise_cells(top1, name, dict.fromkeys(top1, len(images)))
    metrics |= {CLEAN_TOP1: clean, CORRUPTION_DROP: clean - metrics[CORRUPTED_TOP1]}
    return metrics, rows


def summarise_cells(top1: dict[str, float], name: str, images: dict[str, int]) -> tuple[dict[str, float], list[dict]]:
    """From each cell's top-1 (``{"<corruption>/<severity>": top1}``) and image count: ``corrupted_top1`` (the mean
    over the cells), ``top1_<corruption>`` (the mean over its severities), and each cell's row for the csv."""
    metrics = {CORRUPTED_TOP1: float(np.mean(list(top1.values())))}
    for corruption in CORRUPTIONS:
        metrics[f"top1_{corruption}"] = float(np.mean([top1[f"{corruption}/{s}"] for s in SEVERITIES]))
    rows = [
        {"dataset": name, "corruption": c, "severity": s, "images": images[f"{c}/{s}"], "top1": top1[f"{c}/{s}"]}
        for c in CORRUPTIONS
        for s in SEVERITIES
    ]
    return metrics, rows


def cell_top1(rows: list[dict]) -> dict[str, float]:
    """``{"<corruption>/<severity>": top1}`` from cell rows as ``measure_corruptions`` writes them."""
    return {f"{row['corruption']}/{row['severity']}": float(row["top1"]) for row in rows}


def mce_of(rows: list[dict], reference: list[dict]) -> float:
    """The mCE of a run's cell rows against a reference's (both as ``measure_corruptions`` writes them)."""
    return mean_corruption_error(corruption_errors(cell_top1(rows)), corruption_errors(cell_top1(reference)))


def _top1(model, images: np.ndarray, labels: np.ndarray, transform, batch_size: int, device, amp: bool) -> float:
    from torch.utils.data import DataLoader

    from dropbench.core.loop import autocast_for, predict_logits
    from dropbench.core.readers import ArrayImageDataset

    loader = DataLoader(ArrayImageDataset(images, labels, transform), batch_size)
    logits, targets = predict_logits(model, loader, device, autocast_for(device, amp))
    return 100.0 * logits.argmax(dim=1).eq(targets).double().mean().item()
