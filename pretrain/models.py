"""Building any timm model from a name and kwargs — the one place every stage constructs a model."""

import re
import typing

import timm
from timm.models import build_model_with_cfg, model_entrypoint
from torch import nn

from dropbench.errors import UserInputError

_FIXED_KWARG = re.compile(r"got multiple values for keyword argument '(\w+)'")
_UNEXPECTED_KWARG = re.compile(r"unexpected keyword argument '(\w+)'")


def _build(name: str, kwargs: dict) -> nn.Module:
    try:
        return timm.create_model(name, **kwargs)
    except (TypeError, KeyError) as err:
        # "got multiple values for keyword argument 'x'" (seen as a KeyError too, depending on the call path)
        fixed = _FIXED_KWARG.search(str(err)) or (isinstance(err, KeyError) and err.args and err.args[0] in kwargs)
        if not fixed:
            raise
    # Some entrypoints (e.g. MLP-Mixer's) hard-code their architecture arguments: build their class directly
    # with the variant's config, so that kwargs such as patch_size or embed_dim still apply.
    model_class = typing.get_type_hints(model_entrypoint(name)).get("return")
    if not isinstance(model_class, type):
        raise TypeError(f"{name} fixes some of {sorted(kwargs)} and its model class is not annotated")
    return build_model_with_cfg(model_class, name, pretrained=False, **kwargs)


def create_timm_model(name: str, kwargs: dict, optional_kwargs: dict | None = None) -> nn.Module:
    """``timm.create_model(name, **kwargs, **optional_kwargs)``, dropping optional kwargs the model rejects."""
    if not timm.is_model(name):
        raise UserInputError("backbone.model", f"unknown timm model '{name}'")
    optional = dict(optional_kwargs or {})
    while True:
        try:
            return _build(name, {**kwargs, **optional})
        except TypeError as err:
            rejected = _UNEXPECTED_KWARG.search(str(err))
            if rejected is None or rejected.group(1) not in optional:
                raise UserInputError("backbone.kwargs", f"{name}: {err}") from None
            del optional[rejected.group(1)]
