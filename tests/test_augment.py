"""The device-side training input: the batched crop, flip and normalisation give what timm's per-image transform
gives, and the crop boxes follow torchvision's sampling."""

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import create_transform
from torchvision.transforms import RandomResizedCrop

from dropbench.pretrain.augment import CROP_DRAWS, DeviceAugment, crop_boxes, geometric_only, resized_crops
from dropbench.pretrain.config import Recipe


@pytest.mark.parametrize("flip", [False, True])
def test_resized_crops_equal_cropping_then_resizing(flip):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 28, 30), dtype=torch.uint8)
    boxes = torch.tensor(
        [[3, 5, 20, 16], [0, 0, 28, 30], [10, 2, 18, 26], [1, 1, 5, 7], [0, 12, 28, 18], [7, 0, 9, 30]]
    )
    out = resized_crops(images, boxes, 32, torch.full((6,), flip), "bilinear")
    for k, (top, left, h, w) in enumerate(boxes.tolist()):
        crop = images[k : k + 1, :, top : top + h, left : left + w].float()
        expected = F.interpolate(crop, size=(32, 32), mode="bilinear", align_corners=False)
        expected = expected.flip(-1) if flip else expected
        torch.testing.assert_close(out[k : k + 1], expected, atol=1e-3, rtol=0)


def test_crop_boxes_follow_torchvision_sampling():
    torch.manual_seed(0)
    boxes = crop_boxes(torch.rand(20_000, CROP_DRAWS), 28, 28, (0.7, 1.0))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 28).all() and (left + w <= 28).all()
    random.seed(0)
    torch.manual_seed(0)
    image = Image.new("L", (28, 28))
    reference = torch.tensor([RandomResizedCrop.get_params(image, (0.7, 1.0), (3 / 4, 4 / 3)) for _ in range(20_000)])
    for column in range(4):  # same distribution: means and spreads agree to sampling error
        ours, theirs = boxes[:, column].double(), reference[:, column].double()
        assert abs(ours.mean() - theirs.mean()) < 4 * theirs.std() / 100
        assert abs(ours.std() / theirs.std() - 1) < 0.05


def test_crop_boxes_fall_back_to_the_central_crop():
    torch.manual_seed(0)
    # no box of 60-100 % of a 4 × 100 image has an aspect ratio within 3/4..4/3: torchvision crops the centre
    boxes = crop_boxes(torch.rand(50, CROP_DRAWS), 4, 100, (0.6, 1.0))
    assert boxes.tolist() == [[0, 47, 4, 5]] * 50


def test_resized_crops_match_pil():
    """The per-image path resizes with PIL (uint8 out): the batched one agrees up to PIL's rounding."""
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    boxes = torch.tensor([[0, 0, 28, 28], [3, 5, 20, 16], [10, 2, 18, 26], [4, 4, 24, 23]])
    ours = resized_crops(torch.from_numpy(grey)[:, None], boxes, 32, torch.zeros(4, dtype=torch.bool), "bilinear")
    for k, (top, left, h, w) in enumerate(boxes.tolist()):
        pil = Image.fromarray(grey[k]).crop((left, top, left + w, top + h)).resize((32, 32), Image.BILINEAR)
        assert (ours[k, 0] - torch.tensor(np.array(pil)).float()).abs().max() <= 1.001


def test_device_augment_normalises_as_timm():
    """timm's transform up to uint8 (the loader's part) and DeviceAugment's part give timm's full transform."""
    recipe = Recipe.load("basic", {"reprob": 0.0})
    kwargs = dict(is_training=True, auto_augment=recipe.aa, interpolation=recipe.interpolation)
    full, uint8 = create_transform(32, **kwargs), create_transform(32, use_prefetcher=True, **kwargs)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    expected, loaded = [], []
    for seed in range(4):
        for transform, out in ((full, expected), (uint8, loaded)):
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            out.append(transform(image))
    assert loaded[0].dtype == torch.uint8
    ours = DeviceAugment(recipe, 32, torch.device("cpu"), geometric=False)(torch.stack(loaded))
    torch.testing.assert_close(ours, torch.stack(expected), atol=1e-5, rtol=0)


def test_recipes_with_autoaugment_keep_the_per_image_path():
    assert not geometric_only(Recipe.load("basic"))
    assert geometric_only(Recipe.load("cpu"))
