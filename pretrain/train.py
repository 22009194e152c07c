"""The pretraining loop: timm model, transforms, mixup/cutmix, scheduler and EMA, driven by one DropController.

Single process or DDP under ``torchrun``; bf16 autocast on GPU; gradient accumulation up to the recipe's
global batch. Every epoch writes ``checkpoint.pt`` atomically; ``resume=True`` continues the run at the
right iteration of every schedule, with optimizer, EMA and RNG state, so a resumed run ends with the same
weights as an uninterrupted one.
"""

import csv
import itertools
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, Subset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from dropbench.core.checkpoint import gather_rng_states, own_rng_state, save_checkpoint, set_rng_state
from dropbench.core.checkpoint import load_checkpoint as read_checkpoint
from dropbench.core.configs import flatten
from dropbench.core.errors import UserInputError
from dropbench.core.export import CHECKPOINT_FILE, EXPORT_DIR, SIDECAR_FILE, export_backbone
from dropbench.core.io import atomic_write_csv, atomic_write_json
from dropbench.core.loop import (
    StepHooks,
    autocast_for,
    build_criterion,
    build_scheduler,
    epoch_seed,
    evaluate,
    gpu_step_settings,
    train_one_epoch,
)
from dropbench.core.models import BackboneConfig
from dropbench.core.tracking import Trackers
from dropbench.core.version import code_version
from dropbench.pretrain.augment import DeviceAugment
from dropbench.pretrain.config import Recipe, Regime, pretrain_identity
from dropbench.pretrain.controller import DropController
from dropbench.pretrain.data import DataSplits, build_data, dataset_name
from dropbench.pretrain.diagnostics import DIAGNOSTIC_COLUMNS, DiagnosticsConfig, GradientDiagnostics, gradient_norm

logger = logging.getLogger(__name__)

LOG_FILE = "log.csv"
DIAGNOSTICS_FILE = "diagnostics.csv"
CONFIG_FILE = "config.json"
LOG_COLUMNS = [
    "epoch",
    "update",
    "train_loss",
    "val_loss",
    "val_top1",
    "val_top5",
    "val_top1_ema",
    "lr",
    "weight_decay",
    "dropout",
    "drop_path",
    "epoch_seconds",
    "train_images_per_s",
]  # dropout, drop_path: the epoch's mean scheduled rate; lr, weight_decay: at the epoch's end


@dataclass
class RunSummary:
    run_dir: Path
    train_loss: float
    val_top1: float
    epochs: int
    iters_per_epoch: int
    records: list[Path] = field(default_factory=list)
    finished_earlier: bool = False  # its records existed: nothing was run
    main_process: bool = True  # under torchrun only rank 0 holds the log: the others report nothing


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: str | None) -> tuple[_Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if world <= 1:
        return _Dist(), torch.device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return _Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank), dev


# How a run checkpoints, whether its step is compiled, where it is tracked: free to change when it resumes.
_EXECUTION = {"recipe.recovery_every", "recipe.compile", "recipe.loggers"}


def _check_same_config(saved: dict, current: dict) -> None:
    saved_flat, current_flat = flatten(saved), flatten(current)
    for key in sorted((saved_flat.keys() | current_flat.keys()) - _EXECUTION):
        if saved_flat.get(key) != current_flat.get(key):
            raise UserInputError(
                f"resume.{key}",
                f"the checkpoint was made with {saved_flat.get(key)!r}, this run asks for {current_flat.get(key)!r}; "
                "resume with the original settings or start a new --out",
            )


def load_checkpoint(path: Path) -> dict:
    """Weights-only loading: a checkpoint holds tensors and plain Python values, never pickled objects."""
    return read_checkpoint(path, "resume", "start a new --out")


def _cosine(start: float, end: float, step: int, total: int) -> float:
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


