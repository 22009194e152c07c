"""The paper's gradient analysis (Liu et al. 2023, §3), measured during pretraining.

At a fixed cadence of optimizer updates:

- ``grad_norm``: L2 norm of the training mini-batch gradient of that update (before clipping);
- ``model_distance``: L2 distance of the weights from their initial values;
- ``gdv`` (gradient direction variance): mean pairwise cosine distance ``d(u, v) = (1 - cos(u, v)) / 2`` of K
  mini-batch gradients taken at the current weights, with the regime's current dropout active;
- ``gde`` (gradient direction error): mean of ``d(g_i, ĝ)`` over the same K gradients, where ``ĝ`` is the
  gradient of a fixed subset of the training set (``full`` images) with dropout and stochastic depth off.

The K mini-batches and the ``full`` subset are fixed for the whole run (drawn once from the training set with
the recipe's seed and read through the evaluation transform, without mixup), so every measurement compares like
with like. Pairwise sums are streamed: memory is three parameter-sized vectors, whatever K is. Measuring does
not change training: the diagnostics use their own data loader, ``torch.autograd.grad`` (``.grad`` is left
alone) and restore every RNG they touch.
"""

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from dropbench.core.configs import parse_key_values
from dropbench.core.errors import UserInputError
from dropbench.core.fields import renamed_fields
from dropbench.core.settings import POSITIVE_INT, Check, Settings, setting

DIAGNOSTIC_COLUMNS = ["update", "epoch", "grad_norm", "model_distance", "gdv", "gde", "dropout", "drop_path"]


AT_LEAST_TWO = Check(
    lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 2, "must be >= 2 (GDV compares pairs of batches)"
)


@dataclass(frozen=True)
class DiagnosticsConfig(Settings):
    """When and from how much data the diagnostics are measured (``--diagnostics every=400 batches=8``)."""

    PREFIX: ClassVar[str] = "--diagnostics "

    every: int = setting(400, check=POSITIVE_INT)  # optimizer updates between measurements
    batches: int = setting(8, check=AT_LEAST_TWO)  # K mini-batch gradients for GDV and GDE
    full: int = setting(1024, check=POSITIVE_INT)  # training images in the fixed subset whose gradient is ĝ

    @classmethod
    def parse(cls, items: Iterable[str]) -> "DiagnosticsConfig":
        """``every=<iterations> batches=<K> [full=<images>]``."""
        with renamed_fields(lambda field_name: f"{cls.PREFIX}{field_name.removeprefix(cls.PREFIX)}"):
            return cls.from_config({}, parse_key_values(items, "--diagnostics"))


def cosine_distance(u: torch.Tensor, v: torch.Tensor) -> float:
    """``(1 - cos(u, v)) / 2``: 0 for parallel, 0.5 for orthogonal, 1 for opposite vectors."""
    cos = torch.dot(u.double(), v.double()) / (u.double().norm() * v.double().norm()).clamp_min(1e-300)
    return float((1.0 - cos) / 2.0)


class DirectionStats:
    """Streams GDV and GDE over gradients ``g_1..g_K`` holding only the sum of their unit vectors.

    With unit vectors ``u_i``, ``Σ_{i<j} cos(u_i, u_j) = (‖Σ u_i‖² − K) / 2``, so the mean pairwise cosine
    distance needs no K×K matrix.
    """

    def __init__(self, reference: torch.Tensor | None = None):
        self.reference = reference
        self.unit_sum: torch.Tensor | None = None
        self.count = 0
        self.error_sum = 0.0

    def add(self, gradient: torch.Tensor) -> None:
        unit = gradient.double() / gradient.double().norm().clamp_min(1e-300)
        self.unit_sum = unit if self.unit_sum is None else self.unit_sum + unit
        self.count += 1
        if self.reference is not None:
            self.error_sum += cosine_distance(gradient, self.reference)

    @property
    def gdv(self) -> float:
        k = self.count
        if k < 2:
            return float("nan")
        mean_cos = (float(self.unit_sum.dot(self.unit_sum)) - k) / (k * (k - 1))
        return (1.0 - mean_cos) / 2.0

    @property
    def gde(self) -> float:
        return self.error_sum / self.count if self.count and self.reference is not None else float("nan")


def flat_gradient(model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params, strict=True)]
    )


def flat_parameters(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad]).clone()


