"""Exported backbones: weights as safetensors (plain tensors) plus a JSON sidecar that rebuilds the model."""

import json
from pathlib import Path

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from dropbench.core.errors import UserInputError
from dropbench.core.io import atomic_write, atomic_write_json
from dropbench.core.models import create_timm_model

WEIGHTS_FILE = "backbone.safetensors"
SIDECAR_FILE = "backbone.json"
EXPORT_FORMAT = "dropbench-backbone/1"


def export_backbone(model: nn.Module, export_dir: str | Path, sidecar: dict) -> Path:
    """Write ``model``'s weights and the sidecar (timm name, kwargs, num_classes, provenance) atomically."""
    export_dir = Path(export_dir)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write(export_dir / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    atomic_write_json(export_dir / SIDECAR_FILE, {"format": EXPORT_FORMAT, "weights": WEIGHTS_FILE, **sidecar})
    return export_dir


def read_sidecar(export_dir: str | Path) -> dict:
    path = Path(export_dir) / SIDECAR_FILE
    if not path.is_file():
        raise UserInputError("backbone", f"'{export_dir}' holds no {SIDECAR_FILE}; pass a pretraining export folder")
    try:
        sidecar = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserInputError("backbone", f"'{path}' is not valid JSON ({err.msg})") from None
    for key in ("model", "kwargs", "num_classes"):
        if key not in sidecar:
            raise UserInputError(f"backbone.{key}", f"'{path}' lacks '{key}'; re-export the backbone")
    if not timm.is_model(sidecar["model"]):
        raise UserInputError("backbone.model", f"'{path}' names unknown timm model '{sidecar['model']}'")
    return sidecar


def read_weights(export_dir: str | Path) -> dict[str, torch.Tensor]:
    path = Path(export_dir) / WEIGHTS_FILE
    try:
        return load_file(str(path))
    except (FileNotFoundError, SafetensorError, OSError) as err:
        raise UserInputError("backbone", f"cannot read weights '{path}' ({err}); re-export the backbone") from None


def load_exported_model(export_dir: str | Path, **model_kwargs) -> tuple[nn.Module, dict]:
    """Rebuild the exported timm classifier and load every tensor strictly; returns ``(model, sidecar)``."""
    sidecar = read_sidecar(export_dir)
    model = create_timm_model(
        sidecar["model"], dict(sidecar["kwargs"], num_classes=sidecar["num_classes"], **model_kwargs)
    )
    try:
        missing, unexpected = model.load_state_dict(read_weights(export_dir), strict=False)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise UserInputError("backbone", f"weights in '{export_dir}' do not fit {sidecar['model']}: {first}") from None
    if missing or unexpected:
        raise UserInputError(
            "backbone",
            f"weights in '{export_dir}' do not match {sidecar['model']}: "
            f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})",
        )
    return model, sidecar
