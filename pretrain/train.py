"""The pretraining loop: timm model, transforms, mixup/cutmix, scheduler and EMA, driven by one DropController.

Single process or DDP under ``torchrun``; bf16 autocast on GPU; gradient accumulation up to the recipe's
global batch. Every epoch writes ``checkpoint.pt`` atomically; ``resume=True`` continues the run at the
right iteration of every schedule, with optimizer, EMA and RNG state, so a resumed run ends with the same
weights as an uninterrupted one.
"""

import csv
import io
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from dropbench import code_version
from dropbench.errors import UserInputError
from dropbench.io import atomic_write, atomic_write_json, atomic_write_text
from pretrain.config import BackboneConfig, Recipe, Regime, pretrain_identity
from pretrain.controller import DropController
from pretrain.data import build_data, dataset_name
from pretrain.diagnostics import DIAGNOSTIC_COLUMNS, DiagnosticsConfig, GradientDiagnostics, gradient_norm
from pretrain.export import SIDECAR_FILE, export_backbone

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "log.csv"
DIAGNOSTICS_FILE = "diagnostics.csv"
CONFIG_FILE = "config.json"
EXPORT_DIR = "export"
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


def _rng_state() -> dict:
    numpy_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_same_config(saved: dict, current: dict) -> None:
    saved_flat, current_flat = _flatten(saved), _flatten(current)
    for key in sorted(saved_flat.keys() | current_flat.keys()):
        if saved_flat.get(key) != current_flat.get(key):
            raise UserInputError(
                f"resume.{key}",
                f"the checkpoint was made with {saved_flat.get(key)!r}, this run asks for {current_flat.get(key)!r}; "
                "resume with the original settings or start a new --out",
            )


def load_checkpoint(path: Path) -> dict:
    """Weights-only loading: a checkpoint holds tensors and plain Python values, never pickled objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means the file is not a checkpoint we wrote
        raise UserInputError(
            "resume", f"cannot read checkpoint '{path}' ({err.__class__.__name__}); start a new --out"
        ) from None


def _save_checkpoint(path: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))


def _cosine(start: float, end: float, step: int, total: int) -> float:
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, autocast, distributed: _Dist) -> dict:
    """Top-1, top-5 (in percent) and mean cross-entropy over the loader's shard, summed across ranks."""
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top1, top5, count
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast():
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        hits = topk.eq(targets[:, None])
        totals += torch.stack(
            [
                nn.functional.cross_entropy(logits, targets, reduction="sum").double(),
                hits[:, 0].sum().double(),
                hits.any(dim=1).sum().double(),
                torch.tensor(float(len(targets)), dtype=torch.float64, device=device),
            ]
        )
    if distributed.world > 1:
        dist.all_reduce(totals)
    loss, top1, top5, count = totals.tolist()
    count = max(count, 1.0)
    return {"val_loss": loss / count, "val_top1": 100.0 * top1 / count, "val_top5": 100.0 * top5 / count}


