"""Layer-wise lr decay for any timm backbone inside an mm* model, grouped per family as that family's anchor does.

One dense config serves every backbone, so ``paramwise_cfg.layer_decay`` maps a *family* — the timm model's class:
``VisionTransformer`` → ``vit``, ``SwinTransformer`` → ``swin``, ``ConvNeXt`` → ``convnext``, ``MlpMixer`` →
``mixer``, any other → ``default`` — to its rule::

    paramwise_cfg=dict(layer_decay=dict(
        vit=dict(rate=0.7, grouping="beit"),                                     # mmdet projects/ViTDet
        swin=dict(rate=1.0),                                                     # the Swin repository: none
        convnext=dict(rate=0.95, grouping="convnext_layer_wise", num_layers=6),  # the ConvNeXt repository
    ))

A parameter gets a layer id; its lr is ``base lr × rate ** (head_id − id)``, and everything outside the timm model
(the adapter's resamplers and output norms, the neck, the heads) trains at ``head_id``, the full lr. Groupings:

- ``timm``: timm's fine-grained groups (the model's ``group_matcher``), the top group at the full lr, as timm's
  ``param_groups_layer_decay`` does;
- ``beit``: the same groups with the head one id above the top block, so the top block is decayed once (BEiT,
  MAE in mmseg, ViTDet): block i of L at ``rate ** (L − i)``, the patch embedding at ``rate ** (L + 1)``;
- ``convnext_layer_wise`` / ``convnext_stage_wise``: the ConvNeXt repository's ``get_num_layer_layer_wise`` and
  ``get_num_layer_stage_wise`` over ``num_layers`` ids, read on timm's parameter names (``stem`` is its
  ``downsample_layers.0``, ``stages.N.downsample`` its ``downsample_layers.N``, ``stages.N.blocks.M`` its
  ``stages.N.M``); the heads at ``num_layers + 1``.

A family's rule may also scale the lr and the weight decay of its whole model, heads included, by ``lr_mult`` and
``decay_mult`` (the Swin segmentation anchor trains at 6e-5 with weight decay 0.01 where the others use 1e-4 and
0.05: ``lr_mult=0.6, decay_mult=0.2``; multipliers keep mmengine's ``auto_scale_lr`` working). Weight decay is
never applied to 1-D parameters (biases, norms) nor to what the timm model lists in ``no_weight_decay()`` (position
embeddings, tokens, relative-position tables), as in the ConvNeXt repository and mmseg's MAE configs.
"""

import fnmatch
from dataclasses import dataclass
from typing import ClassVar

from mmengine.logging import MMLogger
from mmengine.optim import DefaultOptimWrapperConstructor
from timm.models import group_parameters
from torch import nn

from dropbench.core.errors import UserInputError
from dropbench.core.settings import NON_NEGATIVE, POSITIVE_INT, Settings, one_of, setting, within
from dropbench.transfer.backbone import TimmBackbone

FAMILIES = {"VisionTransformer": "vit", "SwinTransformer": "swin", "ConvNeXt": "convnext", "MlpMixer": "mixer"}
GROUPINGS = ("timm", "beit", "convnext_layer_wise", "convnext_stage_wise")


def family_of(model: nn.Module) -> str:
    """The family a timm model's layer-decay rule is looked up under."""
    return FAMILIES.get(type(model).__name__, "default")


@dataclass(frozen=True)
class LayerDecayRule(Settings):
    """One family's rule in ``paramwise_cfg.layer_decay`` (see the module's docstring)."""

    PREFIX: ClassVar[str] = "optim_wrapper.paramwise_cfg.layer_decay."
    WHOLE_FLOATS_STAY_INT: ClassVar[bool] = False

    rate: float = setting(1.0, check=within(0, 1, low_open=True))
    grouping: str = setting("timm", check=one_of(GROUPINGS, "grouping"))
    num_layers: int = setting(6, check=POSITIVE_INT)  # the ConvNeXt groupings' layer ids
    lr_mult: float = setting(1.0, check=NON_NEGATIVE)
    decay_mult: float = setting(1.0, check=NON_NEGATIVE)


def family_rule(layer_decay: dict, model: nn.Module) -> LayerDecayRule:
    """The checked rule for ``model``'s family from a ``paramwise_cfg.layer_decay`` mapping."""
    family = family_of(model)
    field = f"{LayerDecayRule.PREFIX}{family}"
    rule = layer_decay.get(family, layer_decay.get("default"))
    if rule is None:
        listed = ", ".join(sorted(layer_decay)) or "none"
        raise UserInputError(field, f"missing: the config gives rules for {listed}; add {family} or default")
    checked = LayerDecayRule.from_mapping(rule, f"{field}.")
    if checked.grouping.startswith("convnext") and family != "convnext":
        raise UserInputError(f"{field}.grouping", f"'{checked.grouping}' reads ConvNeXt's layout; {family} is not one")
    return checked


