"""timm's image transforms from the shared training fields (``dropbench.core.training_fields``): the one mapping
from a recipe's or a classification dataset config's names to ``timm.data.create_transform``'s arguments."""

from collections.abc import Callable, Mapping
from typing import Any

from timm.data import create_transform

# create_transform's argument → the field that gives it.
TRAIN_ARGUMENTS = {
    "scale": "scale",
    "hflip": "hflip",
    "color_jitter": "color_jitter",
    "auto_augment": "aa",
    "interpolation": "interpolation",
    "re_prob": "reprob",
}
EVAL_ARGUMENTS = {"interpolation": "interpolation", "crop_pct": "crop_pct"}


def transform_kwargs(settings: Any, is_training: bool) -> dict[str, Any]:
    """create_transform's arguments from ``settings`` (a recipe, a classification dataset config, or a mapping
    with the same names): the augmentation when training, the resize and centre crop when evaluating."""
    arguments = TRAIN_ARGUMENTS if is_training else EVAL_ARGUMENTS
    if isinstance(settings, Mapping):
        return {argument: settings[name] for argument, name in arguments.items()}
    return {argument: getattr(settings, name) for argument, name in arguments.items()}


def build_transform(settings: Any, input_size: int, is_training: bool, **kwargs: Any) -> Callable:
    """timm's transform for ``settings`` at ``input_size`` px; ``kwargs`` go to create_transform as they are
    (``mean``, ``std``; ``use_prefetcher=True`` stops at a uint8 tensor and leaves normalisation and erasing to
    the caller)."""
    return create_transform(
        input_size=input_size, is_training=is_training, **transform_kwargs(settings, is_training), **kwargs
    )
