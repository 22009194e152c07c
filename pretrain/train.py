"""A pretraining run, from its folder to its records: prepare the folder, build (``build``), restore a checkpoint
(``state``), train epoch after epoch in the one loop (``dropbench.core.loop``) with the regime's per-iteration update
(``regime_step``) and the reports and recovery points (``reporting``), then export and record.

Single process or DDP under ``torchrun`` (``distributed``); bf16 autocast on GPU; gradient accumulation up to the
recipe's global batch. Every epoch writes ``checkpoint.pt`` atomically; ``resume=True`` continues the run at the
right iteration of every schedule, with optimizer, EMA and RNG state, so a resumed run ends with the same
weights as an uninterrupted one.
"""

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from dropbench.core.checkpoint import gather_rng_states, save_checkpoint
from dropbench.core.errors import UserInputError
from dropbench.core.export import SIDECAR_FILE, ExportSidecar, export_backbone
from dropbench.core.identity import NATS, TRAIN_LOSS, RunIdentity
from dropbench.core.io import atomic_write_json
from dropbench.core.layout import CHECKPOINT_FILE, EXPORT_DIR, epoch_export_dir
from dropbench.core.lifecycle import Measured, RecordedRun, RunContext
from dropbench.core.loop import StepHooks, autocast_for, epoch_seed, evaluate, stop_on_divergence, train_one_epoch
from dropbench.core.models import BackboneConfig
from dropbench.pretrain.build import Place, Training, build_training, check_pairing, run_config
from dropbench.pretrain.config import Recipe, Regime, pretrain_identity
from dropbench.pretrain.data import build_loaders, dataset_name, train_eval_loader
from dropbench.pretrain.diagnostics import DiagnosticsConfig
from dropbench.pretrain.distributed import Processes, init_distributed
from dropbench.pretrain.regime_step import RegimeStep
from dropbench.pretrain.reporting import LOG_FILE, Reporter, read_rows
from dropbench.pretrain.state import Position, checkpoint_state, load_checkpoint, read_run_checkpoint, restore

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
__all__ = ["CHECKPOINT_FILE", "RunSummary", "check_pairing", "load_checkpoint", "pretrain"]


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
    final_train_loss: float | None = None  # measured with dropout off (``TRAIN_LOSS``); None: not measured


