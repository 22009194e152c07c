"""One training loop for every stage that trains a classifier (pretraining, classification fine-tuning):
``train_one_epoch`` and ``evaluate``, plus the builders both stages share (criterion with mixup/cutmix,
scheduler, autocast, the GPU step settings)."""

import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import get_optimizer_class
from timm.scheduler import create_scheduler_v2
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from dropbench.core.errors import UserInputError, diverged

Autocast = Callable[[], AbstractContextManager]


def autocast_for(device: torch.device, amp: bool) -> Autocast:
    """bf16 autocast on a GPU when ``amp``, else a no-op context."""
    enabled = amp and device.type == "cuda"
    return lambda: torch.autocast("cuda", dtype=torch.bfloat16) if enabled else nullcontext()


@dataclass(frozen=True)
class StepSettings:
    channels_last: bool = False  # model and batches in NHWC
    fused_optimizer: bool = False  # the optimizer's fused kernel (``fused=True``)


def gpu_step_settings(model: nn.Module, opt: str, device: torch.device) -> StepSettings:
    """What makes a training step fast on a GPU; the process-wide parts (TF32 matmuls and convolutions, cuDNN's
    autotuner) are switched on here. channels_last for a model with convolutions beyond its patch embedding, the
    fused kernel for an optimizer that has one. On the CPU nothing changes."""
    if device.type != "cuda":
        return StepSettings()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    convolutions = sum(isinstance(module, nn.Conv2d) for module in model.modules())
    fused = "fused" in inspect.signature(get_optimizer_class(opt)).parameters
    return StepSettings(channels_last=convolutions > 1, fused_optimizer=fused)


def epoch_seed(seed: int, epoch: int) -> int:
    """The data order's seed for one epoch: a resumed run draws the same batches as an uninterrupted one."""
    return seed * 100_003 + epoch


def build_criterion(
    num_classes: int,
    smoothing: float,
    mixup: float = 0.0,
    cutmix: float = 0.0,
    prob: float = 1.0,
    switch_prob: float = 0.5,
) -> tuple[Mixup | None, nn.Module]:
    """``(mixup, criterion)``: timm's Mixup with soft-target cross-entropy when mixup or cutmix is on, else
    (label-smoothed) cross-entropy and no mixup."""
    if mixup > 0 or cutmix > 0:
        mixer = Mixup(
            mixup_alpha=mixup,
            cutmix_alpha=cutmix,
            prob=prob,
            switch_prob=switch_prob,
            label_smoothing=smoothing,
            num_classes=num_classes,
        )
        return mixer, SoftTargetCrossEntropy()
    if smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=smoothing)
    return None, nn.CrossEntropyLoss()


def build_scheduler(optimizer: torch.optim.Optimizer, settings, updates_per_epoch: int, field: str):
    """timm's scheduler stepped per update from ``settings`` (sched, epochs, warmup_epochs, warmup_lr, min_lr)."""
    try:
        scheduler, _ = create_scheduler_v2(
            optimizer,
            sched=settings.sched,
            num_epochs=settings.epochs,
            warmup_epochs=settings.warmup_epochs,
            warmup_lr=settings.warmup_lr,
            min_lr=settings.min_lr,
            step_on_epochs=False,
            updates_per_epoch=updates_per_epoch,
        )
    except (AssertionError, ValueError) as err:
        raise UserInputError(field, f"timm cannot build scheduler '{settings.sched}' ({err})") from None
    if scheduler is None:
        raise UserInputError(field, f"timm has no scheduler '{settings.sched}'")
    return scheduler


@dataclass
class StepHooks:
    """What a stage adds to the loop, each called with the update's number (0-based, counted over the run).

    ``before_update``: before the first micro-batch of an update (drop rates, weight decay, measurements);
    ``before_step``: after the last backward, before clipping (gradient diagnostics);
    ``after_update``: after the optimizer step, with the last micro-batch's loss (logging) and the float64 sum of
    the epoch's micro-batch losses so far (recovery points)."""

    before_update: Callable[[int], None] | None = None
    before_step: Callable[[int], None] | None = None
    after_update: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None


class NonFiniteLoss(Exception):
    """The training loss of an update was not finite: ``update`` (0-based over the run) at ``lr``."""

    def __init__(self, loss: float, update: int, lr: float):
        super().__init__(f"training loss {loss} at update {update + 1}")
        self.loss, self.update, self.lr = loss, update, lr


@contextmanager
def stop_on_divergence(stage: str, epoch: int, epochs: int, checkpoint: Path) -> Iterator[None]:
    """Turn the loop's NonFiniteLoss into the run's one-line failure, naming the epoch and what is kept."""
    try:
        yield
    except NonFiniteLoss as err:
        where = f"epoch {epoch + 1}/{epochs}, update {err.update + 1}"
        raise diverged(stage, err.loss, where, err.lr, checkpoint) from None


@dataclass
class EpochResult:
    loss_sum: torch.Tensor  # float64 sum of every micro-batch's loss (all-reduce it for the global mean)
    micro_batches: int
    update: int  # the next update's number


