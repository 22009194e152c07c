"""One model-agnostic controller that schedules dropout and stochastic depth on any timm model.

Build the model with the regime's *maximum* rates (so timm creates every ``nn.Dropout`` and ``DropPath``
and applies its own per-block rule, e.g. ``linspace(0, rate, depth)`` for stochastic depth), then call
:meth:`DropController.step` once per training iteration: each module's rate becomes
``base × rate(t) / max_rate``, where ``base`` is the rate timm gave that module at construction.

For ``torch.compile``, ``tensor_rates=True`` swaps the scheduled modules for twins that read their rate from a
0-dim buffer: a compiled graph takes a float attribute as a constant (a new rate every iteration would recompile
it), a buffer as an input.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from timm.layers import DropPath
from torch import nn

from dropbench.core.errors import UserInputError

DROPOUT = "dropout"
DROP_PATH = "drop_path"
_RATE_ATTRIBUTE = {DROPOUT: "p", DROP_PATH: "drop_prob"}
# "timm": keep the rate timm gave each DropPath; "linear": re-base them to linspace(0, rate, blocks), the rule
# the paper's code uses for every model (timm's MLP-Mixer gives all blocks the same rate).
DROP_PATH_RULES = ("timm", "linear")


class TensorRateDrop(nn.Module):
    """Dropout of elements (``kind`` 'dropout', as ``nn.Dropout``) or of whole samples ('drop_path', as timm's
    ``DropPath``), the survivors scaled by 1/keep, with the rate in the buffer ``rate`` (not in the state dict)."""

    def __init__(self, kind: str, rate: float):
        super().__init__()
        self.kind = kind
        self.register_buffer("rate", torch.tensor(float(rate)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = 1.0 - self.rate
        shape = x.shape if self.kind == DROPOUT else (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * (torch.rand(shape, device=x.device) < keep).to(x.dtype) / keep  # float32 draws under autocast


def _rate(module: nn.Module, kind: str) -> float:
    if isinstance(module, TensorRateDrop):
        return float(module.rate)
    return float(getattr(module, _RATE_ATTRIBUTE[kind]))


def _set_rate(module: nn.Module, kind: str, rate: float) -> None:
    if isinstance(module, TensorRateDrop):
        module.rate.fill_(rate)
    else:
        setattr(module, _RATE_ATTRIBUTE[kind], rate)


def _swap_for_tensor_rate(model: nn.Module, name: str, kind: str) -> nn.Module:
    """Put the tensor-rate twin of module ``name`` in its place. An attention whose fused kernel takes the dropout
    rate as a Python float (timm's ``fused_attn``) then computes attention explicitly, through the twin."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    twin = TensorRateDrop(kind, _rate(getattr(parent, child), kind))
    setattr(parent, child, twin.to(next(model.parameters()).device))
    if child == "attn_drop" and getattr(parent, "fused_attn", False):
        parent.fused_attn = False
    return twin


def _is_classifier_head(module_name: str) -> bool:
    """timm names its classifier (and the dropout in front of it) ``head``, ``head.drop``, ``head_drop``."""
    return module_name.split(".")[0].startswith("head")


def block_drop_modules(model: nn.Module, kind: str) -> list[tuple[str, nn.Module]]:
    """``drop_modules`` inside the model's blocks, where a regime schedules them (not the classifier's dropout)."""
    return [(name, module) for name, module in drop_modules(model, kind) if not _is_classifier_head(name)]


def drop_modules(model: nn.Module, kind: str) -> list[tuple[str, nn.Module]]:
    """The named modules of ``kind`` ('dropout' or 'drop_path') that carry a non-zero rate."""
    module_type = nn.Dropout if kind == DROPOUT else DropPath
    attribute = _RATE_ATTRIBUTE[kind]
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, module_type) and getattr(module, attribute) > 0
    ]


