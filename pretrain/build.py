"""What a pretraining run is made of, built before its loop (and before a checkpoint is restored): data, the model
with the regime's maximum rates, its drop controller, optimizer, scheduler, EMA, mixup and criterion."""

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from torch import nn

from dropbench.core.errors import UserInputError
from dropbench.core.loop import build_criterion, build_scheduler, gpu_step_settings
from dropbench.core.models import BackboneConfig
from dropbench.pretrain.augment import DeviceAugment
from dropbench.pretrain.config import Recipe, Regime
from dropbench.pretrain.controller import DropController
from dropbench.pretrain.data import DataSplits, build_data
from dropbench.pretrain.distributed import Processes


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
class Place:
    """Where a run goes: its folder, what its checkpoints record, and the processes and device it runs on."""

    out: Path
    config: str  # run_config as JSON, compared on resume
    started: str
    processes: Processes
    device: torch.device


@dataclass
class Training:
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


def build_training(
    backbone: BackboneConfig,
    regime: Regime,
    recipe: Recipe,
    data: str,
    data_name: str | None,
    processes: Processes,
    device: torch.device,
    check_images: bool = True,
) -> Training:
    """Data, model (initialised from the recipe's seed), drop controller, optimizer, scheduler, EMA and criterion;
    the global RNGs are then seeded per process. Every image's header is checked on the main process when
    ``check_images`` (a resumed run's folder was checked when it started)."""
    check = check_images and processes.main
    splits = build_data(data, recipe, backbone.input_size, check_images=check, data_name=data_name)
    per_update = recipe.per_device_batch * processes.world
    if recipe.batch_size % per_update:
        raise UserInputError(
            "recipe.per_device_batch",
            f"{recipe.per_device_batch} × {processes.world} processes must divide batch_size={recipe.batch_size}",
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
        kind: (getattr(regime, kind).rates(recipe.epochs, iters_per_epoch), rate) for kind, rate in max_rates.items()
    }
    controller = DropController(model, schedules, backbone.drop_path_rule, tensor_rates=recipe.compile is not False)
    random.seed(recipe.seed + processes.rank)
    np.random.seed(recipe.seed + processes.rank)
    torch.manual_seed(recipe.seed + processes.rank)
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
    return Training(
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