def _read_rows(path: Path, column: str, upto: int) -> list[dict]:
    """The rows of a CSV log whose ``column`` is at most ``upto`` (what a checkpoint had seen)."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [row for row in csv.DictReader(f) if int(row[column]) <= upto]


def check_pairing(backbone: BackboneConfig, regime: Regime, num_classes: int = 10) -> None:
    """Build ``backbone`` with ``regime``'s maximum rates on the meta device (no memory, no weights) and attach
    the drop controller: a regime the model cannot take (dropout on a ConvNeXt) raises a UserInputError."""
    max_rates = regime.max_rates()
    with torch.device("meta"):
        model = backbone.create_model(num_classes, **max_rates)
    DropController(model, {kind: ([rate], rate) for kind, rate in max_rates.items()}, backbone.drop_path_rule)


def run_config(backbone: BackboneConfig, regime: Regime, recipe: Recipe, dataset: str) -> dict:
    """What defines a run (hashed into records; compared on resume)."""
    return {
        "backbone": backbone.to_dict(),
        "regime": regime.to_dict(),
        "recipe": recipe.to_dict(),
        "data": dataset,
    }


@dataclass
class _Place:
    """Where a run goes: its folder, what its checkpoints record, and the processes and device it runs on."""

    out: Path
    config: str  # run_config as JSON, compared on resume
    started: str
    distributed: _Dist
    device: torch.device


@dataclass
class _Training:
    """Everything a pretraining run needs, built before its loop (and before a checkpoint is restored)."""

    splits: DataSplits
    model: nn.Module
    controller: DropController
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: ModelEmaV3 | None
    mixup: Mixup | None
    criterion: nn.Module
    augment: DeviceAugment
    accum_steps: int
    iters_per_epoch: int
    schedules: dict


def pretrain(
    backbone: BackboneConfig,
    regime: Regime,
    recipe: Recipe,
    data: str,
    out: str | Path,
    results_dir: str | Path | None = "results",
    resume: bool = False,
    device: str | None = None,
    diagnostics: DiagnosticsConfig | None = None,
    force: bool = False,
    data_name: str | None = None,
) -> RunSummary:
    """Train ``backbone`` under ``regime`` with ``recipe`` on ``data`` into the run folder ``out``.

    A run whose records exist in ``results_dir`` is finished: it is skipped, unless ``force``, which starts it
    afresh (an earlier run folder is moved aside) and supersedes its records. ``diagnostics`` adds the gradient
    analysis (``dropbench.pretrain.diagnostics``) to ``diagnostics.csv`` and TensorBoard.
    """
    out = Path(out)
    identity = pretrain_identity(backbone, regime, recipe, dataset_name(data, recipe, data_name))
    existing = identity.existing_records(results_dir) if results_dir is not None else []
    if existing and not force:
        logger.info(identity.finished_message(existing))
        return _finished_summary(out, recipe, existing)
    _check_run_folder(out, resume, force)
    distributed, dev = _init_distributed(device)
    _prepare_run_folder(out, resume, force, distributed)
    run = _build(backbone, regime, recipe, data, data_name, distributed, dev, check_images=not resume)
    if diagnostics and run.splits.train_plain is None:
        raise UserInputError("--diagnostics", "it reads training images at random: train on the folder, not its shards")
    config = run_config(backbone, regime, recipe, run.splits.name)
    checkpoint = _read_checkpoint(out, resume, config)
    started = checkpoint["started"] if checkpoint else datetime.now(timezone.utc).isoformat(timespec="seconds")
    if distributed.main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / CONFIG_FILE, config | {"config_hash": identity.digest})
    epochs = recipe.epochs if regime.train else 0  # random_init: the initialisation, evaluated and exported
    place = _Place(out, json.dumps(config, sort_keys=True), started, distributed, dev)
    log_rows = _train(run, recipe, epochs, place, checkpoint, diagnostics)
    final = log_rows[-1] if log_rows else {}
    summary = RunSummary(
        run_dir=out,
        train_loss=float(final.get("train_loss", "nan")),
        val_top1=float(final.get("val_top1", "nan")),
        epochs=epochs,
        iters_per_epoch=run.iters_per_epoch,
    )
    if not distributed.main:
        summary.main_process = False
        return summary
    start_epoch = checkpoint["epoch"] if checkpoint else 0
    if not (start_epoch == epochs and (out / EXPORT_DIR / SIDECAR_FILE).is_file()):  # else exported before
        _export(run, backbone, regime, recipe, identity, out, summary)
    if results_dir is not None:
        summary.records = identity.write_records(
            results_dir,
            {"top1": summary.val_top1},
            model=backbone.model,
            started=started,
            run_dir=out,
            code_version=code_version(),
            force=force,
        )
    return summary


def _check_run_folder(out: Path, resume: bool, force: bool) -> None:
    """Everything that can be wrong with the run folder, checked before anything is made."""
    if resume and not (out / CHECKPOINT_FILE).is_file() and not (out / EXPORT_DIR).is_dir():
        raise UserInputError("resume", f"'{out}' holds no {CHECKPOINT_FILE} to resume; drop --resume to start it")
    if not resume and not force and out.exists() and any(out.iterdir()):
        raise UserInputError("out", f"'{out}' already holds a run; pass --resume to continue it or pick a new folder")


def _prepare_run_folder(out: Path, resume: bool, force: bool, distributed: _Dist) -> None:
    """``force`` without ``resume`` starts afresh: an earlier run folder is moved aside, not deleted."""
    if force and not resume and distributed.main and out.exists() and any(out.iterdir()):
        aside = out.with_name(f"{out.name}.superseded-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}")
        os.replace(out, aside)
        logger.info(f"--force: the earlier run folder is now {aside}")
    if distributed.world > 1:
        dist.barrier()


def _build(
    backbone: BackboneConfig,
    regime: Regime,
    recipe: Recipe,
    data: str,
    data_name: str | None,
    distributed: _Dist,
    device: torch.device,
    check_images: bool = True,
) -> _Training:
    """Data, model (initialised from the recipe's seed), drop controller, optimizer, scheduler, EMA and criterion;
    the global RNGs are then seeded per process. Every image's header is checked on the main process when
    ``check_images`` (a resumed run's folder was checked when it started)."""
    check = check_images and distributed.main
    splits = build_data(data, recipe, backbone.input_size, check_images=check, data_name=data_name)
    per_update = recipe.per_device_batch * distributed.world
    if recipe.batch_size % per_update:
        raise UserInputError(
            "recipe.per_device_batch",
            f"{recipe.per_device_batch} × {distributed.world} processes must divide batch_size={recipe.batch_size}",
        )
    iters_per_epoch = splits.train_images // recipe.batch_size
    if iters_per_epoch < 1:
        raise UserInputError(
            "recipe.batch_size",
            f"{recipe.batch_size} exceeds the {splits.train_images} training images; lower it",
        )
    max_rates = regime.max_rates()
    torch.manual_seed(recipe.seed)
    model = backbone.create_model(splits.num_classes, **max_rates)
    schedules = {
        kind: (getattr(regime, kind).schedule(recipe.epochs, iters_per_epoch), rate) for kind, rate in max_rates.items()
    }
    controller = DropController(model, schedules, backbone.drop_path_rule, tensor_rates=recipe.compile is not False)
    random.seed(recipe.seed + distributed.rank)
    np.random.seed(recipe.seed + distributed.rank)
    torch.manual_seed(recipe.seed + distributed.rank)
    fast = gpu_step_settings(model, recipe.opt, device)
    model.to(device, memory_format=torch.channels_last if fast.channels_last else torch.preserve_format)
    optimizer = create_optimizer_v2(
        model,
        opt=recipe.opt,
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        momentum=recipe.momentum,
        **({"fused": True} if fast.fused_optimizer else {}),
    )
    mixup, criterion = build_criterion(
        splits.num_classes, recipe.smoothing, recipe.mixup, recipe.cutmix, recipe.mixup_prob, recipe.mixup_switch_prob
    )
    return _Training(
        splits=splits,
        model=model,
        controller=controller,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, recipe, iters_per_epoch, "recipe.sched"),
        ema=ModelEmaV3(model, decay=recipe.model_ema_decay) if recipe.model_ema else None,
        mixup=mixup,
        criterion=criterion,
        augment=DeviceAugment(
            recipe, backbone.input_size, device, geometric=splits.raw_batches, channels_last=fast.channels_last
        ),
        accum_steps=recipe.batch_size // per_update,
        iters_per_epoch=iters_per_epoch,
        schedules=schedules,
    )


def _read_checkpoint(out: Path, resume: bool, config: dict) -> dict | None:
    checkpoint_path = out / CHECKPOINT_FILE
    if not (resume and checkpoint_path.is_file()):
        return None
    checkpoint = load_checkpoint(checkpoint_path)
    _check_same_config(json.loads(checkpoint["config"]), config)
    return checkpoint


def _train(
    run: _Training,
    recipe: Recipe,
    epochs: int,
    place: _Place,
    checkpoint: dict | None,
    diagnostics: DiagnosticsConfig | None,
) -> list[dict]:
    """The epoch loop from the checkpoint's epoch (or 0) to ``epochs``; returns the log's rows."""
    distributed, dev = place.distributed, place.device
    resumed = _restore(run, checkpoint, distributed)
    train_model: nn.Module = run.model
    if distributed.world > 1:
        train_model = DistributedDataParallel(run.model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if recipe.compile_backend:
        train_model = torch.compile(train_model, backend=recipe.compile_backend)
    autocast = autocast_for(dev, recipe.amp)
    sampler, train_loader, loader_generator, val_loader = _loaders(run.splits, recipe, distributed, dev)
    monitor = _Monitor(run, recipe, place, resumed.epoch, resumed.update, checkpoint, diagnostics, autocast)
    update = resumed.update
    for epoch in range(resumed.epoch, epochs):
        done = resumed if epoch == resumed.epoch else _Position(epoch, update)  # updates a recovery point had done
        sampler.set_epoch(epoch, skip=done.updates * run.accum_steps * recipe.per_device_batch)
        loader_generator.manual_seed(epoch_seed(recipe.seed, epoch))
        epoch_start = time.perf_counter()
        result = train_one_epoch(
            train_model,
            train_loader,
            run.optimizer,
            run.scheduler,
            run.criterion,
            dev,
            updates=run.iters_per_epoch - done.updates,
            start_update=update,
            accum_steps=run.accum_steps,
            mixup=run.mixup,
            batch_transform=run.augment,
            autocast=autocast,
            clip_grad=recipe.clip_grad,
            ema=run.ema,
            hooks=monitor.start_epoch(done),
            desc=f"epoch {epoch + 1}/{recipe.epochs}",
            progress=distributed.main,
        )
        update = result.update
        if distributed.main:  # the recovery point's sum is already the sum over every process
            result.loss_sum += done.loss_sum
        if distributed.world > 1:
            dist.all_reduce(result.loss_sum)
        train_loss = result.loss_sum.item() / (run.iters_per_epoch * run.accum_steps * distributed.world)
        epoch_seconds = time.perf_counter() - epoch_start
        metrics = _validate(run, val_loader, dev, autocast)
        row = {
            "epoch": epoch + 1,
            "update": update,
            "train_loss": train_loss,
            **metrics,
            "lr": run.optimizer.param_groups[0]["lr"],
            "weight_decay": max(group["weight_decay"] for group in run.optimizer.param_groups),
            **monitor.mean_rates(run.iters_per_epoch),
            "epoch_seconds": epoch_seconds,
            "train_images_per_s": result.micro_batches * recipe.per_device_batch * distributed.world / epoch_seconds,
        }
        rng_states = gather_rng_states()
        if distributed.main:
            monitor.end_epoch(row, epoch, recipe.epochs)
            save_checkpoint(
                place.out / CHECKPOINT_FILE, _checkpoint_state(run, place, epoch + 1, update, rng_states, monitor)
            )
        if distributed.world > 1:
            dist.barrier()
    if epochs == 0:  # random_init: the initialisation's validation row, on every rank (it all-reduces)
        monitor.first_row(_validate(run, val_loader, dev, autocast, with_ema=False))
    monitor.close()
    return monitor.log_rows


@dataclass
class _Position:
    """Where a run stands: ``epoch`` epochs finished, ``update`` updates made in all, of which ``updates`` in the
    epoch under way (a mid-epoch recovery point), with the sums of their losses (over every process) and of their
    scheduled drop rates."""

    epoch: int
    update: int
    updates: int = 0
    loss_sum: float = 0.0
    rate_sums: dict[str, float] = field(default_factory=dict)


def _restore(run: _Training, checkpoint: dict | None, distributed: _Dist) -> _Position:
    """Model, optimizer, EMA and RNG states from ``checkpoint``; returns the position to continue from."""
    if not checkpoint:
        return _Position(0, 0)
    run.model.load_state_dict(checkpoint["model"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    if run.ema is not None:
        run.ema.load_state_dict(checkpoint["ema"])
    set_rng_state(own_rng_state(checkpoint["rng"]))
    within = checkpoint.get("within_epoch", {})
    return _Position(
        checkpoint["epoch"],
        checkpoint["update"],
        within.get("updates", 0),
        within.get("loss_sum", 0.0),
        within.get("rate_sums", {}),
    )


class _EpochSampler(Sampler):
    """The distributed sampler's order for an epoch, from its ``skip``-th index on (a mid-epoch recovery point); with
    ``seeded``, each index goes out as ``(epoch, index)`` for ``_SeededSamples``."""

    def __init__(self, sampler: DistributedSampler, seeded: bool = False):
        self.sampler, self.seeded, self.epoch, self.skip = sampler, seeded, 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        indices = itertools.islice(iter(self.sampler), self.skip, None)
        return ((self.epoch, index) for index in indices) if self.seeded else indices

    def __len__(self) -> int:
        return len(self.sampler) - self.skip


class _SeededSamples(Dataset):
    """Seeds Python's, NumPy's and torch's generators from (seed, epoch, index) before each image's transform, so
    that its augmentation does not depend on which loader worker reads it, nor on where a resumed epoch starts.
    Indexed by ``(epoch, index)``: the epoch travels with the index, so persistent workers need no message."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        seed = epoch_seed(self.seed, epoch) * 1_000_003 + index
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.default_generator.manual_seed(seed)  # the CPU's: torch.manual_seed also seeds GPUs, 0.2 ms a call
        return self.dataset[index]


class _StreamedEpochs:
    """A loader over a stream of shards, with ``_EpochSampler``'s ``set_epoch``: timm's reader reshuffles shards and
    samples from the epoch and each worker's seed (the loader's generator gives those per epoch, and the workers start
    afresh every epoch), so an epoch's stream is the same every time; a resumed epoch reads through the batches its
    recovery point had done."""

    def __init__(self, loader: DataLoader):
        self.loader, self.skip = loader, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.loader.dataset.set_epoch(epoch)
        self.skip = skip // self.loader.batch_size

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.skip, None)


def _stream_loaders(splits: DataSplits, recipe: Recipe, dev: torch.device):
    """``_loaders`` for shards: timm's reader gives each rank and worker its own shards (of val too)."""
    generator = torch.Generator()
    common = {"batch_size": recipe.per_device_batch, "num_workers": recipe.workers, "pin_memory": dev.type == "cuda"}
    epochs = _StreamedEpochs(DataLoader(splits.train, **common, drop_last=True, generator=generator))
    return epochs, epochs, generator, DataLoader(splits.val, **common)


def _loaders(splits: DataSplits, recipe: Recipe, distributed: _Dist, dev: torch.device):
    """``(sampler, train loader, its generator, val loader over this rank's shard)``. Images transformed in loader
    workers are seeded one by one (``_SeededSamples``); the workers persist across epochs."""
    if splits.streamed:
        return _stream_loaders(splits, recipe, dev)
    seeded = recipe.workers > 0 and not splits.raw_batches
    train = _SeededSamples(splits.train, recipe.seed) if seeded else splits.train
    sampler = _EpochSampler(
        DistributedSampler(
            train, num_replicas=distributed.world, rank=distributed.rank, shuffle=True, seed=recipe.seed, drop_last=True
        ),
        seeded,
    )
    generator = torch.Generator()
    if splits.raw_batches:  # the dataset takes a batch's index list and returns the batch as one array slice
        batches = {"sampler": BatchSampler(sampler, recipe.per_device_batch, drop_last=True), "batch_size": None}
    else:
        batches = {"sampler": sampler, "batch_size": recipe.per_device_batch, "drop_last": True}
    train_loader = DataLoader(
        train,
        **batches,
        num_workers=recipe.workers,
        pin_memory=dev.type == "cuda",
        generator=generator,
        persistent_workers=recipe.workers > 0,
    )
    val_shard = Subset(splits.val, range(distributed.rank, len(splits.val), distributed.world))
    val_loader = DataLoader(
        val_shard,
        batch_size=recipe.per_device_batch,
        shuffle=False,
        num_workers=recipe.workers,
        pin_memory=dev.type == "cuda",
        persistent_workers=recipe.workers > 0,
    )
    return sampler, train_loader, generator, val_loader


def _validate(run: _Training, loader: DataLoader, dev: torch.device, autocast, with_ema: bool = True) -> dict:
    classes = run.splits.num_classes
    metrics = evaluate(run.model, loader, classes, dev, autocast, reduce=True)
    row = {"val_loss": metrics["loss"], "val_top1": metrics["top1"], "val_top5": metrics["top5"]}
    if with_ema and run.ema is not None:
        row["val_top1_ema"] = evaluate(run.ema.module, loader, classes, dev, autocast, reduce=True)["top1"]
    return row


def _checkpoint_state(
    run: _Training, place: _Place, epoch: int, update: int, rng_states: list[dict], monitor: "_Monitor"
) -> dict:
    state = {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "epoch": epoch,
        "update": update,
        "rng": rng_states,
        "config": place.config,
        "started": place.started,
    }
    if run.ema is not None:
        state["ema"] = run.ema.state_dict()
    if monitor.probe is not None:
        state["initial_weights"] = monitor.probe.initial.cpu()
    return state


class _Monitor:
    """What a run reports: the per-update hooks (drop rates, weight decay, gradient diagnostics, TensorBoard)
    and, on the main process, the epoch log, diagnostics CSV and console line."""

    def __init__(self, run, recipe, place, start_epoch, update, checkpoint, diagnostics, autocast):
        self.run, self.recipe, self.place = run, recipe, place
        self.main = place.distributed.main
        self.base_weight_decays = [group["weight_decay"] for group in run.optimizer.param_groups]
        self.total_updates = recipe.epochs * run.iters_per_epoch
        self.rates: dict[str, float] = {}
        self.rate_sums = dict.fromkeys(run.schedules, 0.0)
        self.log_rows = _read_rows(place.out / LOG_FILE, "epoch", start_epoch) if self.main else []
        self.probe, self.diagnostic_rows, self.measured = None, [], None
        if diagnostics is not None and self.main:
            self.probe = _diagnostics_probe(run, recipe, place.device, checkpoint, diagnostics, autocast)
            self.diagnostic_rows = _read_rows(place.out / DIAGNOSTICS_FILE, "update", update - 1)
        self.trackers = None
        if self.main:
            config = json.loads(place.config)
            name = f"{config['backbone']['name']}-{config['regime']['name']}-seed{recipe.seed}"
            self.trackers = Trackers(
                recipe.loggers, place.out, name, config, resume_step=update if checkpoint else None
            )

    def start_epoch(self, done: "_Position") -> StepHooks:
        """The hooks for epoch ``done.epoch``, of which ``done.updates`` were made before a recovery point."""
        self.epoch, self.epoch_first_update, self.carried_loss = done.epoch, done.update - done.updates, done.loss_sum
        self.rate_sums = dict.fromkeys(self.run.schedules, 0.0) | done.rate_sums
        return StepHooks(self.before_update, self.before_step if self.probe else None, self.after_update)

    def before_update(self, update: int) -> None:
        self.rates = self.run.controller.step(update)
        for kind, rate in self.rates.items():
            self.rate_sums[kind] += rate
        if self.probe is not None and self.probe.due(update):
            self.measured = self.probe.measure()
        if self.recipe.weight_decay_end is not None:
            wd = _cosine(self.recipe.weight_decay, self.recipe.weight_decay_end, update, self.total_updates)
            for group, base in zip(self.run.optimizer.param_groups, self.base_weight_decays, strict=True):
                if base > 0:
                    group["weight_decay"] = wd

    def before_step(self, update: int) -> None:
        if self.measured is None:
            return
        row = {"update": update, "epoch": update / self.run.iters_per_epoch}
        row |= {"grad_norm": gradient_norm(self.run.model), **self.measured}
        row |= {"dropout": self.rates.get("dropout", 0.0), "drop_path": self.rates.get("drop_path", 0.0)}
        self.diagnostic_rows.append(row)
        for key in ("grad_norm", "model_distance", "gdv", "gde"):
            self.trackers.add_scalar(f"diagnostics/{key}", row[key], update)
        self.measured = None

    def after_update(self, update: int, loss: torch.Tensor, loss_sum: torch.Tensor) -> None:
        within = update - self.epoch_first_update
        every = self.recipe.recovery_every
        if every and within % every == 0 and within < self.run.iters_per_epoch:
            self._recovery_point(update, within, loss_sum)
        if not self.main or update % self.recipe.log_every:
            return
        lr = self.run.optimizer.param_groups[0]["lr"]
        self.trackers.add_scalar("train/loss", loss.item(), update)
        self.trackers.add_scalar("train/lr", lr, update)
        for kind, rate in self.rates.items():
            self.trackers.add_scalar(f"train/{kind}", rate, update)

    def _recovery_point(self, update: int, within: int, loss_sum: torch.Tensor) -> None:
        """The checkpoint, ``within`` updates into the epoch: a resumed run continues at the next batch."""
        distributed = self.place.distributed
        total = loss_sum.detach().clone()
        if distributed.world > 1:
            dist.all_reduce(total)
        rng_states = gather_rng_states()
        if not self.main:
            return
        state = _checkpoint_state(self.run, self.place, self.epoch, update, rng_states, self)
        loss = self.carried_loss + total.item()
        state["within_epoch"] = {"updates": within, "loss_sum": loss, "rate_sums": dict(self.rate_sums)}
        save_checkpoint(self.place.out / CHECKPOINT_FILE, state)
        if self.probe is not None:
            atomic_write_csv(self.place.out / DIAGNOSTICS_FILE, DIAGNOSTIC_COLUMNS, self.diagnostic_rows)

    def mean_rates(self, iters_per_epoch: int) -> dict[str, float]:
        return {kind: self.rate_sums.get(kind, 0.0) / iters_per_epoch for kind in ("dropout", "drop_path")}

    def end_epoch(self, row: dict, epoch: int, epochs: int) -> None:
        self.log_rows.append(row)
        atomic_write_csv(self.place.out / LOG_FILE, LOG_COLUMNS, self.log_rows)
        if self.probe is not None:
            atomic_write_csv(self.place.out / DIAGNOSTICS_FILE, DIAGNOSTIC_COLUMNS, self.diagnostic_rows)
        for key in ("train_loss", "val_loss", "val_top1", "val_top5", "dropout", "drop_path"):
            self.trackers.add_scalar(f"epoch/{key}", row[key], epoch + 1)
        self.trackers.flush()
        tqdm.write(
            f"epoch {epoch + 1}/{epochs}  train_loss {row['train_loss']:.4f}  val_top1 {row['val_top1']:.2f}"
            f"  dropout {row['dropout']:.4f}  drop_path {row['drop_path']:.4f}  {row['epoch_seconds']:.1f}s"
        )
        sys.stdout.flush()

    def first_row(self, metrics: dict) -> None:
        if self.main and not self.log_rows:
            self.log_rows.append({"epoch": 0, "update": 0, **metrics})
            atomic_write_csv(self.place.out / LOG_FILE, LOG_COLUMNS, self.log_rows)

    def close(self) -> None:
        if self.trackers is not None:
            self.trackers.close()


def _diagnostics_probe(run, recipe, dev, checkpoint, diagnostics, autocast) -> GradientDiagnostics:
    probe = GradientDiagnostics(
        diagnostics,
        run.model,
        run.splits.train_plain,
        recipe.per_device_batch,
        nn.CrossEntropyLoss(),
        dev,
        recipe.seed,
        autocast,
    )
    if checkpoint:
        if "initial_weights" not in checkpoint:
            raise UserInputError(
                "--diagnostics",
                "this run was started without diagnostics; model distance needs its initial weights",
            )
        probe.initial = checkpoint["initial_weights"].to(dev)
    return probe


def _export(
    run: _Training,
    backbone: BackboneConfig,
    regime: Regime,
    recipe: Recipe,
    identity,
    out: Path,
    summary: RunSummary,
) -> None:
    export_backbone(
        run.model,
        out / EXPORT_DIR,
        {
            "model": backbone.model,
            "kwargs": backbone.kwargs,
            "num_classes": run.splits.num_classes,
            "input_size": backbone.input_size,
            "backbone": backbone.name,
            "regime": regime.name,
            "recipe": recipe.name,
            "epochs": summary.epochs,
            "seed": recipe.seed,
            "dataset": run.splits.name,
            "val_top1": summary.val_top1,
            "code_version": code_version(),
            "config_hash": identity.digest,
            "identity": identity.to_json(),
        },
    )


def _finished_summary(out: Path, recipe: Recipe, records: list[Path]) -> RunSummary:
    """What a finished run's folder and records say about it."""
    rows = _read_rows(out / LOG_FILE, "epoch", recipe.epochs)
    final = rows[-1] if rows else {}
    return RunSummary(
        run_dir=out,
        train_loss=float(final.get("train_loss", "nan")),
        val_top1=float(final.get("val_top1", "nan")),
        epochs=recipe.epochs,
        iters_per_epoch=int(final["update"]) // max(int(final["epoch"]), 1) if final else 0,
        records=records,
        finished_earlier=True,
    )