class _PreservedRng:
    """Restores the torch, CUDA, numpy and Python RNGs on exit, so measuring leaves training untouched."""

    def __enter__(self):
        self.torch = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        self.numpy = np.random.get_state()
        self.python = random.getstate()

    def __exit__(self, *exc):
        torch.set_rng_state(self.torch)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        np.random.set_state(self.numpy)
        random.setstate(self.python)


class GradientDiagnostics:
    """Measures gradient norm, model distance, GDV and GDE on ``model`` (an unwrapped module)."""

    def __init__(
        self,
        config: DiagnosticsConfig,
        model: nn.Module,
        train_images: Dataset,
        batch_size: int,
        criterion: nn.Module,
        device: torch.device,
        seed: int,
        autocast,
        workers: int = 0,
    ):
        self.config, self.model, self.criterion, self.device, self.autocast = (
            config,
            model,
            criterion,
            device,
            autocast,
        )
        self.initial = flat_parameters(model)
        generator = torch.Generator().manual_seed(seed + 7_919)
        order = torch.randperm(len(train_images), generator=generator).tolist()
        self.k_batches = -(-min(config.batches * batch_size, len(train_images)) // batch_size)
        # one fixed draw, read once per measurement: ĝ takes its first `full` images, the K mini-batches its first K
        chosen = order[: max(config.full, self.k_batches * batch_size)]
        self.full_count = min(config.full, len(train_images))
        # a generator of its own: an iterator draws its workers' seed from it, and the global RNG (the dropout masks
        # of the K gradients) is then the same at a measurement that decodes the images and at one that reuses them
        own = torch.Generator().manual_seed(seed)
        self.loader = DataLoader(Subset(train_images, chosen), batch_size, num_workers=workers, generator=own)
        if self.k_batches < 2:
            raise UserInputError("--diagnostics batches", "the training set is too small for 2 mini-batches")
        image, _ = train_images[chosen[0]]
        self.kept = len(chosen) * image.numel() * image.element_size() <= CACHE_BYTES  # decoded once, for the run
        self.cached: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def due(self, update: int) -> bool:
        return update % self.config.every == 0

    def _loss(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            logits = self.model(images.to(self.device))
        return self.criterion(logits.float(), targets.to(self.device))

    def _fixed_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The fixed images, batched: decoded once and kept when they fit in ``CACHE_BYTES`` (the embedded sets'
        always do), else decoded again at each measurement by the recipe's loader workers (ImageNet's at 224 px)."""
        if self.cached is not None:
            return self.cached
        batches = list(self.loader)
        self.cached = batches if self.kept else None
        return batches

    def _full_gradient(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        total, count = None, 0
        for images, targets in _first_images(batches, self.full_count):
            gradient = flat_gradient(self.model, self._loss(images, targets)) * len(targets)
            total = gradient if total is None else total + gradient
            count += len(targets)
        return total / count

    def measure(self) -> dict[str, float]:
        """GDV, GDE and model distance at the current weights; the model's mode and all RNGs are restored."""
        was_training = self.model.training
        buffers = {name: b.detach().clone() for name, b in self.model.named_buffers()}  # e.g. BatchNorm stats
        with _PreservedRng():
            try:
                batches = self._fixed_batches()
                self.model.eval()  # dropout and stochastic depth off for ĝ
                stats = DirectionStats(reference=self._full_gradient(batches))
                self.model.train()  # the regime's current rates for the mini-batch gradients
                for images, targets in batches[: self.k_batches]:
                    stats.add(flat_gradient(self.model, self._loss(images, targets)))
            finally:
                self.model.train(was_training)
                with torch.no_grad():
                    for name, b in self.model.named_buffers():
                        b.copy_(buffers[name])
        distance = float((flat_parameters(self.model) - self.initial).double().norm())
        return {"model_distance": distance, "gdv": stats.gdv, "gde": stats.gde}


CACHE_BYTES = 512 << 20  # the fixed images kept decoded in memory up to this size


def _first_images(batches: list[tuple[torch.Tensor, torch.Tensor]], count: int) -> Iterable[tuple[torch.Tensor, ...]]:
    """The batches up to ``count`` images, the last one cut there."""
    seen = 0
    for images, targets in batches:
        if seen >= count:
            return
        keep = min(len(targets), count - seen)
        yield images[:keep], targets[:keep]
        seen += keep


def gradient_norm(model: nn.Module) -> float:
    """L2 norm of the gradients in ``.grad`` (the training mini-batch's, after backward)."""
    norms = [p.grad.detach().double().norm() for p in model.parameters() if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0
