"""One adapter from any exported timm backbone to multi-scale NCHW features for mmdet and mmseg.

``TimmBackbone`` rebuilds the exported model, loads every tensor strictly (a tensor left unloaded is an
error, not a warning), drops the classifier, and returns one feature map per requested output stride:
a native map of that stride passes through; otherwise the nearest native map is resampled — learned 2×
up-sampling steps or max-pooling. For plain ViTs and MLP-Mixers, whose maps all share one stride, this is
the ViTDet simple feature pyramid built from the last map; for Swin and ConvNeXt it is mostly identity.
Input size: ViT and Swin are built with ``dynamic_img_size`` (position embeddings resampled to each input);
models that fix their token count (MLP-Mixer) are rebuilt for ``img_size`` with their token-mixing weights
resampled from the pretraining grid. Any input size works: an image is zero-padded at the bottom and right to the
multiple the backbone needs (its total stride, which covers a patch size and Swin's windows, and the coarsest
output stride), or to a fixed-size model's own size, and every output map is cropped back to
``ceil(input / stride)``, so heads and the mm* resizing of predictions see the image, not the padding.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed
from torch import nn

from dropbench.core.errors import UserInputError
from dropbench.core.export import read_sidecar, read_weights
from dropbench.core.models import create_timm_model

# Constructor keywords that let a timm model take any input size; models without them are skipped over.
_DYNAMIC_SIZE_KWARGS = {"dynamic_img_size": True, "strict_img_size": False}


def _grid(n: int) -> tuple[int, int] | None:
    side = math.isqrt(n)
    return (side, side) if side * side == n else None


def resample_token_dims(tensor: torch.Tensor, target_shape: torch.Size) -> torch.Tensor | None:
    """Interpolate every dimension that indexes a square token grid to the target grid (bilinear).

    Returns None when the shapes differ in a way that is not a change of token grid. An input dimension over
    tokens (a token-mixing weight's columns) is rescaled by ``old / new`` tokens to keep activations' scale.
    """
    if tensor.dim() != len(target_shape):
        return None
    out = tensor.float()
    for dim, (old, new) in enumerate(zip(tensor.shape, target_shape, strict=True)):
        if old == new:
            continue
        old_grid, new_grid = _grid(old), _grid(new)
        if old_grid is None or new_grid is None:
            return None
        moved = out.movedim(dim, -1)
        lead = moved.shape[:-1]
        grid = moved.reshape(-1, 1, *old_grid)
        grid = F.interpolate(grid, size=new_grid, mode="bilinear", align_corners=False)
        moved = grid.reshape(*lead, new)
        if dim == tensor.dim() - 1 and tensor.dim() == 2:  # a linear layer's input over tokens
            moved = moved * (old / new)
        out = moved.movedim(-1, dim)
    return out.to(tensor.dtype)


def assign_levels(native_strides: Sequence[float], out_strides: Sequence[int]) -> list[int]:
    """For each output stride, the native map it is made from: one of the nearest stride (in octaves, the deeper on
    a tie). Where several native maps share that stride — a plain ViT's blocks — the outputs that use them take
    evenly spaced ones, the shallowest for the finest output and the last block for the coarsest (the layout of
    mmseg's ViT, BEiT and MAE configs); a single output takes the last."""
    nearest = []
    for stride in out_strides:
        distance = [round(abs(math.log2(s / stride)), 6) for s in native_strides]
        nearest.append(native_strides[max(range(len(distance)), key=lambda i: (-distance[i], i))])
    levels = [0] * len(out_strides)
    for native_stride in set(nearest):
        outputs = sorted((i for i, s in enumerate(nearest) if s == native_stride), key=lambda i: out_strides[i])
        candidates = [j for j, s in enumerate(native_strides) if s == native_stride]
        for rank, output in enumerate(outputs):
            levels[output] = candidates[round((rank + 1) * len(candidates) / len(outputs)) - 1]
    return levels


class _Upsample(nn.Sequential):
    """``steps`` learned 2× up-sampling steps (ViTDet), halving channels each step."""

    def __init__(self, channels: int, steps: int):
        layers: list[nn.Module] = []
        for step in range(steps):
            out = max(channels // 2, 8)
            layers.append(nn.ConvTranspose2d(channels, out, kernel_size=2, stride=2))
            if step < steps - 1:
                layers += [nn.GroupNorm(1, out), nn.GELU()]
            channels = out
        super().__init__(*layers)
        self.out_channels = channels


class TimmBackbone(nn.Module):
    """Multi-scale features from a ``dropbench pretrain`` export, for mm* detectors and segmentors.

    Args:
        export: the export folder (``backbone.safetensors`` + ``backbone.json``).
        out_strides: the output strides to produce, e.g. (4, 8, 16, 32) for an FPN.
        drop_path_rate: stochastic depth while fine-tuning (timm's per-block rule).
        img_size: the fine-tuning input size, needed only by models without dynamic input size (MLP-Mixer).
        init_cfg: accepted for mm* compatibility; the export's weights are the initialisation.
    """

    def __init__(
        self,
        export: str,
        out_strides: Sequence[int] = (4, 8, 16, 32),
        drop_path_rate: float = 0.0,
        img_size: int | Sequence[int] | None = None,
        init_cfg: dict | None = None,
    ):
        super().__init__()
        sidecar = read_sidecar(export)
        self.export, self.sidecar = str(export), sidecar
        kwargs = dict(sidecar["kwargs"], num_classes=sidecar["num_classes"])
        optional = dict(_DYNAMIC_SIZE_KWARGS, drop_path_rate=drop_path_rate)
        model = create_timm_model(sidecar["model"], kwargs, optional)
        pretrain_size = int(sidecar.get("input_size", kwargs.get("img_size", 224)))
        if img_size is not None and not getattr(model, "dynamic_img_size", False) and "img_size" in kwargs:
            model = create_timm_model(sidecar["model"], dict(kwargs, img_size=img_size), optional)
        self._load_strictly(model, read_weights(export))
        probe_size = img_size if img_size is not None else pretrain_size
        probe_hw = tuple(probe_size) if isinstance(probe_size, Sequence) else (probe_size, probe_size)

        model.eval()
        with torch.no_grad():
            native = model.forward_intermediates(torch.zeros(1, 3, *probe_hw), intermediates_only=True)
        native_strides = [probe_hw[0] / f.shape[-2] for f in native]
        native_channels = [f.shape[1] for f in native]

        self.levels, resamplers, self.out_channels = assign_levels(native_strides, out_strides), nn.ModuleList(), []
        for stride, level in zip(out_strides, self.levels, strict=True):
            octaves = round(math.log2(native_strides[level] / stride))
            if octaves > 0:
                resampler = _Upsample(native_channels[level], octaves)
                channels = resampler.out_channels
            elif octaves < 0:
                resampler = nn.MaxPool2d(kernel_size=2**-octaves, stride=2**-octaves)
                channels = native_channels[level]
            else:
                resampler, channels = nn.Identity(), native_channels[level]
            resamplers.append(resampler)
            self.out_channels.append(channels)
        self.out_strides = tuple(out_strides)
        self.native_strides = tuple(native_strides)
        self.size_multiple = math.lcm(round(max(native_strides)), max(out_strides))
        self.fixed_size = _fixed_input_size(model)
        self.resamplers = resamplers
        self.indices = sorted(set(self.levels))
        if hasattr(model, "prune_intermediate_layers"):
            model.prune_intermediate_layers(self.indices, prune_norm=True, prune_head=True)
        else:
            model.reset_classifier(0)
        self.model = model.train()

    @staticmethod
    def _load_strictly(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
        expected = model.state_dict()
        missing = sorted(expected.keys() - weights.keys())
        unexpected = sorted(weights.keys() - expected.keys())
        if missing or unexpected:
            raise UserInputError(
                "backbone",
                f"the export's weights do not fit the model: {len(missing)} tensors not loaded (e.g. {missing[:2]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}); re-export the backbone",
            )
        adapted = {}
        for name, tensor in weights.items():
            target = expected[name].shape
            if tensor.shape != target:
                tensor = resample_token_dims(tensor, target)
                if tensor is None:
                    raise UserInputError(
                        "backbone",
                        f"tensor '{name}' has shape {tuple(weights[name].shape)}, the model needs {tuple(target)}",
                    )
            adapted[name] = tensor
        model.load_state_dict(adapted, strict=True)

    def init_weights(self) -> None:
        """The weights come from the export (mm* calls this after building the model)."""

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The input size the model is run at for an image of ``height × width``."""
        if self.fixed_size is not None:
            if height > self.fixed_size[0] or width > self.fixed_size[1]:
                raise ValueError(
                    f"a {height}×{width} input exceeds the {self.fixed_size[0]}×{self.fixed_size[1]} this "
                    f"{self.sidecar['model']} was built for (its token count is fixed): raise model.backbone.img_size "
                    "or use slide inference (model.test_cfg mode='slide') with crops no larger"
                )
            return self.fixed_size
        multiple = self.size_multiple
        return math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        height, width = images.shape[-2:]
        padded_height, padded_width = self.padded_size(height, width)
        if (padded_height, padded_width) != (height, width):
            images = F.pad(images, (0, padded_width - width, 0, padded_height - height))
        native = self.model.forward_intermediates(images, indices=self.indices, intermediates_only=True)
        by_level = dict(zip(self.indices, native, strict=True))
        return tuple(
            resample(by_level[level])[..., : math.ceil(height / stride), : math.ceil(width / stride)]
            for level, resample, stride in zip(self.levels, self.resamplers, self.out_strides, strict=True)
        )


def _fixed_input_size(model: nn.Module) -> tuple[int, int] | None:
    """The one input size a model takes (MLP-Mixer: its token count is part of the weights), else None."""
    patch_embed = next((m for m in model.modules() if isinstance(m, PatchEmbed)), None)  # Mixer calls it stem
    if patch_embed is None or not getattr(patch_embed, "strict_img_size", False):
        return None
    if getattr(model, "dynamic_img_size", False) or getattr(patch_embed, "dynamic_img_pad", False):
        return None
    return tuple(patch_embed.img_size)


def register(registry) -> None:
    """Register ``TimmBackbone`` in an mm* ``MODELS`` registry (mmdet's or mmseg's), once."""
    if registry.get("TimmBackbone") is None:
        registry.register_module(module=TimmBackbone)
