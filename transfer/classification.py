"""Classification transfer of an exported backbone: full fine-tuning or a linear probe on frozen features.

``dropbench transfer cls --backbone runs/x/export --dataset optdigits --protocol linear --work-dir runs/x-optdigits``

- ``finetune``: the exported classifier with a new head, timm transforms (and optional mixup), AdamW with layer-wise
  lr decay, a cosine schedule and label smoothing; evaluated on the test split each epoch (``log.csv``).
- ``linear``: pooled pre-logit features extracted once in eval mode (no augmentation) and cached as safetensors; a
  multinomial logistic regression on standardised features, fitted full-batch with L-BFGS, its L2 strength ``C``
  chosen on a held-out part of train, then refitted on all of train and evaluated on the test split.
- ``knn`` and ``fewshot``: on the same cached features (``dropbench.transfer.feature_protocols``).

Each metric goes to a result record (``dropbench.core.identity``) in percent; a linear probe also records the C it
chose (``chosen_c``; on ``holdout_fraction`` of the training images, never on the test split). Fine-tuning trains
with the loop pretraining uses (``dropbench.core.loop``).
"""

import hashlib
import logging
import os
import random
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dropbench.core.calibration import UNITS as CALIBRATION_UNITS
from dropbench.core.calibration import calibrate, plot_reliability
from dropbench.core.checkpoint import (
    check_same_run,
    load_checkpoint,
    rng_state,
    run_tag,
    save_checkpoint,
    set_rng_state,
)
from dropbench.core.corruptions import CACHE as CORRUPTION_CACHE
from dropbench.core.corruptions import CELL_COLUMNS, measure_corruptions, test_subset
from dropbench.core.errors import RunFailed, UserInputError
from dropbench.core.export import WEIGHTS_FILE, ExportSidecar, load_exported_model, read_sidecar, safetensors_writer
from dropbench.core.identity import CORRUPTION_DROP, Part, RunIdentity, settings_digest
from dropbench.core.io import atomic_write, atomic_write_csv, atomic_write_json
from dropbench.core.lifecycle import Measured, RecordedRun, RunContext
from dropbench.core.loop import (
    accuracy_metrics,
    autocast_for,
    build_criterion,
    build_scheduler,
    epoch_seed,
    evaluate,
    predict_logits,
    stop_on_divergence,
    train_one_epoch,
)
from dropbench.core.transforms import build_transform
from dropbench.transfer import CLS_PROTOCOLS
from dropbench.transfer.cls_data import (
    ClsConfig,
    ClsData,
    TransformedDataset,
    load_cls_config,
    load_cls_data,
    stratified_split,
)
from dropbench.transfer.feature_protocols import fewshot_indices, fewshot_protocol, knn_protocol

logger = logging.getLogger(__name__)

TASK = "classification"
CONFIG_FILE = "config.json"
LOG_FILE = "log.csv"
FEATURES_FILE = "features.safetensors"
RELIABILITY_FIGURE = "reliability.png"  # the fine-tuned classifier's, with its csv
CORRUPTIONS_FILE = "corruptions.csv"  # its top-1 in each corruption x severity (dataset.corruptions)
CHECKPOINT_FILE = "checkpoint.pt"  # the fine-tuning after its last finished epoch
PROBE_FILE = "linear_probe.json"
CHOSEN_C = "chosen_c"  # the linear probe's L2 strength, recorded beside its accuracy
SMALL_PROBLEM_ELEMENTS = 1 << 22  # features × images below which the probe is fitted on one thread
LOG_COLUMNS = [
    "epoch",
    "update",
    "train_loss",
    "test_loss",
    "test_top1",
    "test_mean_per_class_accuracy",
    "lr",
    "epoch_seconds",
    "train_images_per_s",
]  # lr: the largest group's (the head's, under layer decay) at the epoch's end


@dataclass
class ClsSummary:
    work_dir: Path
    protocol: str
    metrics: dict[str, float]  # the recorded metrics, in percent
    records: list[Path] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------- linear probe


