"""Checkpoints of the det/seg transfers (mmengine's Runner), made so that ``--resume`` continues a killed run where
it stopped and ends with the records of one that ran through.

- **Weights-only.** mmengine pickles its message hub's ``HistoryBuffer``s and numpy scalars into a checkpoint and
  reads it back with ``torch.load``'s defaults. Here ``PlainCheckpoints`` stores them as tensors and plain values
  (and rebuilds them on loading), and mmengine's local loader is replaced by a weights-only one that allows no class
  at all: a swapped-in file carrying a pickled payload is refused in one line, and the payload never runs.
  (Allowing the classes instead would mean allowing ``builtins.getattr``, which ``HistoryBuffer`` pickles, and
  whose reach is any attribute of any object.)
- **Atomic.** mmengine writes a checkpoint in place; the ``atomic_local`` file backend writes it beside and renames
  it, so a kill during a save leaves the previous checkpoint whole.
- **Randomness by position.** A resumed run is seeded afresh and mmengine replays its data loader up to the
  checkpointed iteration; the uninterrupted run has meanwhile drawn from its RNGs for dropout, drop path and
  augmentation. ``PositionSeeds`` seeds every RNG of a process from (the run's seed for this rank, iteration) just
  before each training batch is drawn, in both runs alike, so that what follows an iteration is the same however
  the run got there.
"""

import os
import random
from pathlib import Path

import numpy as np
import torch
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer
from mmengine.runner import CheckpointLoader, IterBasedTrainLoop

from dropbench.core.checkpoint import load_checkpoint
from dropbench.core.io import atomic_write

ATOMIC_BACKEND = "atomic_local"
_HISTORY = "__history_buffer__"  # the marker of a HistoryBuffer stored as plain values


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend, whose ``put`` (how a checkpoint is written) goes through a temp file."""

    def put(self, obj: bytes, filepath: str | Path) -> None:
        atomic_write(filepath, lambda tmp: Path(tmp).write_bytes(obj))


def load_from_local(filename: str, map_location=None) -> dict:
    """mmengine's loader for local paths (every ``load_from``, every resume), weights-only."""
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f"{filename} can not be found.")
    return load_checkpoint(Path(filename), "--resume", "start again in a new --work-dir", map_location or "cpu")


def _plain(value):
    """A value mmengine put into a checkpoint, as tensors and plain Python values."""
    if isinstance(value, HistoryBuffer):
        logs, counts = value.data
        return {_HISTORY: value.max_length, "logs": torch.from_numpy(logs.copy()), "counts": torch.from_numpy(counts)}
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return type(value)((key, _plain(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    return value


def _history_buffers(value):
    """``_plain``'s HistoryBuffers rebuilt, as mmengine's message hub loads them."""
    if isinstance(value, dict) and _HISTORY in value:
        return HistoryBuffer(value["logs"].numpy(), value["counts"].numpy(), max_length=value[_HISTORY])
    if isinstance(value, dict):
        return type(value)((key, _history_buffers(item)) for key, item in value.items())
    return value


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's (every device's) global RNGs, seeded from one 32-bit seed."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def position_seed(seed: int, position: int) -> int:
    """A seed for one iteration of a run, independent of every other (seed, position) pair."""
    return int(np.random.SeedSequence((seed, position)).generate_state(1)[0])


class _SeededDraws:
    """An iteration-based loop's data iterator that seeds every RNG from the position of each batch it draws."""

    def __init__(self, draws, seed: int):
        self.draws, self.seed, self.position = draws, seed, 0

    def __iter__(self):
        return self

    def __next__(self):
        seed_everything(position_seed(self.seed, self.position))
        self.position += 1
        return next(self.draws)

    def __getattr__(self, name: str):
        return getattr(self.draws, name)


class PositionSeeds(Hook):
    """Seeds every RNG from (``runner.seed``, iteration) before each training batch is drawn.

    ``runner.seed`` is the run's seed made different per rank (``diff_rank_seed``). An iteration-based loop draws
    through ``_SeededDraws``, also while mmengine replays the batches a resumed run has trained; an epoch-based
    loop draws its first batch after ``before_train_epoch`` and every other after ``after_train_iter``."""

    priority = "VERY_HIGH"

    def before_train_epoch(self, runner) -> None:
        loop = runner.train_loop
        if isinstance(loop, IterBasedTrainLoop):
            if not isinstance(loop.dataloader_iterator, _SeededDraws):
                loop.dataloader_iterator = _SeededDraws(loop.dataloader_iterator, runner.seed)
        else:
            seed_everything(position_seed(runner.seed, runner.iter))

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not isinstance(runner.train_loop, IterBasedTrainLoop):
            seed_everything(position_seed(runner.seed, runner.iter + 1))


class PlainCheckpoints(Hook):
    """mmengine's checkpoint content as tensors and plain values on saving (after every other hook has added its
    part), rebuilt on loading."""

    priority = "LOWEST"

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        for key in list(checkpoint):
            checkpoint[key] = _plain(checkpoint[key])

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if "message_hub" in checkpoint:
            checkpoint["message_hub"] = _history_buffers(checkpoint["message_hub"])


def install() -> None:
    """Make mmengine read local checkpoints weights-only and offer the atomic file backend (idempotent)."""
    CheckpointLoader.register_scheme(prefixes="", loader=load_from_local, force=True)
    register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)


def latest_checkpoint(work_dir: Path) -> Path | None:
    """The checkpoint a resumed run continues from: the one ``last_checkpoint`` names, else the newest
    ``iter_*.pth`` / ``epoch_*.pth`` (a kill can leave ``last_checkpoint`` naming one that has been replaced)."""
    named = work_dir / "last_checkpoint"
    if named.is_file():
        path = Path(named.read_text().strip())
        if path.is_file():
            return path
    found = [(int(p.stem.split("_")[1]), p) for p in work_dir.glob("*_*.pth") if p.stem.split("_")[1].isdigit()]
    found = [(step, p) for step, p in found if p.stem.startswith(("iter_", "epoch_"))]
    return max(found)[1] if found else None
