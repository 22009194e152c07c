"""``dropbench import``: released weights as a normal export folder (``backbone.safetensors`` + ``backbone.json``).

- ``official``: a checkpoint of the authors' code (facebookresearch/dropout): a pickle of ``{'model', 'optimizer',
  'epoch', 'scaler', 'args', ['model_ema']}``. It is read with torch's weights-only unpickler, which admits tensors,
  plain containers and numbers, plus ``argparse.Namespace`` for ``args``; a file naming any other global is refused
  before anything runs or is written. The authors' model names map to the paper's backbone configs, their key
  layouts convert with timm's own ``checkpoint_filter_fn`` (ConvNeXt's original layout, Swin's older one), and every
  tensor must load. Regime, recipe and seed are read from ``args``.
- ``timm``: a timm architecture with weights from a local file or the local Hugging Face cache (nothing downloaded).
- ``file``: any state dict for a backbone config.
"""

import argparse
import dataclasses
import os
import pickle
from pathlib import Path

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from dropbench.core.errors import UserInputError, did_you_mean
from dropbench.core.export import ExportSidecar, export_backbone
from dropbench.core.identity import Part, RunIdentity, StageName
from dropbench.core.models import BackboneConfig
from dropbench.core.readers import IMAGENET_1K
from dropbench.pretrain.schedules import DropSetting

# The authors' model names → the paper's backbone configs (configs/backbones/), same widths and depths.
OFFICIAL_BACKBONES = {
    "vit_tiny": "vit_tiny",
    "vit_base": "vit_base",
    "mixer_s32": "mixer_s32",
    "mixer_b16": "mixer_b16",
    "swin_femto": "swin_femto",
    "convnext_femto": "convnext_femto",
}

# How the authors' code evaluates (DeiT/ConvNeXt lineage): resize to 256/224 of the crop, centre crop, bicubic,
# ImageNet mean and std.
OFFICIAL_EVAL = {
    "crop_pct": 0.875,
    "interpolation": "bicubic",
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}


