"""One adapter from any exported timm backbone to multi-scale NCHW features for mmdet and mmseg.

``TimmBackbone`` rebuilds the exported model, loads every tensor strictly (a tensor left unloaded is an
error, not a warning), drops the classifier, and returns one feature map per requested output stride:
a native map of that stride passes through; otherwise the nearest native map is resampled — learned 2×
up-sampling steps or max-pooling. For plain ViTs and MLP-Mixers, whose maps all share one stride, this is a simple
feature pyramid: from the last block alone (``plain_blocks="last"``, ViTDet) or from evenly spaced blocks
(``"spaced"``: blocks 2, 5, 8, 11 of 12, as mmseg's ``configs/vit``), up-sampled as ViTDet's pyramid and mmseg's
``Feature2Pyramid`` do (transposed convolutions with a LayerNorm and GELU between steps); for Swin and ConvNeXt it
is mostly identity. ``out_norm`` puts a LayerNorm over channels on every output (the Swin and ConvNeXt detection
and segmentation backbones' ``norm{i}``), so a freshly initialised neck sees normalised maps whatever the
backbone's blocks learned.
Input size: ViT and Swin are built with ``dynamic_img_size`` (position embeddings resampled, Swin's attention masks
built, for each input). Any input size works: an image is zero-padded at the bottom and right to the multiple the
backbone needs (its total stride, which covers a patch size and Swin's windows, and the coarsest output stride),
and every output map is cropped back to ``ceil(input / stride)``, so heads and the mm* resizing of predictions see
the image, not the padding. A model whose token count is part of its weights (MLP-Mixer's token-mixing MLP) runs
at its pretraining size only: inputs up to that size are padded to it, larger ones are refused (a task pairs it
with fixed-size crops and sliding-window inference, or refuses it; see ``fixed_input_size``).
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d, PatchEmbed
from torch import nn

from dropbench.core.errors import UserInputError
from dropbench.core.export import check_one_write, read_sidecar, read_weights
from dropbench.core.models import create_timm_model

# Constructor keywords that let a timm model take any input size; models without them are skipped over.
_DYNAMIC_SIZE_KWARGS = {"dynamic_img_size": True, "strict_img_size": False}
PLAIN_BLOCKS = ("spaced", "last")


def assign_levels(
    native_strides: Sequence[float], out_strides: Sequence[int], plain_blocks: str = "spaced"
) -> list[int]:
    """For each output stride, the native map it is made from: one of the nearest stride (in octaves, the deeper on
    a tie). Where several native maps share that stride — a plain ViT's blocks — the outputs that use them take
    the last block (``plain_blocks="last"``, ViTDet), or evenly spaced blocks, the shallowest for the finest output
    and the last block for the coarsest (``"spaced"``: 2, 5, 8, 11 of 12, mmseg's ``configs/vit``); a single output
    takes the last."""
    nearest = []
    for stride in out_strides:
        distance = [round(abs(math.log2(s / stride)), 6) for s in native_strides]
        nearest.append(native_strides[max(range(len(distance)), key=lambda i: (-distance[i], i))])
    levels = [0] * len(out_strides)
    for native_stride in set(nearest):
        outputs = sorted((i for i, s in enumerate(nearest) if s == native_stride), key=lambda i: out_strides[i])
        candidates = [j for j, s in enumerate(native_strides) if s == native_stride]
        for rank, output in enumerate(outputs):
            spaced = round((rank + 1) * len(candidates) / len(outputs)) - 1
            levels[output] = candidates[-1 if plain_blocks == "last" else spaced]
    return levels


class _Upsample(nn.Sequential):
    """``steps`` learned 2× up-sampling steps, halving channels each step, with a LayerNorm over channels and a GELU
    between steps (ViTDet's simple feature pyramid)."""

    def __init__(self, channels: int, steps: int):
        layers: list[nn.Module] = []
        for step in range(steps):
            out = max(channels // 2, 8)
            layers.append(nn.ConvTranspose2d(channels, out, kernel_size=2, stride=2))
            if step < steps - 1:
                layers += [LayerNorm2d(out), nn.GELU()]
            channels = out
        super().__init__(*layers)
        self.out_channels = channels


class TimmBackbone(nn.Module):
    """Multi-scale features from a ``dropbench pretrain`` export, for mm* detectors and segmentors.

    Args:
        export: the export folder (``backbone.safetensors`` + ``backbone.json``).
        out_strides: the output strides to produce, e.g. (4, 8, 16, 32) for an FPN.
        drop_path_rate: stochastic depth while fine-tuning (timm's per-block rule).
        out_norm: a LayerNorm over channels on every output (eps 1e-6, as the ConvNeXt and Swin dense backbones).
        plain_blocks: for backbones whose blocks share one stride, which blocks feed the outputs: ``"last"``
            (ViTDet) or ``"spaced"`` (mmseg's ViT configs).
        init_cfg: accepted for mm* compatibility; the export's weights are the initialisation.
    """

    def __init__(
        self,
        export: str,
        out_strides: Sequence[int] = (4, 8, 16, 32),
        drop_path_rate: float = 0.0,
        out_norm: bool = True,
        plain_blocks: str = "spaced",
        init_cfg: dict | None = None,
    ):
        super().__init__()
        if plain_blocks not in PLAIN_BLOCKS:
            raise UserInputError("model.backbone.plain_blocks", f"'{plain_blocks}' is not one of {PLAIN_BLOCKS}")
        sidecar = read_sidecar(export)
        self.export, self.sidecar = str(export), sidecar
        kwargs = dict(sidecar.kwargs, num_classes=sidecar.num_classes)
        model = create_timm_model(sidecar.model, kwargs, dict(_DYNAMIC_SIZE_KWARGS, drop_path_rate=drop_path_rate))
        self._load_strictly(model, read_weights(export))
        check_one_write(export)
        size = sidecar.image_size

        model.eval()
        with torch.no_grad():
            native = model.forward_intermediates(torch.zeros(1, 3, size, size), intermediates_only=True)
        native_strides = [size / f.shape[-2] for f in native]
        native_channels = [f.shape[1] for f in native]

        self.levels = assign_levels(native_strides, out_strides, plain_blocks)
        self.resamplers, self.norms, self.out_channels = nn.ModuleList(), nn.ModuleList(), []
        for stride, level in zip(out_strides, self.levels, strict=True):
            resampler, channels = _resampler(native_channels[level], round(math.log2(native_strides[level] / stride)))
            self.resamplers.append(resampler)
            self.norms.append(LayerNorm2d(channels, eps=1e-6) if out_norm else nn.Identity())
            self.out_channels.append(channels)
        self.out_strides = tuple(out_strides)
        self.native_strides = tuple(native_strides)
        self.size_multiple = math.lcm(round(max(native_strides)), max(out_strides))
        self.fixed_size = fixed_input_size(model)
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
        for name, tensor in weights.items():
            if tensor.shape != expected[name].shape:
                raise UserInputError(
                    "backbone",
                    f"tensor '{name}' has shape {tuple(tensor.shape)}, the model needs {tuple(expected[name].shape)}",
                )
        model.load_state_dict(weights, strict=True)

    def init_weights(self) -> None:
        """The weights come from the export (mm* calls this after building the model)."""

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The input size the model is run at for an image of ``height × width``."""
        if self.fixed_size is not None:
            if height > self.fixed_size[0] or width > self.fixed_size[1]:
                raise ValueError(
                    f"a {height}×{width} input exceeds the {self.fixed_size[0]}×{self.fixed_size[1]} this "
                    f"{self.sidecar.model} takes (its token count is part of its weights): train on crops of that "
                    "size and infer with model.test_cfg mode='slide' over windows no larger"
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
        outputs = []
        for level, resample, norm, stride in zip(
            self.levels, self.resamplers, self.norms, self.out_strides, strict=True
        ):
            outputs.append(
                norm(resample(by_level[level]))[..., : math.ceil(height / stride), : math.ceil(width / stride)]
            )
        return tuple(outputs)


def _resampler(channels: int, octaves: int) -> tuple[nn.Module, int]:
    """``(module, output channels)`` that takes a map ``octaves`` octaves finer (> 0) or coarser (< 0)."""
    if octaves > 0:
        upsample = _Upsample(channels, octaves)
        return upsample, upsample.out_channels
    if octaves < 0:
        return nn.MaxPool2d(kernel_size=2**-octaves, stride=2**-octaves), channels
    return nn.Identity(), channels


def fixed_input_size(model: nn.Module) -> tuple[int, int] | None:
    """The one input size a model takes (MLP-Mixer: its token count is part of the weights), else None."""
    patch_embed = next((m for m in model.modules() if isinstance(m, PatchEmbed)), None)  # Mixer calls it stem
    if patch_embed is None or not getattr(patch_embed, "strict_img_size", False):
        return None
    if getattr(model, "dynamic_img_size", False) or getattr(patch_embed, "dynamic_img_pad", False):
        return None
    return tuple(patch_embed.img_size)


def backbone_fixed_size(model_name: str, kwargs: dict) -> tuple[int, int] | None:
    """``fixed_input_size`` of a backbone config's model, built on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        model = create_timm_model(model_name, dict(kwargs), dict(_DYNAMIC_SIZE_KWARGS))
    return fixed_input_size(model)


def register(registry) -> None:
    """Register ``TimmBackbone`` in an mm* ``MODELS`` registry (mmdet's or mmseg's), once."""
    if registry.get("TimmBackbone") is None:
        registry.register_module(module=TimmBackbone)
