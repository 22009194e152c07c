"""Building any timm model from a name and kwargs — the one place every stage constructs a model — and the
backbone configs (``configs/backbones/``) that name them."""

import dataclasses
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import timm
from timm.models import build_model_with_cfg, model_entrypoint
from torch import nn

from dropbench.core.configs import known_configs, load_yaml, resolve_config
from dropbench.core.errors import UserInputError, did_you_mean
from dropbench.core.settings import POSITIVE_INT, OneOf, Settings, one_of, setting, variant_name

# Constructor keywords that timm models use for plain dropout; a backbone file may list its own.
DEFAULT_DROPOUT_KWARGS = ("drop_rate", "pos_drop_rate", "proj_drop_rate", "attn_drop_rate")
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


def _timm_models() -> list[str]:
    return timm.list_models()


TIMM_MODEL = OneOf(holds=timm.is_model, choices=_timm_models, what="timm model")
DROP_PATH_RULES = ("timm", "linear")


@dataclass(frozen=True)
class BackboneConfig(Settings):
    """A timm model name plus constructor kwargs; any timm model works without code. ``input_size`` defaults to
    the kwargs' ``img_size``, else 224."""

    PREFIX: ClassVar[str] = "backbone."

    model: str = setting(check=TIMM_MODEL)
    name: str = setting("", result=False)
    kwargs: dict = setting(default_factory=dict)
    dropout_kwargs: tuple[str, ...] = DEFAULT_DROPOUT_KWARGS
    drop_path_kwarg: str = "drop_path_rate"
    # "linear": linspace(0, rate, blocks) whatever timm's own rule is
    drop_path_rule: str = setting("timm", check=one_of(DROP_PATH_RULES, "drop-path rule"))
    input_size: int = setting(224, check=POSITIVE_INT)

    @classmethod
    def load(cls, value: str, overrides: Mapping[str, Any] | None = None) -> "BackboneConfig":
        """A backbone file (or its name under ``configs/backbones``), or a timm model name; ``overrides`` (dotted:
        ``kwargs.depth``) make a variant named after them (``vit_micro.depth=8``)."""
        path = resolve_config(value, "backbones")
        if path is None:
            if not timm.is_model(value):
                hint = did_you_mean(value, known_configs("backbones"))
                raise UserInputError("backbone", f"'{value}' is neither a backbone file nor a timm model{hint}")
            data = {"name": value, "model": value}
        else:
            data = {"name": path.stem} | load_yaml(path, "backbone")
            if "model" not in data:
                raise UserInputError("backbone.model", f"'{path}' must name a timm model")
        backbone = cls.from_config(data, overrides)
        if "input_size" not in data and not any(key == "input_size" for key in overrides or {}):
            backbone = dataclasses.replace(backbone, input_size=backbone.kwargs.get("img_size", 224))
        if overrides:
            name = variant_name(backbone.name, overrides)
            backbone = dataclasses.replace(backbone, name=name, variant=dict(overrides))
        return backbone

    def create_model(self, num_classes: int, dropout: float = 0.0, drop_path: float = 0.0) -> nn.Module:
        """Build the timm model with the given maximum rates (only non-zero rates are passed)."""
        kwargs = dict(self.kwargs, num_classes=num_classes)
        # Rates are always passed, 0 included: some models default to a non-zero rate (timm's Swin has
        # drop_path_rate=0.1). A keyword the model's constructor rejects is dropped, unless its rate is needed.
        optional = {k: dropout for k in self.dropout_kwargs}
        if drop_path > 0:
            kwargs[self.drop_path_kwarg] = drop_path
        else:
            optional[self.drop_path_kwarg] = 0.0
        return create_timm_model(self.model, kwargs, optional)