def data_parallel_of(model: nn.Module) -> DistributedDataParallel | None:
    """The DistributedDataParallel ``model`` is, or that ``torch.compile`` wrapped (``_orig_mod``); None if neither:
    a compiled DDP model is no DDP instance, and its ``no_sync`` must be found inside."""
    inner = getattr(model, "_orig_mod", model)
    return inner if isinstance(inner, DistributedDataParallel) else None


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    criterion: nn.Module,
    device: torch.device,
    *,
    updates: int,
    start_update: int,
    accum_steps: int = 1,
    mixup: Mixup | None = None,
    batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    autocast: Autocast = nullcontext,
    clip_grad: float | None = None,
    ema=None,
    hooks: StepHooks | None = None,
    desc: str = "",
    progress: bool = True,
    show_loss_every: int = 50,
) -> EpochResult:
    """``updates`` optimizer updates of ``accum_steps`` micro-batches each from ``loader``.

    ``model`` may be wrapped in DistributedDataParallel, and that in ``torch.compile``: gradients are synchronised
    on an update's last micro-batch only. ``batch_transform`` finishes each batch on the device (uint8 loaders:
    normalisation and augmentation). The scheduler is stepped at the start of every update, the EMA after it. A
    progress bar (on a terminal) shows the loss every ``show_loss_every`` updates: reading it waits for the device."""
    hooks = hooks or StepHooks()
    ddp = data_parallel_of(model)
    inner = ddp.module if ddp is not None else getattr(model, "_orig_mod", model)
    model.train()
    update = start_update
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    micro_batches = updates * accum_steps
    show = progress and sys.stderr.isatty()
    bar = tqdm(total=updates, desc=desc, unit="it", disable=not show, leave=False, dynamic_ncols=True)
    for micro, (images, targets) in enumerate(loader):
        if micro >= micro_batches:
            break
        first, last = micro % accum_steps == 0, micro % accum_steps == accum_steps - 1
        if first:
            if hooks.before_update:
                hooks.before_update(update)
            scheduler.step_update(num_updates=update)
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if batch_transform is not None:
            images = batch_transform(images)
        if mixup is not None:
            images, targets = mixup(images, targets)
        with ddp.no_sync() if ddp is not None and not last else nullcontext(), autocast():
            loss = criterion(model(images), targets)
        (loss / accum_steps).backward()
        loss_sum += loss.detach().double()
        if not last:
            continue
        if not torch.isfinite(loss_sum):  # before the step: a diverged update never reaches the weights
            raise NonFiniteLoss(float(loss.detach()), update, optimizer.param_groups[0]["lr"])
        if hooks.before_step:
            hooks.before_step(update)
        if clip_grad:
            nn.utils.clip_grad_norm_(inner.parameters(), clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(inner, step=update)
        update += 1
        bar.update(1)
        if show and update % show_loss_every == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}", refresh=False)
        if hooks.after_update:
            hooks.after_update(update, loss, loss_sum)
    bar.close()
    return EpochResult(loss_sum, micro_batches, update)


def class_mean(correct: torch.Tensor, total: torch.Tensor) -> float:
    """The mean of per-class recalls over the classes present, in percent."""
    present = total > 0
    return 100.0 * (correct[present].double() / total[present].double()).mean().item()


def accuracy_metrics(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Top-1 and mean per-class accuracy of predicted classes, in percent."""
    predictions, labels = predictions.cpu().long(), labels.cpu().long()
    correct = predictions.eq(labels)
    total = torch.bincount(labels, minlength=num_classes)
    per_class = torch.bincount(labels[correct], minlength=num_classes)
    return {"top1": 100.0 * correct.double().mean().item(), "mean_per_class_accuracy": class_mean(per_class, total)}


@torch.no_grad()
def predict_logits(
    model: nn.Module, loader: DataLoader, device: torch.device, autocast: Autocast = nullcontext
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, labels)`` of every image of the loader, in eval mode, as float32 on the CPU."""
    model.eval()
    logits, labels = [], []
    for images, targets in loader:
        with autocast():
            logits.append(model(images.to(device, non_blocking=True)).float().cpu())
        labels.append(targets)
    return torch.cat(logits), torch.cat(labels).long()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    num_classes: int,
    device: torch.device,
    autocast: Autocast = nullcontext,
    reduce: bool = False,
) -> dict[str, float]:
    """Mean cross-entropy, top-1, top-5 and mean per-class accuracy (percent) over the loader; ``reduce`` sums
    the counts over every process first (each process holding a shard of the data)."""
    model.eval()
    c = num_classes
    sums = torch.zeros(3 + 2 * c, dtype=torch.float64, device=device)  # loss, top-5, count; per class: hits, total
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast():
            logits = model(images)
        logits = logits.float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(targets[:, None])
        sums[0] += nn.functional.cross_entropy(logits, targets, reduction="sum").double()
        sums[1] += top.any(dim=1).sum()
        sums[2] += len(targets)
        sums[3 : 3 + c] += torch.bincount(targets[top[:, 0]], minlength=c)
        sums[3 + c :] += torch.bincount(targets, minlength=c)
    if reduce and dist.is_initialized():
        dist.all_reduce(sums)
    count = max(sums[2].item(), 1.0)
    correct, total = sums[3 : 3 + c], sums[3 + c :]
    return {
        "loss": sums[0].item() / count,
        "top1": 100.0 * correct.sum().item() / count,
        "top5": 100.0 * sums[1].item() / count,
        "mean_per_class_accuracy": class_mean(correct, total) if total.sum() > 0 else float("nan"),
    }