def _read_rows(path: Path, column: str, upto: int) -> list[dict]:
    """The rows of a CSV log whose ``column`` is at most ``upto`` (what a checkpoint had seen)."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [row for row in csv.DictReader(f) if int(row[column]) <= upto]


def _write_rows(path: Path, columns: list[str], rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


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
    analysis (``pretrain.diagnostics``) to ``diagnostics.csv`` and TensorBoard.
    """
    out = Path(out)
    identity = pretrain_identity(backbone, regime, recipe, dataset_name(data, recipe, data_name))
    existing = identity.existing_records(results_dir) if results_dir is not None else []
    if existing and not force:
        print(identity.finished_message(existing), flush=True)
        return _finished_summary(out, recipe, existing)
    checkpoint_path = out / CHECKPOINT_FILE
    # Everything that can be wrong with the input is checked before the run folder is made.
    if resume and not checkpoint_path.is_file() and not (out / EXPORT_DIR).is_dir():
        raise UserInputError("resume", f"'{out}' holds no {CHECKPOINT_FILE} to resume; drop --resume to start it")
    if not resume and not force and out.exists() and any(out.iterdir()):
        raise UserInputError("out", f"'{out}' already holds a run; pass --resume to continue it or pick a new folder")

    distributed, dev = _init_distributed(device)
    if force and not resume and distributed.main and out.exists() and any(out.iterdir()):
        aside = out.with_name(f"{out.name}.superseded-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}")
        os.replace(out, aside)
        print(f"--force: the earlier run folder is now {aside}", flush=True)
    if distributed.world > 1:
        dist.barrier()
    splits = build_data(data, recipe, backbone.input_size, check_images=distributed.main, data_name=data_name)
    per_update = recipe.per_device_batch * distributed.world
    if recipe.batch_size % per_update:
        raise UserInputError(
            "recipe.per_device_batch",
            f"{recipe.per_device_batch} × {distributed.world} processes must divide batch_size={recipe.batch_size}",
        )
    accum_steps = recipe.batch_size // per_update
    iters_per_epoch = len(splits.train) // recipe.batch_size
    if iters_per_epoch < 1:
        raise UserInputError(
            "recipe.batch_size",
            f"{recipe.batch_size} exceeds the {len(splits.train)} training images; lower it",
        )
    total_updates = recipe.epochs * iters_per_epoch

    max_rates = regime.max_rates()
    torch.manual_seed(recipe.seed)
    model = backbone.create_model(splits.num_classes, **max_rates)
    schedules = {
        kind: (getattr(regime, kind).schedule(recipe.epochs, iters_per_epoch), rate) for kind, rate in max_rates.items()
    }
    controller = DropController(model, schedules, backbone.drop_path_rule)
    config = run_config(backbone, regime, recipe, splits.name)
    checkpoint = None
    if resume and checkpoint_path.is_file():
        checkpoint = load_checkpoint(checkpoint_path)
        _check_same_config(json.loads(checkpoint["config"]), config)
    started = checkpoint["started"] if checkpoint else datetime.now(timezone.utc).isoformat(timespec="seconds")

    if distributed.main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / CONFIG_FILE, config | {"config_hash": identity.digest})

    random.seed(recipe.seed + distributed.rank)
    np.random.seed(recipe.seed + distributed.rank)
    torch.manual_seed(recipe.seed + distributed.rank)

    model.to(dev)
    optimizer = create_optimizer_v2(
        model, opt=recipe.opt, lr=recipe.lr, weight_decay=recipe.weight_decay, momentum=recipe.momentum
    )
    base_weight_decays = [group["weight_decay"] for group in optimizer.param_groups]
    lr_scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=recipe.sched,
        num_epochs=recipe.epochs,
        warmup_epochs=recipe.warmup_epochs,
        warmup_lr=recipe.warmup_lr,
        min_lr=recipe.min_lr,
        step_on_epochs=False,
        updates_per_epoch=iters_per_epoch,
    )
    ema = ModelEmaV3(model, decay=recipe.model_ema_decay) if recipe.model_ema else None
    mixup = None
    if recipe.mixup > 0 or recipe.cutmix > 0:
        mixup = Mixup(
            mixup_alpha=recipe.mixup,
            cutmix_alpha=recipe.cutmix,
            prob=recipe.mixup_prob,
            switch_prob=recipe.mixup_switch_prob,
            label_smoothing=recipe.smoothing,
            num_classes=splits.num_classes,
        )
        criterion = SoftTargetCrossEntropy()
    elif recipe.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(smoothing=recipe.smoothing)
    else:
        criterion = nn.CrossEntropyLoss()

    start_epoch, update = 0, 0
    if checkpoint:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if ema is not None:
            ema.load_state_dict(checkpoint["ema"])
        start_epoch, update = checkpoint["epoch"], checkpoint["update"]
        _set_rng_state(checkpoint["rng"][min(distributed.rank, len(checkpoint["rng"]) - 1)])

    train_model: nn.Module = model
    if distributed.world > 1:
        train_model = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    use_cuda = dev.type == "cuda"
    amp_enabled = recipe.amp and use_cuda

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if amp_enabled else nullcontext()

    sampler = DistributedSampler(
        splits.train,
        num_replicas=distributed.world,
        rank=distributed.rank,
        shuffle=True,
        seed=recipe.seed,
        drop_last=True,
    )
    loader_generator = torch.Generator()
    train_loader = DataLoader(
        splits.train,
        batch_size=recipe.per_device_batch,
        sampler=sampler,
        num_workers=recipe.workers,
        pin_memory=use_cuda,
        drop_last=True,
        generator=loader_generator,
        persistent_workers=False,
    )
    val_shard = Subset(splits.val, range(distributed.rank, len(splits.val), distributed.world))
    val_loader = DataLoader(
        val_shard,
        batch_size=recipe.per_device_batch,
        shuffle=False,
        num_workers=recipe.workers,
        pin_memory=use_cuda,
    )

    log_rows = _read_rows(out / LOG_FILE, "epoch", start_epoch) if distributed.main else []
    probe, diagnostic_rows, measured = None, [], None
    if diagnostics is not None and distributed.main:
        probe = GradientDiagnostics(
            diagnostics,
            model,
            splits.train_plain,
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
        diagnostic_rows = _read_rows(out / DIAGNOSTICS_FILE, "update", update - 1)
    writer = None
    if distributed.main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"), purge_step=update if checkpoint else None)

    micro_per_epoch = iters_per_epoch * accum_steps
    epochs = recipe.epochs if regime.train else 0  # random_init: the initialisation, evaluated and exported
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)
        loader_generator.manual_seed(recipe.seed * 100_003 + epoch)
        train_model.train()
        epoch_start = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        bar = tqdm(
            total=iters_per_epoch,
            desc=f"epoch {epoch + 1}/{recipe.epochs}",
            unit="it",
            disable=not (distributed.main and sys.stderr.isatty()),
            leave=False,
            dynamic_ncols=True,
        )
        rates: dict[str, float] = {}
        rate_sums = dict.fromkeys(schedules, 0.0)
        for micro, (images, targets) in enumerate(train_loader):
            if micro >= micro_per_epoch:
                break
            first_micro, last_micro = micro % accum_steps == 0, micro % accum_steps == accum_steps - 1
            if first_micro:
                rates = controller.step(update)
                for kind, rate in rates.items():
                    rate_sums[kind] += rate
                if probe is not None and probe.due(update):
                    measured = probe.measure()
                lr_scheduler.step_update(num_updates=update)
                if recipe.weight_decay_end is not None:
                    wd = _cosine(recipe.weight_decay, recipe.weight_decay_end, update, total_updates)
                    for group, base in zip(optimizer.param_groups, base_weight_decays, strict=True):
                        if base > 0:
                            group["weight_decay"] = wd
            images, targets = images.to(dev, non_blocking=True), targets.to(dev, non_blocking=True)
            if mixup is not None:
                images, targets = mixup(images, targets)
            sync = last_micro or distributed.world == 1
            with nullcontext() if sync else train_model.no_sync(), autocast():
                loss = criterion(train_model(images), targets)
            (loss / accum_steps).backward()
            loss_sum += loss.detach().double()
            if not last_micro:
                continue
            if measured is not None:
                row = {"update": update, "epoch": update / iters_per_epoch}
                row |= {"grad_norm": gradient_norm(model), **measured}
                row |= {"dropout": rates.get("dropout", 0.0), "drop_path": rates.get("drop_path", 0.0)}
                diagnostic_rows.append(row)
                for key in ("grad_norm", "model_distance", "gdv", "gde"):
                    writer.add_scalar(f"diagnostics/{key}", row[key], update)
                measured = None
            if recipe.clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(model, step=update)
            update += 1
            bar.update(1)
            if distributed.main and update % recipe.log_every == 0:
                step_loss = loss.item()
                bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
                writer.add_scalar("train/loss", step_loss, update)
                writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], update)
                for kind, rate in rates.items():
                    writer.add_scalar(f"train/{kind}", rate, update)
        bar.close()
        if distributed.world > 1:
            dist.all_reduce(loss_sum)
        train_loss = loss_sum.item() / (micro_per_epoch * distributed.world)
        epoch_seconds = time.perf_counter() - epoch_start
        metrics = evaluate(model, val_loader, dev, autocast, distributed)
        if ema is not None:
            metrics["val_top1_ema"] = evaluate(ema.module, val_loader, dev, autocast, distributed)["val_top1"]
        row = {
            "epoch": epoch + 1,
            "update": update,
            "train_loss": train_loss,
            **metrics,
            "lr": optimizer.param_groups[0]["lr"],
            "weight_decay": max(group["weight_decay"] for group in optimizer.param_groups),
            "dropout": rate_sums.get("dropout", 0.0) / iters_per_epoch,
            "drop_path": rate_sums.get("drop_path", 0.0) / iters_per_epoch,
            "epoch_seconds": epoch_seconds,
            "train_images_per_s": micro_per_epoch * recipe.per_device_batch * distributed.world / epoch_seconds,
        }
        rng = _rng_state()
        if distributed.world > 1:
            gathered: list = [None] * distributed.world
            dist.all_gather_object(gathered, rng)
            rng_states = gathered
        else:
            rng_states = [rng]
        if distributed.main:
            log_rows.append(row)
            _write_rows(out / LOG_FILE, LOG_COLUMNS, log_rows)
            if probe is not None:
                _write_rows(out / DIAGNOSTICS_FILE, DIAGNOSTIC_COLUMNS, diagnostic_rows)
            for key in ("train_loss", "val_loss", "val_top1", "val_top5", "dropout", "drop_path"):
                writer.add_scalar(f"epoch/{key}", row[key], epoch + 1)
            writer.flush()
            tqdm.write(
                f"epoch {epoch + 1}/{recipe.epochs}  train_loss {train_loss:.4f}  val_top1 {metrics['val_top1']:.2f}"
                f"  dropout {row['dropout']:.4f}  drop_path {row['drop_path']:.4f}  {epoch_seconds:.1f}s"
            )
            sys.stdout.flush()
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1,
                "update": update,
                "rng": rng_states,
                "config": json.dumps(config, sort_keys=True),
                "started": started,
            }
            if ema is not None:
                state["ema"] = ema.state_dict()
            if probe is not None:
                state["initial_weights"] = probe.initial.cpu()
            _save_checkpoint(checkpoint_path, state)
        if distributed.world > 1:
            dist.barrier()

    if not regime.train:
        metrics = evaluate(model, val_loader, dev, autocast, distributed)  # on every rank: it all-reduces
        if distributed.main and not log_rows:
            log_rows.append({"epoch": 0, "update": 0, **metrics})
            _write_rows(out / LOG_FILE, LOG_COLUMNS, log_rows)
    if writer is not None:
        writer.close()
    final = log_rows[-1] if log_rows else {}
    summary = RunSummary(
        run_dir=out,
        train_loss=float(final.get("train_loss", "nan")),
        val_top1=float(final.get("val_top1", "nan")),
        epochs=epochs,
        iters_per_epoch=iters_per_epoch,
    )
    if not distributed.main:
        return summary
    already_finished = start_epoch == epochs and (out / EXPORT_DIR / SIDECAR_FILE).is_file()
    if not already_finished:
        export_backbone(
            model,
            out / EXPORT_DIR,
            {
                "model": backbone.model,
                "kwargs": backbone.kwargs,
                "num_classes": splits.num_classes,
                "input_size": backbone.input_size,
                "backbone": backbone.name,
                "regime": regime.name,
                "recipe": recipe.name,
                "epochs": epochs,
                "seed": recipe.seed,
                "dataset": splits.name,
                "val_top1": summary.val_top1,
                "code_version": code_version(),
                "config_hash": identity.digest,
                "identity": identity.to_json(),
            },
        )
    if results_dir is not None:
        summary.records = identity.write_records(
            results_dir,
            {"top1": summary.val_top1},
            model=backbone.model,
            started=started,
            run_dir=out,
            code_version=code_version(),
        )
    return summary


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
