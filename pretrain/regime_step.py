"""The regime's per-iteration update, the paper's mechanism: before every optimizer update, the drop rates its
schedules give that update (set on every dropout and drop-path module by the ``DropController``) and, where the
recipe anneals it, the weight decay on its cosine."""

import math

import torch

from dropbench.pretrain.config import Recipe
from dropbench.pretrain.controller import DropController


def cosine(start: float, end: float, step: int, total: int) -> float:
    """From ``start`` at step 0 to ``end`` at ``total``, half a cosine."""
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


class RegimeStep:
    """``step(update)`` sets the model's drop rates and the optimizer's weight decay for ``update`` (0-based, over
    the run) and returns the rates; it depends on nothing but the update's number, so a resumed run picks it up
    anywhere."""

    def __init__(self, controller: DropController, optimizer: torch.optim.Optimizer, recipe: Recipe, total: int):
        self.controller, self.optimizer, self.recipe, self.total = controller, optimizer, recipe, total
        self.base_weight_decays = [group["weight_decay"] for group in optimizer.param_groups]

    def step(self, update: int) -> dict[str, float]:
        rates = self.controller.step(update)
        if self.recipe.weight_decay_end is not None:
            decay = cosine(self.recipe.weight_decay, self.recipe.weight_decay_end, update, self.total)
            for group, base in zip(self.optimizer.param_groups, self.base_weight_decays, strict=True):
                if base > 0:  # parameters without decay (norms, biases) keep none
                    group["weight_decay"] = decay
        return rates
