"""Building any timm model from a name and kwargs — the one place every stage constructs a model — and the
backbone configs (``configs/backbones/``) that name them."""

import dataclasses
import re
import typing
from dataclasses import dataclass, field

import timm
from timm.models import build_model_with_cfg, model_entrypoint
from torch import nn

from dropbench.core.configs import check_keys, known_configs, load_yaml, resolve_config
from dropbench.core.errors import UserInputError, did_you_mean

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


@dataclass(frozen=True)
class BackboneConfig:
    """A timm model name plus constructor kwargs; any timm model works without code."""

    name: str
    model: str
    kwargs: dict = field(default_factory=dict)
    dropout_kwargs: tuple[str, ...] = DEFAULT_DROPOUT_KWARGS
    drop_path_kwarg: str = "drop_path_rate"
    drop_path_rule: str = "timm"  # or "linear": linspace(0, rate, blocks) whatever timm's own rule is
    input_size: int = 224

    @classmethod
    def load(cls, value: str) -> "BackboneConfig":
        path = resolve_config(value, "backbones")
        if path is None:
            if timm.is_model(value):
                return cls(name=value, model=value)
            hint = did_you_mean(value, known_configs("backbones"))
            raise UserInputError("backbone", f"'{value}' is neither a backbone file nor a timm model{hint}")
        data = load_yaml(path, "backbone")
        check_keys(data, {f.name for f in dataclasses.fields(cls)}, "backbone.")
        data.setdefault("name", path.stem)
        if "model" not in data:
            raise UserInputError("backbone.model", f"'{path}' must name a timm model")
        if not timm.is_model(data["model"]):
            raise UserInputError(
                "backbone.model",
                f"unknown timm model '{data['model']}'{did_you_mean(data['model'], timm.list_models())}",
            )
        kwargs = data.get("kwargs") or {}
        data["kwargs"] = kwargs
        data["dropout_kwargs"] = tuple(data.get("dropout_kwargs", DEFAULT_DROPOUT_KWARGS))
        data.setdefault("input_size", kwargs.get("img_size", 224))
        return cls(**data)

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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"dropout_kwargs": list(self.dropout_kwargs)}
