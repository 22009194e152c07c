"""A pretraining run's checkpoint (``checkpoint.pt``): what it holds, how it is read back and restored.

It holds the model, optimizer and EMA states, every process's RNG states, where the run stands (epochs and updates
done; within an epoch, a recovery point's updates and its sums of losses and drop rates) and the run's settings,
which a resumed run must share. It is loaded weights-only: tensors and plain Python values, never pickled objects.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dropbench.core.checkpoint import load_checkpoint as read_checkpoint
from dropbench.core.checkpoint import own_rng_state, set_rng_state
from dropbench.core.configs import flatten
from dropbench.core.errors import UserInputError
from dropbench.core.layout import CHECKPOINT_FILE
from dropbench.pretrain.build import Place, Training
from dropbench.pretrain.config import Recipe

# The recipe's fields that a resumed run may change (how it checkpoints, compiles and is tracked).
EXECUTION_SETTINGS = {f"recipe.{name}" for name in Recipe.names_where("resumable")}


def check_same_config(saved: dict, current: dict) -> None:
    saved_flat, current_flat = flatten(saved), flatten(current)
    for key in sorted((saved_flat.keys() | current_flat.keys()) - EXECUTION_SETTINGS):
        if saved_flat.get(key) != current_flat.get(key):
            raise UserInputError(
                f"resume.{key}",
                f"the checkpoint was made with {saved_flat.get(key)!r}, this run asks for {current_flat.get(key)!r}; "
                "resume with the original settings or start a new --out",
            )


def load_checkpoint(path: Path) -> dict:
    """Weights-only loading: a checkpoint holds tensors and plain Python values, never pickled objects."""
    return read_checkpoint(path, "resume", "start a new --out")


def read_run_checkpoint(out: Path, resume: bool, config: dict) -> dict | None:
    """The checkpoint a resumed run continues from (None when it starts), made with the same settings."""
    checkpoint_path = out / CHECKPOINT_FILE
    if not (resume and checkpoint_path.is_file()):
        return None
    checkpoint = load_checkpoint(checkpoint_path)
    check_same_config(json.loads(checkpoint["config"]), config)
    return checkpoint


@dataclass
class Position:
    """Where a run stands: ``epoch`` epochs finished, ``update`` updates made in all, of which ``updates`` in the
    epoch under way (a mid-epoch recovery point), with the sums of their losses (over every process) and of their
    scheduled drop rates."""

    epoch: int
    update: int
    updates: int = 0
    loss_sum: float = 0.0
    rate_sums: dict[str, float] = field(default_factory=dict)


def restore(run: Training, checkpoint: dict | None) -> Position:
    """Model, optimizer, EMA and RNG states from ``checkpoint``; returns the position to continue from."""
    if not checkpoint:
        return Position(0, 0)
    run.model.load_state_dict(checkpoint["model"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    if run.ema is not None:
        run.ema.load_state_dict(checkpoint["ema"])
    set_rng_state(own_rng_state(checkpoint["rng"]))
    within = checkpoint.get("within_epoch", {})
    return Position(
        checkpoint["epoch"],
        checkpoint["update"],
        within.get("updates", 0),
        within.get("loss_sum", 0.0),
        within.get("rate_sums", {}),
    )


def checkpoint_state(
    run: Training,
    place: Place,
    epoch: int,
    update: int,
    rng_states: list[dict],
    initial_weights: torch.Tensor | None = None,
) -> dict:
    """What ``checkpoint.pt`` holds after ``epoch`` epochs and ``update`` updates (``initial_weights``: the
    gradient diagnostics' reference for the model's distance from its initialisation)."""
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
    if initial_weights is not None:
        state["initial_weights"] = initial_weights.cpu()
    return state
