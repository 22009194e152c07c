"""Exported backbones: weights as safetensors (plain tensors) plus a JSON sidecar that rebuilds the model."""

import dataclasses
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import nn

from dropbench.core.errors import UserInputError
from dropbench.core.identity import LEGACY, Part, RunIdentity, StageName
from dropbench.core.io import atomic_write_many, json_text
from dropbench.core.models import BackboneConfig, create_timm_model
from dropbench.core.version import code_version

WEIGHTS_FILE = "backbone.safetensors"
SIDECAR_FILE = "backbone.json"
EXPORT_FORMAT = "dropbench-backbone/1"


@dataclass(frozen=True)
class ExportSidecar:
    """What ``backbone.json`` says of an exported backbone: how to rebuild it (timm name, kwargs, head size), and
    where it comes from. Pretraining and imports write every provenance field; an older sidecar may lack them."""

    model: str  # the timm model
    kwargs: dict
    num_classes: int
    input_size: int | None = None
    backbone: str | None = None  # the backbone config's name
    regime: str | None = None
    recipe: str | None = None
    seed: int = 0
    dataset: str | None = None
    epochs: int | None = None
    val_top1: float | None = None
    code_version: str | None = None
    config_hash: str | None = None
    identity: dict | None = None  # the pretraining run's identity (RunIdentity.to_json)
    imported_from: str | None = None  # the checkpoint an import read
    ema: bool | None = None  # whether an import took the checkpoint's EMA weights
    eval_transform: dict | None = None  # an import's evaluation transform: crop_pct, interpolation, mean, std
    format: str = EXPORT_FORMAT
    weights: str = WEIGHTS_FILE
    write_id: str | None = None  # also in the weights' metadata: weights and a sidecar of two writes are refused

    @classmethod
    def of_run(cls, backbone: BackboneConfig, identity: RunIdentity, num_classes: int, **fields) -> "ExportSidecar":
        """The sidecar of ``backbone`` exported by the run ``identity``; ``fields`` add to or replace its own."""
        named = {
            "model": backbone.model,
            "kwargs": backbone.kwargs,
            "num_classes": num_classes,
            "input_size": backbone.input_size,
            "backbone": backbone.name,
            "regime": identity.regime,
            "recipe": identity.recipe,
            "seed": identity.seed,
            "dataset": identity.dataset,
            "code_version": code_version(),
            "config_hash": identity.digest,
            "identity": identity.to_json(),
        }
        return cls(**(named | fields))

    @property
    def name(self) -> str:
        """The backbone's name in logs: its config's, else the timm model's."""
        return self.backbone or self.model

    @property
    def image_size(self) -> int:
        """The input size it was trained at: the sidecar's, else the model's ``img_size``, else 224."""
        return int(self.input_size or self.kwargs.get("img_size") or 224)

    def pretraining_identity(self) -> RunIdentity:
        """The identity of the run that made it; an older sidecar's is rebuilt from its fields."""
        if isinstance(self.identity, dict):
            return RunIdentity.from_json(self.identity)
        legacy = Part(str(self.config_hash or LEGACY))
        return RunIdentity(
            backbone=self.name,
            regime=self.regime or "unknown",
            recipe=self.recipe or "unknown",
            seed=int(self.seed),
            stage=StageName.PRETRAIN,
            task="classification",
            dataset=str(self.dataset or "unknown"),
            protocol="from_scratch",
            parts={"backbone": legacy, "regime": legacy, "recipe": legacy},
        )

    def to_json(self) -> dict:
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}

    @classmethod
    def from_json(cls, data: dict, path: Path) -> "ExportSidecar":
        for key in ("model", "kwargs", "num_classes"):
            if key not in data:
                raise UserInputError(f"backbone.{key}", f"'{path}' lacks '{key}'; re-export the backbone")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


def safetensors_writer(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Callable[[str], None]:
    """What ``atomic_write`` calls to write tensors as safetensors, through Python's file writes (``save_file``'s own
    I/O errors are no ``OSError``: a full disk would not read as one)."""
    data = save(tensors, metadata=metadata)
    return lambda tmp: Path(tmp).write_bytes(data)


def export_backbone(model: nn.Module, export_dir: str | Path, sidecar: ExportSidecar) -> Path:
    """Write ``model``'s weights and its sidecar atomically and together: a write cut short leaves both as they were."""
    export_dir = Path(export_dir)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    write_id = uuid.uuid4().hex  # a kill between the two renames leaves files of two writes: readers notice
    sidecar_text = json_text(dataclasses.replace(sidecar, write_id=write_id).to_json())
    atomic_write_many(
        {
            export_dir / WEIGHTS_FILE: safetensors_writer(tensors, {"format": "pt", "write_id": write_id}),
            export_dir / SIDECAR_FILE: lambda tmp: Path(tmp).write_text(sidecar_text),
        }
    )
    return export_dir


def read_sidecar(export_dir: str | Path) -> ExportSidecar:
    path = Path(export_dir) / SIDECAR_FILE
    if not path.is_file():
        raise UserInputError("backbone", f"'{export_dir}' holds no {SIDECAR_FILE}; pass a pretraining export folder")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserInputError("backbone", f"'{path}' is not valid JSON ({err.msg})") from None
    if not isinstance(data, dict):
        raise UserInputError("backbone", f"'{path}' must hold a JSON object")
    sidecar = ExportSidecar.from_json(data, path)
    if not timm.is_model(sidecar.model):
        raise UserInputError("backbone.model", f"'{path}' names unknown timm model '{sidecar.model}'")
    return sidecar


def read_weights(export_dir: str | Path) -> dict[str, torch.Tensor]:
    path = Path(export_dir) / WEIGHTS_FILE
    try:
        return load_file(str(path))
    except (FileNotFoundError, SafetensorError, OSError) as err:
        raise UserInputError("backbone", f"cannot read weights '{path}' ({err}); re-export the backbone") from None


def check_one_write(export_dir: str | Path) -> None:
    """Refuse weights and a sidecar of two writes (checked once the weights are known to fit the model, which says
    more where they do not). Weights put there by hand carry no write id and pass."""
    path = Path(export_dir) / WEIGHTS_FILE
    with safe_open(str(path), "pt") as weights:
        write_id = (weights.metadata() or {}).get("write_id")
    expected = read_sidecar(export_dir).write_id
    if expected is not None and write_id is not None and write_id != expected:
        raise UserInputError(
            "backbone",
            f"'{path}' and its {SIDECAR_FILE} are of two writes (an export cut short, or weights copied from "
            "another export); export it again",
        )


def load_exported_model(export_dir: str | Path, **model_kwargs) -> tuple[nn.Module, ExportSidecar]:
    """Rebuild the exported timm classifier and load every tensor strictly; returns ``(model, sidecar)``."""
    sidecar = read_sidecar(export_dir)
    model = create_timm_model(sidecar.model, dict(sidecar.kwargs, num_classes=sidecar.num_classes, **model_kwargs))
    try:
        missing, unexpected = model.load_state_dict(read_weights(export_dir), strict=False)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise UserInputError("backbone", f"weights in '{export_dir}' do not fit {sidecar.model}: {first}") from None
    if missing or unexpected:
        raise UserInputError(
            "backbone",
            f"weights in '{export_dir}' do not match {sidecar.model}: "
            f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})",
        )
    check_one_write(export_dir)
    return model, sidecar
