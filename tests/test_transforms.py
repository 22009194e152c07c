"""One mapping from the shared training fields to timm's create_transform (``dropbench.core.transforms``): the
transforms of pretraining, classification transfer and ``dropbench eval`` are the ones their explicit calls build."""

import pytest
from timm.data import create_transform

from dropbench.core.transforms import build_transform, transform_kwargs
from dropbench.importing import OFFICIAL_EVAL
from dropbench.pretrain.config import Recipe
from dropbench.pretrain.data import _train_transform
from dropbench.transfer.cls_data import load_cls_config

RECIPE_OVERRIDES = {"color_jitter": 0.4, "hflip": 0.3, "scale": [0.2, 0.9], "interpolation": "bilinear"}
CLS_OVERRIDES = {"aa": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "scale": [0.5, 1.0], "crop_pct": 0.9}


def _explicit(settings, input_size: int, is_training: bool, **kwargs):
    if is_training:
        return create_transform(
            input_size=input_size,
            is_training=True,
            scale=settings.scale,
            hflip=settings.hflip,
            color_jitter=settings.color_jitter,
            auto_augment=settings.aa,
            interpolation=settings.interpolation,
            re_prob=settings.reprob,
            **kwargs,
        )
    return create_transform(
        input_size=input_size, is_training=False, interpolation=settings.interpolation, crop_pct=settings.crop_pct
    )


@pytest.mark.parametrize("name", ["basic", "improved", "cpu"])
@pytest.mark.parametrize("overrides", [{}, RECIPE_OVERRIDES])
def test_a_recipe_gives_the_transforms_of_its_fields(name, overrides):
    recipe = Recipe.load(name, overrides)
    # pretraining stops at uint8 (DeviceAugment normalises and erases), where timm takes no re_prob
    uint8 = create_transform(
        input_size=32,
        is_training=True,
        scale=recipe.scale,
        hflip=recipe.hflip,
        color_jitter=recipe.color_jitter,
        auto_augment=recipe.aa,
        interpolation=recipe.interpolation,
        use_prefetcher=True,
    )
    if not recipe.pad:
        assert repr(_train_transform(recipe, 32)) == repr(uint8)
    assert repr(build_transform(recipe, 32, is_training=True, use_prefetcher=True)) == repr(uint8)
    assert repr(build_transform(recipe, 32, is_training=False)) == repr(_explicit(recipe, 32, False))


@pytest.mark.parametrize("overrides", [{}, CLS_OVERRIDES])
@pytest.mark.parametrize("is_training", [True, False])
def test_a_classification_dataset_config_gives_the_transforms_of_its_fields(overrides, is_training):
    config = load_cls_config("optdigits", overrides)
    expected = _explicit(config, 48, is_training)
    assert repr(build_transform(config, 48, is_training)) == repr(expected)


def test_the_arguments_are_timm_names_for_the_shared_fields():
    config = load_cls_config("optdigits", CLS_OVERRIDES)
    assert transform_kwargs(config, is_training=True) == {
        "scale": config.scale,
        "hflip": config.hflip,
        "color_jitter": config.color_jitter,
        "auto_augment": "rand-m9-mstd0.5-inc1",
        "interpolation": config.interpolation,
        "re_prob": 0.25,
    }
    assert transform_kwargs(config, is_training=False) == {"interpolation": config.interpolation, "crop_pct": 0.9}


def test_an_export_evaluation_transform_is_taken_as_written():
    settings = dict(OFFICIAL_EVAL)
    transform = build_transform(settings, 224, is_training=False, mean=settings["mean"], std=settings["std"])
    assert repr(transform) == repr(create_transform(input_size=224, is_training=False, **settings))
    assert transform_kwargs(settings, is_training=False) == {"interpolation": "bicubic", "crop_pct": 0.875}