def load_untrusted(path: Path, field: str) -> dict:
    """A checkpoint someone else made, unpickled with torch's weights-only unpickler (``argparse.Namespace``
    admitted for the authors' ``args``): any other global is refused and never executed."""
    if not path.is_file():
        raise UserInputError(field, f"no such file '{path}'")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        named = next((line.strip() for line in str(err).splitlines() if "GLOBAL" in line), "a non-data object")
        raise UserInputError(field, f"'{path}' is refused: it names {named}, not plain tensors and values") from None
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        raise UserInputError(field, f"cannot read '{path}' ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserInputError(field, f"'{path}' holds a {type(data).__name__}, not a checkpoint dictionary")
    return data


def read_weights(path: Path, field: str) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (weights-only); a checkpoint's ``model`` /
    ``state_dict`` entry is taken when the file wraps it."""
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise UserInputError(field, f"cannot read '{path}' ({err})") from None
    data = load_untrusted(path, field)
    for key in ("model", "state_dict"):
        if isinstance(data.get(key), dict):
            data = data[key]
    return data


def _load_strictly(model: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    module = __import__(type(model).__module__, fromlist=["checkpoint_filter_fn"])
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    if filter_fn is not None:
        weights = filter_fn(weights, model)
    result = model.load_state_dict(weights, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise UserInputError(
            "weights",
            f"'{source}' does not fit {type(model).__name__}: {len(result.missing_keys)} tensors missing "
            f"(e.g. {result.missing_keys[:2]}), {len(result.unexpected_keys)} unexpected "
            f"(e.g. {result.unexpected_keys[:2]})",
        )


def _args_value(args: argparse.Namespace | dict, name: str, default=None):
    return (args.get(name, default) if isinstance(args, dict) else getattr(args, name, default)) or default


def regime_from_args(args) -> str:
    """The shipped regime whose schedule the authors' ``args`` describe, or a one-line error naming them."""
    from dropbench.core.configs import known_configs
    from dropbench.pretrain.config import Regime

    epochs = int(_args_value(args, "epochs", 300))
    dropout, drop_path = float(_args_value(args, "dropout", 0.0)), float(_args_value(args, "drop_path", 0.0))
    mode, shape = _args_value(args, "drop_mode", "standard"), _args_value(args, "drop_schedule", "constant")
    cutoff = int(_args_value(args, "cutoff_epoch", 0))
    described = (
        f"dropout={dropout}, drop_path={drop_path}, drop_mode={mode}, drop_schedule={shape}, "
        f"cutoff_epoch={cutoff}, epochs={epochs}"
    )
    rates = {"dropout": dropout, "drop_path": drop_path}
    wanted = {kind: _schedule_of(DropSetting(rate, mode, shape, cutoff), epochs) for kind, rate in rates.items()}
    for name in known_configs("regimes"):
        regime = Regime.load(name)
        if regime.train and all(_schedule_of(getattr(regime, kind), epochs) == wanted[kind] for kind in wanted):
            return regime.name
    raise UserInputError("args", f"no shipped regime has {described}; pass --regime")


def _schedule_of(setting: DropSetting | None, epochs: int) -> DropSetting | None:
    """What a run of ``epochs`` gets from ``setting``: None without one or with a rate of 0, the rate rounded to
    tell floats apart only where they differ."""
    if setting is None or setting.rate == 0:
        return None
    run = setting.for_run(epochs)
    return dataclasses.replace(run, rate=round(run.rate, 9))


def recipe_from_args(args) -> str:
    """``basic`` or ``improved`` from the authors' epochs, mixup and cutmix; anything else is named."""
    from dropbench.pretrain.config import Recipe

    epochs = int(_args_value(args, "epochs", 0))
    mixup, cutmix = float(_args_value(args, "mixup", 0.0)), float(_args_value(args, "cutmix", 0.0))
    for name in ("basic", "improved"):
        recipe = Recipe.load(name)
        if (recipe.epochs, recipe.mixup, recipe.cutmix) == (epochs, mixup, cutmix):
            return name
    raise UserInputError(
        "args", f"epochs={epochs}, mixup={mixup}, cutmix={cutmix} match no shipped recipe; pass --recipe"
    )


def _write(model: nn.Module, backbone: BackboneConfig, out: Path, identity: RunIdentity, **provenance) -> Path:
    """Export ``model`` with a sidecar that names ``identity``; ``provenance``: the import's own sidecar fields."""
    head = model.get_classifier()
    num_classes = head.out_features if isinstance(head, nn.Linear) else int(getattr(model, "num_classes", 0))
    return export_backbone(model, out, ExportSidecar.of_run(backbone, identity, num_classes, **provenance))


def import_official(
    checkpoint: Path,
    out: Path,
    ema: bool = False,
    regime: str | None = None,
    recipe: str | None = None,
    seed: int | None = None,
) -> Path:
    """An authors' checkpoint as an export; regime, recipe and seed from its ``args`` unless given."""
    from dropbench.pretrain.config import Recipe, Regime, pretrain_identity

    data = load_untrusted(checkpoint, "checkpoint")
    args = data.get("args")
    if args is None:
        raise UserInputError("checkpoint", f"'{checkpoint}' has no 'args'; is it a checkpoint of the authors' code?")
    key = "model_ema" if ema else "model"
    if not isinstance(data.get(key), dict):
        raise UserInputError("--ema" if ema else "checkpoint", f"'{checkpoint}' holds no '{key}' weights")
    name = _args_value(args, "model")
    if name not in OFFICIAL_BACKBONES:
        raise UserInputError(
            "args.model", f"'{name}' is not one of the released models{did_you_mean(str(name), OFFICIAL_BACKBONES)}"
        )
    backbone = BackboneConfig.load(OFFICIAL_BACKBONES[name])
    regime_config = Regime.load(regime or regime_from_args(args))
    recipe_config = Recipe.load(
        recipe or recipe_from_args(args), {"seed": seed if seed is not None else int(_args_value(args, "seed", 0))}
    )
    weights = data[key]
    head = next((v for k, v in weights.items() if k in ("head.weight", "head.fc.weight")), None)
    model = backbone.create_model(head.shape[0] if head is not None else 1000)
    _load_strictly(model, weights, str(checkpoint))
    identity = pretrain_identity(backbone, regime_config, recipe_config, IMAGENET_1K)
    epochs = int(_args_value(args, "epochs", 0))
    return _write(
        model,
        backbone,
        out,
        identity,
        epochs=epochs,
        imported_from=str(checkpoint),
        ema=ema,
        eval_transform=OFFICIAL_EVAL,
    )


def hf_cache_file(name: str) -> Path | None:
    """``model.safetensors`` of ``timm/<name>`` in the local Hugging Face cache, if it is there."""
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    snapshots = home / "hub" / f"models--timm--{name}" / "snapshots"
    found = sorted(snapshots.glob("*/model.safetensors")) if snapshots.is_dir() else []
    return found[-1] if found else None


def _plain_identity(backbone: BackboneConfig, regime: str, recipe: str, seed: int, source: str) -> RunIdentity:
    return RunIdentity(
        backbone=backbone.name,
        regime=regime,
        recipe=recipe,
        seed=seed,
        stage=StageName.PRETRAIN,
        task="classification",
        dataset=IMAGENET_1K,
        protocol="from_scratch",
        parts={
            "backbone": Part.of(backbone.settings()),
            "regime": Part.of({"name": regime}),
            "recipe": Part.of({"name": recipe, "weights": source}),
        },
    )


def import_weights(
    backbone_value: str,
    weights: Path | None,
    out: Path,
    regime: str,
    recipe: str,
    seed: int,
) -> Path:
    """A backbone config (or timm name) with weights from a file or, for a timm name, the local HF cache."""
    if weights is None:
        weights = hf_cache_file(backbone_value)
        if weights is None:
            home = os.environ.get("HF_HOME", "~/.cache/huggingface")
            raise UserInputError(
                "--weights",
                f"no local weights for '{backbone_value}': looked in {home}/hub/models--timm--{backbone_value}; "
                "nothing is downloaded, pass --weights FILE",
            )
    if not timm.is_model(backbone_value) and not Path(backbone_value).exists() and "/" in backbone_value:
        raise UserInputError("--backbone", f"no such backbone file '{backbone_value}'")
    backbone = BackboneConfig.load(backbone_value)
    state = read_weights(Path(weights), "--weights")
    head = next(
        (v for k, v in state.items() if k in ("head.weight", "head.fc.weight", "fc.weight", "classifier.weight")), None
    )
    model = backbone.create_model(head.shape[0] if head is not None else 1000)
    _load_strictly(model, state, str(weights))
    identity = _plain_identity(backbone, regime, recipe, seed, Path(weights).name)
    return _write(model, backbone, out, identity, imported_from=str(weights))
