"""What a pretraining run reports, and its recovery points: the epoch log (``log.csv``), the gradient diagnostics
(``diagnostics.csv``), the trackers (TensorBoard, wandb, mlflow), the console line, and the mid-epoch checkpoints
a resumed run continues from."""

import csv
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from dropbench.core.checkpoint import gather_rng_states, save_checkpoint
from dropbench.core.errors import UserInputError
from dropbench.core.io import atomic_write_csv
from dropbench.core.layout import CHECKPOINT_FILE
from dropbench.core.tracking import Trackers
from dropbench.pretrain.build import Place, Training
from dropbench.pretrain.config import Recipe
from dropbench.pretrain.diagnostics import DIAGNOSTIC_COLUMNS, DiagnosticsConfig, GradientDiagnostics, gradient_norm
from dropbench.pretrain.state import Position, checkpoint_state

LOG_FILE = "log.csv"
DIAGNOSTICS_FILE = "diagnostics.csv"
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


def read_rows(path: Path, column: str, upto: int) -> list[dict]:
    """The rows of a CSV log whose ``column`` is at most ``upto`` (what a checkpoint had seen)."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [row for row in csv.DictReader(f) if int(row[column]) <= upto]


class Reporter:
    """The run's reports around every update (the rates it ran with, gradient diagnostics, trackers, recovery
    points) and, on the main process, after every epoch (log row, diagnostics CSV, console line)."""

    def __init__(
        self,
        run: Training,
        recipe: Recipe,
        place: Place,
        start: Position,
        checkpoint: dict | None,
        diagnostics: DiagnosticsConfig | None,
        autocast,
    ):
        self.run, self.recipe, self.place = run, recipe, place
        self.main = place.processes.main
        self.rates: dict[str, float] = {}
        self.rate_sums = dict.fromkeys(run.schedules, 0.0)
        self.log_rows = read_rows(place.out / LOG_FILE, "epoch", start.epoch) if self.main else []
        self.probe, self.diagnostic_rows, self.measured = None, [], None
        if diagnostics is not None and self.main:
            self.probe = _diagnostics_probe(run, recipe, place.device, checkpoint, diagnostics, autocast)
            self.diagnostic_rows = read_rows(place.out / DIAGNOSTICS_FILE, "update", start.update - 1)
        self.trackers = None
        if self.main:
            config = json.loads(place.config)
            name = f"{config['backbone']['name']}-{config['regime']['name']}-seed{recipe.seed}"
            self.trackers = Trackers(
                recipe.loggers, place.out, name, config, resume_step=start.update if checkpoint else None
            )

    @property
    def initial_weights(self) -> torch.Tensor | None:
        return self.probe.initial if self.probe is not None else None

    def start_epoch(self, done: Position) -> None:
        """Epoch ``done.epoch`` begins, of which ``done.updates`` were made before a recovery point."""
        self.epoch, self.epoch_first_update, self.carried_loss = done.epoch, done.update - done.updates, done.loss_sum
        self.rate_sums = dict.fromkeys(self.run.schedules, 0.0) | done.rate_sums

    def before_update(self, update: int, rates: dict[str, float]) -> None:
        """``update`` runs with drop ``rates``: summed for the epoch's mean; the diagnostics measure when due."""
        self.rates = rates
        for kind, rate in rates.items():
            self.rate_sums[kind] += rate
        if self.probe is not None and self.probe.due(update):
            self.measured = self.probe.measure()

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
        processes = self.place.processes
        total = loss_sum.detach().clone()
        if processes.world > 1:
            dist.all_reduce(total)
        rng_states = gather_rng_states()
        if not self.main:
            return
        state = checkpoint_state(self.run, self.place, self.epoch, update, rng_states, self.initial_weights)
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
        recipe.workers,
    )
    if checkpoint:
        if "initial_weights" not in checkpoint:
            raise UserInputError(
                "--diagnostics",
                "this run was started without diagnostics; model distance needs its initial weights",
            )
        probe.initial = checkpoint["initial_weights"].to(dev)
    return probe