def _linear_by_block(module_names: list[str], max_rate: float) -> list[float]:
    """``linspace(0, max_rate, blocks)`` over the blocks that own the modules, in model order."""
    blocks = list(dict.fromkeys(name.rpartition(".")[0] for name in module_names))
    per_block = np.linspace(0.0, max_rate, len(blocks))
    return [float(per_block[blocks.index(name.rpartition(".")[0])]) for name in module_names]


@dataclass
class _Scheduled:
    kind: str
    rates: np.ndarray
    max_rate: float
    modules: list[nn.Module]
    bases: list[float]
    current: float = field(default=float("nan"))

    def apply(self, rate: float) -> None:
        if rate == self.current:
            return
        scale = rate / self.max_rate
        for module, base in zip(self.modules, self.bases, strict=True):
            _set_rate(module, self.kind, base * scale)
        self.current = rate


class DropController:
    """Scale every dropout / stochastic-depth module of ``model`` by a per-iteration schedule.

    ``schedules`` maps ``'dropout'`` and/or ``'drop_path'`` to ``(rates, max_rate)``: the per-iteration rate
    array and the rate the model was built with. Kinds without a schedule are left untouched.
    ``drop_path_rule`` picks the per-module base of stochastic depth (see ``DROP_PATH_RULES``);
    ``tensor_rates`` swaps the scheduled modules for their tensor-rate twins (for ``torch.compile``).
    """

    def __init__(
        self,
        model: nn.Module,
        schedules: dict[str, tuple[Sequence[float], float]],
        drop_path_rule: str = "timm",
        tensor_rates: bool = False,
    ):
        if drop_path_rule not in DROP_PATH_RULES:
            raise UserInputError("backbone.drop_path_rule", f"'{drop_path_rule}' is not one of {DROP_PATH_RULES}")
        self._scheduled: list[_Scheduled] = []
        model_name = getattr(model, "default_cfg", {}).get("architecture", type(model).__name__)
        for kind, (rates, max_rate) in schedules.items():
            if kind not in _RATE_ATTRIBUTE:
                raise ValueError(f"unknown drop kind '{kind}'; expected one of {sorted(_RATE_ATTRIBUTE)}")
            rates = np.asarray(rates, dtype=np.float64)
            if max_rate <= 0:
                raise ValueError(f"{kind}: build the model with the regime's maximum rate > 0, got {max_rate}")
            named = drop_modules(model, kind)
            if not block_drop_modules(model, kind):
                hint = (
                    "; schedule stochastic depth instead (regimes standard_sd, early_sd, late_sd)"
                    if kind == DROPOUT
                    else ""
                )
                raise UserInputError(
                    kind,
                    f"model '{model_name}' has no {kind} module inside its blocks at rate {max_rate}{hint}",
                )
            bases = [_rate(m, kind) for _, m in named]
            if kind == DROP_PATH and drop_path_rule == "linear":
                bases = _linear_by_block([name for name, _ in named], float(max_rate))
            modules = [_swap_for_tensor_rate(model, n, kind) if tensor_rates else m for n, m in named]
            self._scheduled.append(
                _Scheduled(kind=kind, rates=rates, max_rate=float(max_rate), modules=modules, bases=bases)
            )

    def step(self, iteration: int) -> dict[str, float]:
        """Set every module's rate for ``iteration`` (clamped to the last one) and return the current rates."""
        for scheduled in self._scheduled:
            scheduled.apply(float(scheduled.rates[min(iteration, len(scheduled.rates) - 1)]))
        return self.current_rates()

    def current_rates(self) -> dict[str, float]:
        return {s.kind: s.current for s in self._scheduled}

    def module_rates(self) -> dict[str, list[tuple[float, float]]]:
        """For each scheduled kind, ``(base, current)`` per module: for tests and logging."""
        return {
            s.kind: [(base, _rate(m, s.kind)) for m, base in zip(s.modules, s.bases, strict=True)]
            for s in self._scheduled
        }