@dataclass
class LinearProbe:
    """A multinomial logistic regression on features standardised with its training set's mean and std."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor  # (features, classes)
    bias: torch.Tensor
    iterations: int = 0

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        x = (features.to(self.weight) - self.mean) / self.std
        return x @ self.weight + self.bias

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits(features).argmax(dim=1)


def fit_linear_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    c: float,
    max_iter: int = 1000,
    init: LinearProbe | None = None,
) -> LinearProbe:
    """L2-regularised multinomial logistic regression, full-batch L-BFGS.

    Minimises ``mean cross-entropy + ||W||² / (2·C·n)`` (the bias is not penalised): scikit-learn's
    ``LogisticRegression(C=c)`` objective divided by ``C·n``, so the same ``C`` gives the same solution.
    Computes in float64 on CPU, float32 elsewhere. ``init`` warm-starts from another probe's weights.
    """
    dtype = torch.float64 if features.device.type == "cpu" else torch.float32
    x = features.to(dtype)
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))  # constant features stay 0, as in StandardScaler
    x = (x - mean) / std
    y = labels.to(features.device).long()
    if init is not None:
        weight, bias = init.weight.detach().clone().to(x), init.bias.detach().clone().to(x)
    else:
        weight = torch.zeros(x.shape[1], num_classes, dtype=dtype, device=x.device)
        bias = torch.zeros(num_classes, dtype=dtype, device=x.device)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    penalty = 1.0 / (2.0 * c * len(x))
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-5,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(x @ weight + bias, y) + penalty * weight.square().sum()
        loss.backward()
        return loss

    with _few_threads(x):
        optimizer.step(closure)
    iterations = optimizer.state[weight].get("n_iter", 0)
    return LinearProbe(mean, std, weight.detach(), bias.detach(), iterations)


@contextmanager
def _few_threads(x: torch.Tensor):
    """One CPU thread for small problems: L-BFGS steps on a few thousand rows are too small to share out, and
    with every core busy (a shared machine) the threads mostly wait on each other — 10× slower on 2 cores."""
    previous = torch.get_num_threads()
    single = x.device.type == "cpu" and x.numel() < SMALL_PROBLEM_ELEMENTS and previous > 1
    if single:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if single:
            torch.set_num_threads(previous)


@torch.no_grad()
def extract_features(
    model: nn.Module, dataset: Dataset, batch_size: int, workers: int, device: torch.device, autocast: Callable
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Pooled pre-logit features of every image in eval mode: ``(features, labels, images per second)``."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    features, labels = [], []
    start = time.perf_counter()
    for images, targets in tqdm(loader, desc="features", unit="batch", leave=False, disable=not sys.stderr.isatty()):
        with autocast():
            pooled = model.forward_head(model.forward_features(images.to(device)), pre_logits=True)
        features.append(pooled.float().cpu())
        labels.append(targets)
    seconds = time.perf_counter() - start
    features = torch.cat(features)
    if not torch.isfinite(features).all():
        bad = int((~torch.isfinite(features)).any(dim=1).sum())
        raise RunFailed(
            f"cls linear: the backbone's features of {bad} of {len(features)} images are not finite (a diverged "
            "export?); nothing is recorded; check the pretraining's train_loss in its log.csv"
        )
    return features, torch.cat(labels).long(), len(dataset) / max(seconds, 1e-9)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _features_key(backbone: Path, config: ClsConfig, input_size: int) -> str:
    """What the cached features depend on: the weights, the images and the evaluation transform (the config's
    fields that say so, ``ClsConfig.feature_inputs``)."""
    return settings_digest(
        {
            "weights_sha256": _file_digest(backbone / WEIGHTS_FILE),
            "input_size": input_size,
            **config.feature_inputs(),
        }
    )


def _cached_features(path: Path, key: str, data: ClsData) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
        cached = load_file(str(path))
    except (SafetensorError, OSError):
        return None
    for split, labels in (("train", data.train_labels), ("test", data.test_labels)):
        if f"{split}_labels" not in cached or not np.array_equal(cached[f"{split}_labels"].numpy(), labels):
            return None  # the images changed since (e.g. a folder was edited)
    return cached


def _workers(config: ClsConfig) -> int:
    """The config's loader processes, at most one per CPU (the GPU-sized configs ask for 8)."""
    return min(config.workers, os.cpu_count() or 1)