def _convnext_layer_id(name: str, stage_wise: bool, num_layers: int) -> int:
    """The ConvNeXt repository's layer id of a timm ConvNeXt parameter (``num_layers + 1``: the heads)."""
    parts = name.split(".")
    if parts[0] == "stem":
        stage, block = 0, None
    elif parts[0] == "stages" and parts[2] in ("downsample", "blocks"):
        stage, block = int(parts[1]), int(parts[3]) if parts[2] == "blocks" else None
    else:
        return num_layers + 1
    if stage_wise:
        return 0 if block is None else stage + 1
    if block is None:
        return (0, 2, 3, num_layers)[stage]
    return (1, 2, 3 + block // 3, num_layers)[stage]


def layer_ids(model: nn.Module, grouping: str, num_layers: int = 6) -> tuple[dict[str, int], int]:
    """``({parameter name: layer id}, the heads' id)`` of a timm model under a grouping (see the module's doc)."""
    names = [name for name, _ in model.named_parameters()]
    if grouping.startswith("convnext"):
        stage_wise = grouping == "convnext_stage_wise"
        return {name: _convnext_layer_id(name, stage_wise, num_layers) for name in names}, num_layers + 1
    if not hasattr(model, "group_matcher"):
        raise UserInputError(
            "optim_wrapper.paramwise_cfg.layer_decay",
            f"{type(model).__name__} has no timm group_matcher to group its layers by; give it rate 1.0",
        )
    ids = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    top = max(ids.values())
    return ids, top + 1 if grouping == "beit" else top


def lr_scales(model: nn.Module, rule: LayerDecayRule) -> dict[str, float]:
    """Each parameter's lr multiplier (before the rule's own ``lr``) under a family rule."""
    ids, head = layer_ids(model, rule.grouping, rule.num_layers)
    return {name: rule.rate ** (head - ids.get(name, head)) for name in ids}


class TimmLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Parameter groups per (lr multiplier, weight decay) for an mm* model around one ``TimmBackbone``."""

    def add_params(self, params: list[dict], module: nn.Module, **kwargs) -> None:
        backbones = [m for m in module.modules() if isinstance(m, TimmBackbone)]
        if len(backbones) != 1 or "layer_decay" not in self.paramwise_cfg:
            super().add_params(params, module, **kwargs)
            return
        timm_model = backbones[0].model
        rule = family_rule(self.paramwise_cfg["layer_decay"], timm_model)
        base_lr = self.base_lr * rule.lr_mult
        base_wd = (self.base_wd or 0.0) * rule.decay_mult
        by_name = lr_scales(timm_model, rule)
        timm_names = {id(p): name for name, p in timm_model.named_parameters()}
        no_decay = set(timm_model.no_weight_decay()) if hasattr(timm_model, "no_weight_decay") else set()
        groups: dict[tuple[float, bool], dict] = {}
        for param in module.parameters():
            if not param.requires_grad:
                continue
            timm_name = timm_names.get(id(param))
            scale = by_name[timm_name] if timm_name is not None else 1.0
            listed = timm_name is not None and any(fnmatch.fnmatch(timm_name, p) for p in no_decay)
            decays = param.ndim > 1 and not listed
            group = groups.setdefault(
                (scale, decays), {"params": [], "lr": base_lr * scale, "weight_decay": base_wd if decays else 0.0}
            )
            group["params"].append(param)
        params.extend(groups[key] for key in sorted(groups))
        MMLogger.get_current_instance().info(describe_rule(timm_model, rule, by_name))


def describe_rule(model: nn.Module, rule: LayerDecayRule, by_name: dict[str, float]) -> str:
    """One log line: the family's rule and the lr multipliers from the first parameter to the heads."""
    ordered = list(dict.fromkeys(round(by_name[name], 4) for name, _ in model.named_parameters()))
    multipliers = {"lr_mult": rule.lr_mult, "decay_mult": rule.decay_mult}
    extra = "".join(f", {key} {value}" for key, value in multipliers.items() if value != 1.0)
    return (
        f"layer decay for {family_of(model)} ({type(model).__name__}): {rule.grouping} grouping, rate "
        f"{rule.rate}{extra}; lr multipliers in parameter order {ordered}, neck and heads 1.0"
    )


def register(registry) -> None:
    """Register the constructor in an mm* ``OPTIM_WRAPPER_CONSTRUCTORS`` registry, once."""
    if registry.get("TimmLayerDecayOptimizerConstructor") is None:
        registry.register_module(module=TimmLayerDecayOptimizerConstructor)