def broadcasts_buffers(model: nn.Module) -> bool:
    """Whether DDP must broadcast the model's buffers every forward: only for batch-norm statistics. The scheduled
    rates are buffers too (tens of them), but every rank sets them alike from the same schedule."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


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
    identity = pretrain_identity(backbone, regime, recipe, dataset_name(data, recipe, data_name))
    stage = Pretraining(identity, backbone, regime, recipe, data, Path(out), resume, device, diagnostics, data_name)
    done = stage.run(results_dir, force)
    if done.finished_earlier:
        _check_epoch_exports(Path(out), recipe, recipe.epochs if regime.train else 0)
        return _finished_summary(Path(out), recipe, done.records)
    stage.summary.records = done.records
    return stage.summary


@dataclass
class Pretraining(RecordedRun):
    """A pretraining run; ``summary`` is what it reports once executed."""

    backbone: BackboneConfig
    regime: Regime
    recipe: Recipe
    data: str
    out: Path
    resume: bool
    device: str | None
    diagnostics: DiagnosticsConfig | None
    data_name: str | None
    summary: RunSummary | None = None

    def execute(self, context: RunContext) -> Measured | None:
        out, recipe, regime = self.out, self.recipe, self.regime
        _check_run_folder(out, self.resume, context.force, self.identity.digest)
        processes, dev = init_distributed(self.device)
        _prepare_run_folder(out, self.resume, context.force, processes)
        run = build_training(
            self.backbone, regime, recipe, self.data, self.data_name, processes, dev, check_images=not self.resume
        )
        if self.diagnostics and run.splits.train_plain is None:
            raise UserInputError(
                "--diagnostics", "it reads training images at random: train on the folder, not its shards"
            )
        config = run_config(self.backbone, regime, recipe, run.splits.name)
        checkpoint = read_run_checkpoint(out, self.resume, config)
        _check_epoch_exports(out, recipe, checkpoint["epoch"] if checkpoint else 0)
        if checkpoint:
            context.started = checkpoint["started"]  # the first attempt's
        if processes.main:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / CONFIG_FILE, config | {"config_hash": self.identity.digest})
        epochs = recipe.epochs if regime.train else 0  # random_init: the initialisation, evaluated and exported
        place = Place(out, json.dumps(config, sort_keys=True), context.started, processes, dev)

        def export_after(epoch: int, row: dict) -> None:  # before that epoch's checkpoint: a resume writes it again
            fields = {"dataset": run.splits.name, "epochs": epoch, "val_top1": row["val_top1"]}
            at_epoch, classes = self.identity.at_epoch(epoch), run.splits.num_classes
            sidecar = ExportSidecar.of_run(self.backbone, at_epoch, classes, **fields)
            export_backbone(run.model, out / epoch_export_dir(epoch), sidecar)

        log_rows = _train(run, recipe, epochs, place, checkpoint, self.diagnostics, export_after)
        final = log_rows[-1] if log_rows else {}
        final_train_loss = _final_train_loss(run, recipe, processes, dev)
        self.summary = RunSummary(
            run_dir=out,
            train_loss=float(final.get("train_loss", "nan")),
            val_top1=float(final.get("val_top1", "nan")),
            final_train_loss=final_train_loss,
            epochs=epochs,
            iters_per_epoch=run.iters_per_epoch,
            main_process=processes.main,
        )
        if not processes.main:
            return None
        start_epoch = checkpoint["epoch"] if checkpoint else 0
        if not (start_epoch == epochs and (out / EXPORT_DIR / SIDECAR_FILE).is_file()):  # else exported before
            _export(run, self.backbone, self.identity, out, self.summary)
        metrics = {"top1": self.summary.val_top1}
        if final_train_loss is not None:
            metrics[TRAIN_LOSS] = final_train_loss
        return Measured(metrics, units={TRAIN_LOSS: NATS}, model=self.backbone.model, run_dir=out)


def _check_epoch_exports(out: Path, recipe: Recipe, epochs_done: int) -> None:
    """Refuse ``export_epochs`` that name an epoch the run has passed without exporting it (listed after it ran)."""
    missing = recipe.missing_epoch_exports(out, epochs_done)
    if missing:
        raise UserInputError(
            "recipe.export_epochs",
            f"'{out}' is past epoch {missing[0]} and has no export of it; leave the epoch out, or run afresh (--force)",
        )


def _check_run_folder(out: Path, resume: bool, force: bool, digest: str) -> None:
    """Everything that can be wrong with the run folder, checked before anything is made. ``--resume`` of a run
    stopped before its first checkpoint starts it from the beginning (a preempted job's requeue does just that)."""
    if resume and not (out / CHECKPOINT_FILE).is_file() and not (out / EXPORT_DIR).is_dir():
        config = out / CONFIG_FILE
        if config.is_file() and json.loads(config.read_text()).get("config_hash") != digest:
            raise UserInputError("resume", f"'{out}' holds another run's settings and no checkpoint; pick a new --out")
        logger.info(f"'{out}' holds no {CHECKPOINT_FILE} yet: the run starts from its first epoch")
    if not resume and not force and out.exists() and any(out.iterdir()):
        raise UserInputError("out", f"'{out}' already holds a run; pass --resume to continue it or pick a new folder")


def _prepare_run_folder(out: Path, resume: bool, force: bool, processes: Processes) -> None:
    """``force`` without ``resume`` starts afresh: an earlier run folder is moved aside, not deleted."""
    if force and not resume and processes.main and out.exists() and any(out.iterdir()):
        aside = out.with_name(f"{out.name}.superseded-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}")
        os.replace(out, aside)
        logger.info(f"--force: the earlier run folder is now {aside}")
    if processes.world > 1:
        dist.barrier()


def _hooks(regime_step: RegimeStep, reporter: Reporter, done: Position) -> StepHooks:
    """The loop's hooks for the epoch ``done`` starts: the regime's update, then the reports."""
    reporter.start_epoch(done)

    def before_update(update: int) -> None:
        reporter.before_update(update, regime_step.step(update))

    return StepHooks(before_update, reporter.before_step if reporter.probe else None, reporter.after_update)


def _train(
    run: Training,
    recipe: Recipe,
    epochs: int,
    place: Place,
    checkpoint: dict | None,
    diagnostics: DiagnosticsConfig | None,
    export_after: Callable[[int, dict], None],
) -> list[dict]:
    """The epoch loop from the checkpoint's epoch (or 0) to ``epochs``; returns the log's rows. After each epoch
    of ``recipe.export_epochs`` but the last, ``export_after(epoch, log row)`` exports the model."""
    processes, dev = place.processes, place.device
    resumed = restore(run, checkpoint)
    train_model: nn.Module = run.model
    if processes.world > 1:
        train_model = DistributedDataParallel(
            run.model,
            device_ids=[dev.index] if dev.type == "cuda" else None,
            broadcast_buffers=broadcasts_buffers(run.model),
        )
    if recipe.compile_backend:
        train_model = torch.compile(train_model, backend=recipe.compile_backend)
    autocast = autocast_for(dev, recipe.amp)
    sampler, train_loader, loader_generator, val_loader = build_loaders(run.splits, recipe, processes, dev)
    reporter = Reporter(run, recipe, place, resumed, checkpoint, diagnostics, autocast)
    regime_step = RegimeStep(run.controller, run.optimizer, recipe, recipe.epochs * run.iters_per_epoch)
    update = resumed.update
    for epoch in range(resumed.epoch, epochs):
        done = resumed if epoch == resumed.epoch else Position(epoch, update)  # updates a recovery point had done
        sampler.set_epoch(epoch, skip=done.updates * run.accum_steps * recipe.per_device_batch)
        loader_generator.manual_seed(epoch_seed(recipe.seed, epoch))
        epoch_start = time.perf_counter()
        with stop_on_divergence("pretrain", epoch, epochs, place.out / CHECKPOINT_FILE):
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
                hooks=_hooks(regime_step, reporter, done),
                desc=f"epoch {epoch + 1}/{recipe.epochs}",
                progress=processes.main,
                show_loss_every=recipe.log_every,
            )
        update = result.update
        if processes.main:  # the recovery point's sum is already the sum over every process
            result.loss_sum += done.loss_sum
        if processes.world > 1:
            dist.all_reduce(result.loss_sum)
        train_loss = result.loss_sum.item() / (run.iters_per_epoch * run.accum_steps * processes.world)
        epoch_seconds = time.perf_counter() - epoch_start
        metrics = _validate(run, val_loader, dev, autocast)
        row = {
            "epoch": epoch + 1,
            "update": update,
            "train_loss": train_loss,
            **metrics,
            "lr": run.optimizer.param_groups[0]["lr"],
            "weight_decay": max(group["weight_decay"] for group in run.optimizer.param_groups),
            **reporter.mean_rates(run.iters_per_epoch),
            "epoch_seconds": epoch_seconds,
            "train_images_per_s": result.micro_batches * recipe.per_device_batch * processes.world / epoch_seconds,
        }
        rng_states = gather_rng_states()
        if processes.main:
            reporter.end_epoch(row, epoch, recipe.epochs)
            if epoch + 1 in recipe.earlier_export_epochs:
                export_after(epoch + 1, row)
            state = checkpoint_state(run, place, epoch + 1, update, rng_states, reporter.initial_weights)
            save_checkpoint(place.out / CHECKPOINT_FILE, state)
        if processes.world > 1:
            dist.barrier()
    if epochs == 0:  # random_init: the initialisation's validation row, on every rank (it all-reduces)
        reporter.first_row(_validate(run, val_loader, dev, autocast, with_ema=False))
    reporter.close()
    return reporter.log_rows