def _features(
    model: nn.Module,
    data: ClsData,
    config: ClsConfig,
    backbone: Path,
    input_size: int,
    work_dir: Path,
    device,
    autocast,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Train and test features with labels, from the cache when it holds these weights, images and transform;
    with what the extraction took."""
    eval_tf = build_transform(config, input_size, is_training=False)
    key = _features_key(backbone, config, input_size)
    cache_path = work_dir / FEATURES_FILE
    cached = _cached_features(cache_path, key, data)
    extraction: dict[str, Any] = {"cached": cached is not None}
    if cached is None:
        model.to(device)
        cached = {}
        for split, dataset in (("train", data.train), ("test", data.test)):
            features, labels, images_per_s = extract_features(
                model,
                TransformedDataset(dataset, eval_tf),
                config.feature_batch_size,
                _workers(config),
                device,
                autocast,
            )
            cached |= {f"{split}_features": features.contiguous(), f"{split}_labels": labels.contiguous()}
            extraction[f"{split}_images_per_s"] = images_per_s
        atomic_write(cache_path, safetensors_writer(cached, {"key": key}))
    return cached, extraction


def _linear_probe(
    model: nn.Module,
    data: ClsData,
    config: ClsConfig,
    backbone: Path,
    input_size: int,
    work_dir: Path,
    device,
    autocast,
) -> tuple[dict[str, float], dict]:
    cached, extraction = _features(model, data, config, backbone, input_size, work_dir, device, autocast)
    train_x, train_y = cached["train_features"].to(device), cached["train_labels"].to(device)
    test_x, test_y = cached["test_features"].to(device), cached["test_labels"]

    selection = _selection_metric(config, data)
    grid = sorted(config.linear_c_grid)
    scores: list[dict] = []
    start = time.perf_counter()
    if len(grid) > 1:
        fit_idx, held_idx = (
            torch.from_numpy(i).to(device)
            for i in stratified_split(data.train_labels, config.holdout_fraction, config.seed)
        )
        probe = None
        for c in grid:  # from strong to weak regularisation, each fit warm-started from the last
            probe = fit_linear_probe(
                train_x[fit_idx], train_y[fit_idx], data.num_classes, c, config.linear_max_iter, probe
            )
            held = accuracy_metrics(probe.predict(train_x[held_idx]), train_y[held_idx], data.num_classes)
            scores.append({"c": c, **held, "iterations": probe.iterations})
        best_c = max(scores, key=lambda s: s[selection])["c"]  # ties: the first, i.e. the stronger regularisation
    else:
        best_c = grid[0]
    probe = fit_linear_probe(train_x, train_y, data.num_classes, best_c, config.linear_max_iter)
    metrics = accuracy_metrics(probe.predict(test_x.to(device)), test_y, data.num_classes)
    report = {
        "selection_metric": selection,
        "holdout_fraction": config.holdout_fraction,
        "holdout_scores": scores,
        "chosen_c": best_c,
        "chosen_at_grid_edge": len(grid) > 1 and best_c in (grid[0], grid[-1]),  # widen linear_c_grid if so
        "final_iterations": probe.iterations,
        "test": metrics,
        "train_images": len(train_y),
        "test_images": len(test_y),
        "feature_dim": int(train_x.shape[1]),
        "fit_seconds": time.perf_counter() - start,
        "feature_extraction": extraction,
        "features_file": FEATURES_FILE,
    }
    atomic_write_json(work_dir / PROBE_FILE, report)
    how = f"chosen on {config.holdout_fraction:.0%} of train by {selection}" if scores else "the only one given"
    tqdm.write(
        f"linear probe: C={best_c:g} ({how}{', at the edge of the grid' if report['chosen_at_grid_edge'] else ''}), "
        f"test top1 {metrics['top1']:.2f}%  mean per-class {metrics['mean_per_class_accuracy']:.2f}%"
    )
    return metrics, report


def _on_features(
    protocol: str, cached: dict[str, torch.Tensor], num_classes: int, config: ClsConfig, work_dir: Path, extraction
) -> dict[str, float]:
    """k-NN or few-shot on the cached features; the protocol's report goes to ``<protocol>.json``."""
    if protocol == "knn":
        metrics, report = knn_protocol(cached, num_classes, config)
    else:
        metrics, report = fewshot_protocol(cached, num_classes, config, fit_linear_probe)
    atomic_write_json(work_dir / f"{protocol}.json", report | {"feature_extraction": extraction})
    tqdm.write(f"{protocol}: " + "  ".join(f"{name} {value:.2f}%" for name, value in metrics.items()))
    return metrics


# ---------------------------------------------------------------------------------------------------- fine-tuning


@dataclass
class _FineTuning:
    """Everything a fine-tuning run needs, built (and so checked) before the work folder is made."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    criterion: nn.Module
    mixup: Mixup | None
    train_loader: DataLoader
    test_loader: DataLoader
    loader_generator: torch.Generator
    iters_per_epoch: int
    eval_transform: Callable


def _prepare_finetune(backbone: Path, data: ClsData, config: ClsConfig, input_size: int, device) -> _FineTuning:
    if len(data.train) < config.batch_size:
        raise UserInputError(
            "dataset.batch_size", f"{config.batch_size} exceeds the {len(data.train)} training images; lower it"
        )
    # The rate is always passed: some timm models default to a non-zero drop path (Swin: 0.1).
    model, _ = load_exported_model(backbone, drop_path_rate=config.drop_path)
    torch.manual_seed(config.seed)
    model.reset_classifier(data.num_classes)
    model.to(device)
    try:
        train_tf = build_transform(config, input_size, is_training=True)
        eval_tf = build_transform(config, input_size, is_training=False)
    except (AssertionError, KeyError, ValueError) as err:
        raise UserInputError("dataset", f"bad transform settings (interpolation, aa, scale, ...): {err}") from None
    try:
        optimizer = create_optimizer_v2(
            model, opt=config.opt, lr=config.lr, weight_decay=config.weight_decay, layer_decay=config.layer_decay
        )
    except (AssertionError, ValueError) as err:
        raise UserInputError("dataset.opt", f"timm cannot build optimizer '{config.opt}' ({err})") from None
    iters_per_epoch = len(data.train) // config.batch_size
    scheduler = build_scheduler(optimizer, config, iters_per_epoch, "dataset.sched")
    mixup, criterion = build_criterion(data.num_classes, config.smoothing, config.mixup, config.cutmix)
    use_cuda = device.type == "cuda"
    loader_generator = torch.Generator()
    train_loader = DataLoader(
        TransformedDataset(data.train, train_tf),
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,  # a constant batch (mixup needs an even one)
        num_workers=_workers(config),
        pin_memory=use_cuda,
        generator=loader_generator,
    )
    test_loader = DataLoader(
        TransformedDataset(data.test, eval_tf),
        batch_size=config.feature_batch_size,
        shuffle=False,
        num_workers=_workers(config),
        pin_memory=use_cuda,
    )
    return _FineTuning(
        model,
        optimizer,
        scheduler,
        criterion,
        mixup,
        train_loader,
        test_loader,
        loader_generator,
        iters_per_epoch,
        eval_tf,
    )


def _corruption_test_images(data: ClsData, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The test images a fine-tuned classifier is measured on under corruptions, as one RGB array."""
    if count > len(data.test):
        raise UserInputError("dataset.corruptions", f"{count} exceeds the {len(data.test)} test images; lower it")
    chosen = test_subset(count, len(data.test))
    images = [np.asarray(data.test[int(i)][0].convert("RGB")) for i in chosen]
    sizes = sorted({image.shape[:2] for image in images})
    if len(sizes) > 1:
        raise UserInputError(
            "dataset.corruptions", f"the test images differ in size ({sizes[0]} and {sizes[-1]}); they need one"
        )
    return np.stack(images), data.test_labels[chosen]


def _resume_finetune(run: _FineTuning, work_dir: Path, this_run: dict) -> dict | None:
    """The state of the fine-tuning saved in ``work_dir`` after its last finished epoch, set into ``run``; None
    when there is none. It must be this run's."""
    path = work_dir / CHECKPOINT_FILE
    if not path.is_file():
        tqdm.write(f"'{work_dir}' holds no {CHECKPOINT_FILE}: the fine-tuning starts at epoch 1")
        return None
    saved = load_checkpoint(path, "--resume", "start again in a new --work-dir")
    check_same_run(saved.get("run"), this_run, path)
    run.model.load_state_dict(saved["model"])
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(saved["rng"])
    tqdm.write(f"resumed from {path} after epoch {saved['epoch']} (update {saved['update']})")
    return saved


def _finetune(
    run: _FineTuning,
    data: ClsData,
    config: ClsConfig,
    work_dir: Path,
    device,
    autocast,
    this_run: dict,
    resume: bool,
    corrupted: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict:
    """Train and evaluate each epoch; after each, ``checkpoint.pt`` holds all a resumed run needs to continue with
    the same updates, data order and RNG draws as an uninterrupted one."""
    random.seed(config.seed)
    np.random.seed(config.seed)  # timm's Mixup draws from numpy's global RNG
    torch.manual_seed(config.seed)
    saved = _resume_finetune(run, work_dir, this_run) if resume else None
    rows: list[dict] = saved["rows"] if saved else []
    update = saved["update"] if saved else 0
    metrics: dict = saved["metrics"] if saved else {}
    for epoch in range(saved["epoch"] if saved else 0, config.epochs):
        run.loader_generator.manual_seed(epoch_seed(config.seed, epoch))
        start = time.perf_counter()
        with stop_on_divergence("cls finetune", epoch, config.epochs, work_dir / CHECKPOINT_FILE):
            result = train_one_epoch(
                run.model,
                run.train_loader,
                run.optimizer,
                run.scheduler,
                run.criterion,
                device,
                updates=run.iters_per_epoch,
                start_update=update,
                mixup=run.mixup,
                autocast=autocast,
                clip_grad=config.clip_grad,
                desc=f"epoch {epoch + 1}/{config.epochs}",
            )
        update = result.update
        epoch_seconds = time.perf_counter() - start
        metrics = evaluate(run.model, run.test_loader, data.num_classes, device, autocast)
        rows.append(
            {
                "epoch": epoch + 1,
                "update": update,
                "train_loss": result.loss_sum.item() / result.micro_batches,
                "test_loss": metrics["loss"],
                "test_top1": metrics["top1"],
                "test_mean_per_class_accuracy": metrics["mean_per_class_accuracy"],
                "lr": max(group["lr"] for group in run.optimizer.param_groups),
                "epoch_seconds": epoch_seconds,
                "train_images_per_s": run.iters_per_epoch * config.batch_size / epoch_seconds,
            }
        )
        atomic_write_csv(work_dir / LOG_FILE, LOG_COLUMNS, rows)
        state = dict(model=run.model.state_dict(), optimizer=run.optimizer.state_dict(), rng=rng_state())
        state |= dict(scheduler=run.scheduler.state_dict(), epoch=epoch + 1, update=update, rows=rows)
        state |= dict(metrics={key: float(value) for key, value in metrics.items()}, run=this_run)
        save_checkpoint(work_dir / CHECKPOINT_FILE, state)
        tqdm.write(
            f"epoch {epoch + 1}/{config.epochs}  train_loss {rows[-1]['train_loss']:.4f}  "
            f"test_top1 {metrics['top1']:.2f}  mean per-class {metrics['mean_per_class_accuracy']:.2f}  "
            f"{epoch_seconds:.1f}s"
        )
        sys.stdout.flush()
    # the fine-tuned classifier's calibration on the test images, T fitted on a seeded half of them (as dropbench eval)
    logits, labels = predict_logits(run.model, run.test_loader, device, autocast)
    calibration, bins = calibrate(logits, labels)
    plot_reliability(bins, work_dir / RELIABILITY_FIGURE, f"fine-tuned on {config.name}")
    measured = {key: metrics[key] for key in ("top1", "mean_per_class_accuracy")} | calibration
    if corrupted is not None:  # and under corruptions (dropbench.core.corruptions), each cell in corruptions.csv
        images, labels = corrupted
        under, rows = measure_corruptions(
            run.model, images, labels, run.eval_transform, config.name, CORRUPTION_CACHE,
            batch_size=config.feature_batch_size, device=device, amp=config.amp,
        )  # fmt: skip
        atomic_write_csv(work_dir / CORRUPTIONS_FILE, CELL_COLUMNS, rows)
        measured |= under
    return measured


# ---------------------------------------------------------------------------------------------------- the command


def task_identity(config: ClsConfig, protocol: str, overrides: dict) -> tuple[str, str, Part]:
    """``(dataset, protocol, task part)`` of a classification transfer; its transfer seed is ``config.seed``. A
    few-shot probe's records name their shots (``5-shot``), so that each shot count is its own column."""
    settings = config.settings() | {"protocol": protocol}
    recorded = f"{config.fewshot_shots}-shot" if protocol == "fewshot" else protocol
    return config.name, recorded, Part.of(settings, {k: v for k, v in overrides.items() if k != "seed"})


def _selection_metric(config: ClsConfig, data: ClsData) -> str:
    if config.metric == "mean_per_class_accuracy" or (config.metric == "auto" and data.imbalanced):
        return "mean_per_class_accuracy"
    return "top1"


def _resolve_device(device: str | None) -> torch.device:
    try:
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as err:
        raise UserInputError("--device", f"'{device}' is not a device ({err})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError("--device", "CUDA is not available on this machine; use --device cpu")
    return dev


def _check_holdout(config: ClsConfig, data: ClsData) -> None:
    if len(config.linear_c_grid) > 1:
        if len(stratified_split(data.train_labels, config.holdout_fraction, config.seed)[1]) == 0:
            raise UserInputError(
                "dataset.holdout_fraction",
                f"{config.holdout_fraction} of {len(data.train_labels)} training images holds none out; raise it",
            )


def _write_run_config(
    work_dir: Path,
    backbone: Path,
    protocol: str,
    config: ClsConfig,
    input_size: int,
    data: ClsData,
    sidecar: ExportSidecar,
    digest: str,
) -> None:
    work_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        work_dir / CONFIG_FILE,
        {
            "backbone": str(backbone.resolve()),
            "protocol": protocol,
            "dataset": config.to_dict(),
            "input_size": input_size,
            "num_classes": data.num_classes,
            "train_images": len(data.train_labels),
            "test_images": len(data.test_labels),
            "imbalanced": data.imbalanced,
            "backbone_config_hash": sidecar.config_hash,
            "config_hash": digest,
        },
    )


def transfer_classification(
    backbone: Path,
    dataset: str,
    protocol: str,
    work_dir: Path,
    results_dir: Path | None,
    overrides: dict,
    device: str | None,
    force: bool = False,
    resume: bool = False,
) -> ClsSummary:
    """Fine-tune (``protocol="finetune"``), linearly probe (``"linear"``), k-NN-classify (``"knn"``) or few-shot probe
    (``"fewshot"``) the export in ``backbone``.

    ``dataset``: an ImageFolder tree, a dataset YAML or a name in ``configs/classification/``; ``overrides``
    change its fields. Writes ``config.json`` and the protocol's log into ``work_dir`` and one result record
    per metric under ``results_dir`` (none when it is None). The transfer seed is the config's ``seed``. A run whose
    records exist is skipped (``force`` runs it again and supersedes them). ``resume`` continues a fine-tuning from
    the checkpoint of its last finished epoch in ``work_dir`` (a linear probe resumes from its cached features).
    Bad input raises ``UserInputError`` before ``work_dir`` is made.
    """
    if protocol not in CLS_PROTOCOLS:
        raise UserInputError("protocol", f"unknown protocol '{protocol}' (choose from: {', '.join(CLS_PROTOCOLS)})")
    sidecar = read_sidecar(backbone)
    config = load_cls_config(dataset, overrides)
    dataset_name, _, task_part = task_identity(config, protocol, overrides)
    identity = sidecar.pretraining_identity().transfer(TASK, dataset_name, protocol, config.seed, task_part)
    return run_classification(identity, backbone, protocol, config, work_dir, results_dir, device, force, resume)


def run_classification(
    identity: RunIdentity,
    backbone: Path,
    protocol: str,
    config: ClsConfig,
    work_dir: Path,
    results_dir: Path | None,
    device: str | None,
    force: bool = False,
    resume: bool = False,
) -> ClsSummary:
    """The transfer of ``transfer_classification`` with ``config`` loaded and the run's ``identity`` computed from it
    (``task_identity``), as ``dropbench transfer cls`` computes it."""
    backbone, work_dir = Path(backbone), Path(work_dir)
    sidecar = read_sidecar(backbone)
    data = load_cls_data(config)
    stage = ClassificationTransfer(identity, backbone, sidecar, protocol, config, data, work_dir, device, resume)
    done = stage.run(results_dir, force)
    metrics = {} if done.finished_earlier else stage.metrics
    return ClsSummary(work_dir=work_dir, protocol=protocol, metrics=metrics, records=done.records)


@dataclass
class ClassificationTransfer(RecordedRun):
    """A fine-tuning or a linear probe of an export; ``metrics`` is what it measured once executed."""

    backbone: Path
    sidecar: ExportSidecar
    protocol: str
    config: ClsConfig
    data: ClsData
    work_dir: Path
    device: str | None
    resume: bool
    metrics: dict[str, float] = field(default_factory=dict)

    def execute(self, context: RunContext) -> Measured:
        config, data, protocol, work_dir = self.config, self.data, self.protocol, self.work_dir
        dev = _resolve_device(self.device)
        input_size = self.sidecar.image_size
        selection = _selection_metric(config, data)
        metric_names = ["top1"] + (["mean_per_class_accuracy"] if selection == "mean_per_class_accuracy" else [])
        if protocol == "linear":
            _check_holdout(config, data)
        if protocol == "fewshot":
            fewshot_indices(data.train_labels, config.fewshot_shots, config.seed, 0)  # every class has enough
        autocast = autocast_for(dev, config.amp)
        if config.corruptions and protocol != "finetune":
            raise UserInputError("dataset.corruptions", f"measured for fine-tuned classifiers, not by '{protocol}'")
        corrupted = _corruption_test_images(data, config.corruptions) if config.corruptions else None
        if protocol == "finetune":
            run = _prepare_finetune(self.backbone, data, config, input_size, dev)
        else:
            model, _ = load_exported_model(self.backbone)

        # Everything is checked: from here on the work folder is written.
        digest = self.identity.digest
        _write_run_config(work_dir, self.backbone, protocol, config, input_size, data, self.sidecar, digest)
        if protocol == "finetune":
            tag = run_tag(self.identity)
            measured = _finetune(run, data, config, work_dir, dev, autocast, tag, self.resume, corrupted)
            metric_names = [m for m in measured if m != "mean_per_class_accuracy" or m in metric_names]
        elif protocol == "linear":
            measured, report = _linear_probe(model, data, config, self.backbone, input_size, work_dir, dev, autocast)
            measured = measured | {CHOSEN_C: report["chosen_c"]}  # chosen on held-out training images, never on test
            metric_names.append(CHOSEN_C)
        else:
            cached, extraction = _features(model, data, config, self.backbone, input_size, work_dir, dev, autocast)
            measured = _on_features(protocol, cached, data.num_classes, config, work_dir, extraction)
            metric_names = list(measured)
        self.metrics = {m: measured[m] for m in metric_names}
        units = {CHOSEN_C: "C", CORRUPTION_DROP: "points", **CALIBRATION_UNITS}
        shown = "  ".join(
            f"{m} {v:.2f}" + ("%" if units.get(m, "%") == "%" else f" {units[m]}") for m, v in self.metrics.items()
        )
        logger.info(f"{self.sidecar.name} / {self.sidecar.regime or '?'} → {config.name} {protocol}: {shown}")
        return Measured(self.metrics, units=units, model=self.sidecar.model, run_dir=work_dir)
