"""Layer-wise lr decay for any timm backbone inside an mm* model.

mmdet's ``LearningRateDecayOptimizerConstructor`` only knows its own ConvNeXt; this constructor asks timm for
the layer grouping (``group_matcher``, through ``param_groups_layer_decay``) of the backbone wrapped by
``TimmBackbone``, so ViT, Swin, ConvNeXt, Mixer and any other timm model get per-layer lr scales. Parameters
outside the timm model (adapter resamplers, neck, heads) train at the base lr, without weight decay on biases
and norms. Config: ``constructor='TimmLayerDecayOptimizerConstructor', paramwise_cfg=dict(layer_decay_rate=0.75)``.
"""

from mmengine.optim import DefaultOptimWrapperConstructor
from timm.optim import param_groups_layer_decay
from torch import nn

from dropbench.transfer.backbone import TimmBackbone


class TimmLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    def add_params(self, params: list[dict], module: nn.Module, **kwargs) -> None:
        backbones = [m for m in module.modules() if isinstance(m, TimmBackbone)]
        if len(backbones) != 1:
            super().add_params(params, module, **kwargs)
            return
        timm_model = backbones[0].model
        decay_rate = float(self.paramwise_cfg.get("layer_decay_rate", 1.0))
        no_decay = timm_model.no_weight_decay() if hasattr(timm_model, "no_weight_decay") else set()
        for group in param_groups_layer_decay(
            timm_model, weight_decay=self.base_wd or 0.0, no_weight_decay_list=no_decay, layer_decay=decay_rate
        ):
            params.append(
                {
                    "params": group["params"],
                    "lr": self.base_lr * group["lr_scale"],
                    "weight_decay": group["weight_decay"],
                }
            )
        in_backbone = {id(p) for p in timm_model.parameters()}
        for name, param in module.named_parameters():
            if id(param) in in_backbone or not param.requires_grad:
                continue
            decays = param.ndim > 1 and not name.endswith(".bias")
            params.append({"params": [param], "weight_decay": self.base_wd if decays else 0.0})


def register(registry) -> None:
    """Register the constructor in an mm* ``OPTIM_WRAPPER_CONSTRUCTORS`` registry, once."""
    if registry.get("TimmLayerDecayOptimizerConstructor") is None:
        registry.register_module(module=TimmLayerDecayOptimizerConstructor)