def _final_train_loss(run: Training, recipe: Recipe, processes, dev: torch.device) -> float | None:
    """The paper's training loss: mean cross-entropy of the final model on training images with dropout and stochastic
    depth off (``evaluate`` puts the model in eval mode), without label smoothing or augmentation; None where the
    training images are streamed shards, which cannot be drawn from."""
    loader = train_eval_loader(run.splits, recipe, processes, dev)
    if loader is None:
        return None
    return evaluate(run.model, loader, run.splits.num_classes, dev, autocast_for(dev, recipe.amp), reduce=True)["loss"]


def _validate(run: Training, loader: DataLoader, dev: torch.device, autocast, with_ema: bool = True) -> dict:
    classes = run.splits.num_classes
    metrics = evaluate(run.model, loader, classes, dev, autocast, reduce=True)
    row = {"val_loss": metrics["loss"], "val_top1": metrics["top1"], "val_top5": metrics["top5"]}
    if with_ema and run.ema is not None:
        row["val_top1_ema"] = evaluate(run.ema.module, loader, classes, dev, autocast, reduce=True)["top1"]
    return row


def _export(run: Training, backbone: BackboneConfig, identity: RunIdentity, out: Path, summary: RunSummary) -> None:
    fields = {"dataset": run.splits.name, "epochs": summary.epochs, "val_top1": summary.val_top1}
    sidecar = ExportSidecar.of_run(backbone, identity, run.splits.num_classes, **fields)
    export_backbone(run.model, out / EXPORT_DIR, sidecar)


def _finished_summary(out: Path, recipe: Recipe, records: list[Path]) -> RunSummary:
    """What a finished run's folder and records say about it."""
    rows = read_rows(out / LOG_FILE, "epoch", recipe.epochs)
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
