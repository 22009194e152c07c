"""The device side of the training input (timm's prefetcher idea, in our one loop): loaders hand over uint8 batches
and :class:`DeviceAugment` finishes them where the model runs — float conversion, normalisation and random erasing
for every data source, and for images held in memory also the recipe's random resized crop, padding and flip, as one
batched resampling instead of a PIL transform per image."""

import math

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.random_erasing import RandomErasing

RATIO = (3 / 4, 4 / 3)  # timm's and torchvision's default aspect-ratio range of a random resized crop
_ATTEMPTS = 10
CROP_DRAWS = 2 * _ATTEMPTS + 2  # random numbers per image: area and aspect per attempt, then top and left


def crop_boxes(uniform: torch.Tensor, height: int, width: int, scale: tuple[float, float], ratio=RATIO) -> torch.Tensor:
    """``(n, 4)`` crop boxes ``(top, left, height, width)`` drawn as torchvision's ``RandomResizedCrop.get_params``
    draws them (area fraction uniform in ``scale``, log-uniform aspect ratio, 10 attempts, then the central crop of
    the nearest allowed ratio), from ``uniform``: ``(n, CROP_DRAWS)`` numbers in [0, 1), one row per image."""
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * uniform[:, :_ATTEMPTS])
    log_ratio = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * uniform[:, _ATTEMPTS : 2 * _ATTEMPTS]
    aspect = torch.exp(log_ratio)
    w = torch.sqrt(target * aspect).round().long()
    h = torch.sqrt(target / aspect).round().long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.long().argmax(dim=1)  # the first attempt that fits (0 where none does)
    w, h = w.gather(1, first[:, None])[:, 0], h.gather(1, first[:, None])[:, 0]
    found = fits.any(dim=1)
    in_ratio = width / height
    if in_ratio < min(ratio):
        fallback_w, fallback_h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fallback_w, fallback_h = round(height * max(ratio)), height
    else:
        fallback_w, fallback_h = width, height
    w = torch.where(found, w, fallback_w)
    h = torch.where(found, h, fallback_h)
    top = (uniform[:, -2] * (height - h + 1)).floor().long()
    left = (uniform[:, -1] * (width - w + 1)).floor().long()
    top = torch.where(found, top, (height - h) // 2)
    left = torch.where(found, left, (width - w) // 2)
    return torch.stack([top, left, h, w], dim=1)


def to_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor (the draws) on ``device`` without waiting for it: from pinned memory, asynchronously."""
    if device.type != "cuda" or values.device.type != "cpu":
        return values.to(device)
    return values.pin_memory().to(device, non_blocking=True)


def resized_crops(
    images: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor, interpolation: str
) -> torch.Tensor:
    """Each image's box resampled to ``size × size`` (flipped left-right where ``flip``), in one ``grid_sample``.

    The affine map takes output pixel centres to the box's, as resizing a crop does, and sampling stays inside the
    box (its edge pixels repeat, as they do for a cropped image): the same values as cropping, then resizing."""
    n, _, height, width = images.shape
    boxes = to_device(boxes.float(), images.device)
    top, left, h, w = boxes.unbind(dim=1)
    sign = 1.0 - 2.0 * to_device(flip.float(), images.device)
    theta = torch.zeros(n, 2, 3, device=images.device)
    theta[:, 0, 0] = sign * w / width
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
    for axis, (start, extent, length) in enumerate(((left, w, width), (top, h, height))):
        low = ((2 * start + 1) / length - 1)[:, None, None]  # the box's first and last pixel centres
        high = ((2 * (start + extent) - 1) / length - 1)[:, None, None]
        grid[..., axis] = torch.maximum(torch.minimum(grid[..., axis], high), low)
    out = F.grid_sample(images.float(), grid, mode=interpolation, padding_mode="border", align_corners=False)
    return out.clamp_(0, 255) if interpolation == "bicubic" else out


class DeviceAugment:
    """Finishes a uint8 ``(N, C, H, W)`` batch on its device as the recipe's timm transform would an image.

    With ``geometric`` (images held in memory, loaded raw) it first pads, crops and flips the batch; grey images
    become RGB after the resampling (three times less work than before it)."""

    def __init__(self, recipe, input_size: int, device: torch.device, geometric: bool, channels_last: bool = False):
        self.recipe, self.input_size, self.geometric = recipe, input_size, geometric
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.mean = torch.tensor(IMAGENET_DEFAULT_MEAN, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(IMAGENET_DEFAULT_STD, device=device).view(1, 3, 1, 1) * 255
        self.erase = (
            RandomErasing(probability=recipe.reprob, mode="const", device=str(device)) if recipe.reprob > 0 else None
        )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.geometric:
            images = self._crop_and_flip(images)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        images = images.float().contiguous()  # a grey batch expanded to RGB is a view: materialised here
        images = images.sub_(self.mean).div_(self.std)  # in place: one float batch allocated, not three
        images = self.erase(images) if self.erase is not None else images
        return images.contiguous(memory_format=self.memory_format)

    def _crop_and_flip(self, images: torch.Tensor) -> torch.Tensor:
        pad = self.recipe.pad
        if pad:
            images = F.pad(images, (pad, pad, pad, pad))
        n, _, height, width = images.shape
        # One row of draws per image from torch's global generator: the same images get the same crops however the
        # batch is split into micro-batches.
        uniform = torch.rand(n, CROP_DRAWS + 1)
        boxes = crop_boxes(uniform[:, :-1], height, width, self.recipe.scale)
        flip = uniform[:, -1] < self.recipe.hflip
        return resized_crops(images, boxes, self.input_size, flip, self.recipe.interpolation)


def geometric_only(recipe) -> bool:
    """Whether the recipe's per-image augmentation is only pad, random resized crop and flip (what
    :class:`DeviceAugment` can do for a whole batch); AutoAugment and colour jitter need the per-image path."""
    return not recipe.aa and not recipe.color_jitter and recipe.interpolation in ("bilinear", "bicubic", "nearest")
