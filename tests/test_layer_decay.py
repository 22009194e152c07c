"""The paper-scale configs' lr multipliers for each family's stem, first stage and last block, against the formula
of the anchor each config names (the ConvNeXt repository's LearningRateDecayOptimizerConstructor, the Swin
repositories' plain AdamW, mmdet's projects/ViTDet and mmseg's configs/mae LayerDecayOptimizerConstructor)."""

from pathlib import Path

import pytest
import torch
from torch import nn

from .conftest import make_untrained_export

pytest.importorskip("mmdet")
from dropbench.core.errors import UserInputError  # noqa: E402
from dropbench.transfer.backbone import TimmBackbone  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BASE_LR, BASE_WD = 1e-4, 0.05


def convnext_layer_wise(layer_id: int, rate: float = 0.95, num_layers: int = 6) -> float:
    """The ConvNeXt repository: ``decay_rate ** (num_layers + 2 - layer_id - 1)``."""
    return rate ** (num_layers + 2 - layer_id - 1)


def beit(layer_id: int, rate: float, depth: int) -> float:
    """ViTDet / mmseg MAE: patch embedding id 0, block i id i + 1, heads id depth + 1."""
    return rate ** (depth + 1 - layer_id)


@pytest.fixture(scope="module")
def paper_exports(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("paper_widths")
    names = ("vit_tiny", "swin_femto", "convnext_femto", "mixer_s32")
    return {name: make_untrained_export(name, root / name, "random_init") for name in names}


def _param_groups(export: Path, config: str, plain_blocks: str = "spaced") -> tuple[nn.Module, dict[int, dict]]:
    """(the timm model inside the adapter, {id(parameter): its group}) as a run of ``config`` builds them."""
    from mmdet.registry import OPTIM_WRAPPER_CONSTRUCTORS
    from mmengine.config import Config

    model = nn.Module()
    model.backbone = TimmBackbone(str(export), plain_blocks=plain_blocks)
    model.neck = nn.Conv2d(4, 4, 1)
    wrapper = Config.fromfile(CONFIGS / config).optim_wrapper.to_dict()
    constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(
        dict(
            type=wrapper["constructor"],
            optim_wrapper_cfg=dict(type="OptimWrapper", optimizer=wrapper["optimizer"]),
            paramwise_cfg=wrapper["paramwise_cfg"],
        )
    )
    optimizer = constructor(model).optimizer
    groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    assert len(groups) == sum(1 for _ in model.parameters()), "every parameter in exactly one group"
    top = max(group["lr"] for group in optimizer.param_groups)
    assert groups[id(model.neck.weight)]["lr"] == pytest.approx(top), "the neck and heads at the family's full lr"
    return model.backbone.model, groups


def _lr(groups: dict, parameter: torch.Tensor) -> float:
    return groups[id(parameter)]["lr"] / BASE_LR


def test_convnext_detection_decays_layer_wise_0_95_over_6_ids_as_the_convnext_repository(paper_exports):
    convnext, groups = _param_groups(paper_exports["convnext_femto"], "detection/mask_rcnn_1x_coco.py")
    assert _lr(groups, convnext.stem[0].weight) == pytest.approx(convnext_layer_wise(0))  # downsample_layers.0
    assert _lr(groups, convnext.stages[0].blocks[0].conv_dw.weight) == pytest.approx(convnext_layer_wise(1))
    assert _lr(groups, convnext.stages[1].downsample[1].weight) == pytest.approx(convnext_layer_wise(2))
    assert _lr(groups, convnext.stages[2].blocks[4].conv_dw.weight) == pytest.approx(convnext_layer_wise(3 + 4 // 3))
    assert _lr(groups, convnext.stages[3].blocks[-1].mlp.fc2.weight) == pytest.approx(convnext_layer_wise(6))
    assert 0.5 <= _lr(groups, convnext.stem[0].weight) == pytest.approx(0.698, abs=1e-3)


def test_convnext_segmentation_decays_stage_wise_0_9_as_the_convnext_repository(paper_exports):
    convnext, groups = _param_groups(paper_exports["convnext_femto"], "segmentation/upernet_160k_ade20k.py")
    stage_wise = lambda stage_id: 0.9 ** (6 + 2 - stage_id - 1)  # noqa: E731 - the anchor's formula
    assert _lr(groups, convnext.stem[0].weight) == pytest.approx(stage_wise(0))  # every downsampling layer: id 0
    assert _lr(groups, convnext.stages[2].downsample[1].weight) == pytest.approx(stage_wise(0))
    assert _lr(groups, convnext.stages[0].blocks[0].conv_dw.weight) == pytest.approx(stage_wise(1))
    assert _lr(groups, convnext.stages[3].blocks[-1].mlp.fc2.weight) == pytest.approx(stage_wise(4))
    assert 0.5 <= _lr(groups, convnext.stages[0].blocks[0].conv_dw.weight) == pytest.approx(0.531, abs=1e-3)


@pytest.mark.parametrize("config", ["detection/mask_rcnn_1x_coco.py", "segmentation/upernet_160k_ade20k.py"])
def test_swin_trains_every_layer_at_the_full_lr_as_the_swin_repositories(paper_exports, config):
    swin, groups = _param_groups(paper_exports["swin_femto"], config)
    segmentation = config.startswith("segmentation")
    lr_mult, decay_mult = (0.6, 0.2) if segmentation else (1.0, 1.0)  # the Swin segmentation anchor: 6e-5, wd 0.01
    for parameter in (
        swin.patch_embed.proj.weight,
        swin.layers[0].blocks[0].attn.qkv.weight,
        swin.layers[3].blocks[-1].mlp.fc2.weight,
    ):
        assert _lr(groups, parameter) == pytest.approx(lr_mult)
        assert groups[id(parameter)]["weight_decay"] == pytest.approx(BASE_WD * decay_mult)
    table = swin.layers[0].blocks[0].attn.relative_position_bias_table
    assert groups[id(table)]["weight_decay"] == 0.0 and groups[id(swin.patch_embed.norm.weight)]["weight_decay"] == 0.0


@pytest.mark.parametrize(
    ("config", "rate"), [("detection/mask_rcnn_1x_coco.py", 0.7), ("segmentation/upernet_160k_ade20k.py", 0.65)]
)
def test_plain_vit_decays_every_block_and_the_top_one_too_as_vitdet_and_mae(paper_exports, config, rate):
    vit, groups = _param_groups(paper_exports["vit_tiny"], config)
    assert _lr(groups, vit.patch_embed.proj.weight) == pytest.approx(beit(0, rate, 12))
    assert _lr(groups, vit.pos_embed) == pytest.approx(beit(0, rate, 12))
    assert _lr(groups, vit.blocks[0].attn.qkv.weight) == pytest.approx(beit(1, rate, 12))
    assert _lr(groups, vit.blocks[11].mlp.fc2.weight) == pytest.approx(rate), "the top block is decayed once"
    assert (
        groups[id(vit.pos_embed)]["weight_decay"] == 0.0
        and groups[id(vit.blocks[0].norm1.weight)]["weight_decay"] == 0.0
    )


def test_mixer_segmentation_decays_as_a_plain_vit(paper_exports):
    mixer, groups = _param_groups(paper_exports["mixer_s32"], "segmentation/upernet_160k_ade20k_224.py")
    assert _lr(groups, mixer.stem.proj.weight) == pytest.approx(beit(0, 0.65, 8))
    assert _lr(groups, mixer.blocks[7].mlp_channels.fc2.weight) == pytest.approx(0.65)


def test_a_family_without_a_rule_is_refused_naming_the_field(paper_exports):
    from dropbench.transfer.optim import family_rule

    convnext = TimmBackbone(str(paper_exports["convnext_femto"])).model
    with pytest.raises(UserInputError, match=r"layer_decay\.convnext: missing"):
        family_rule({"vit": {"rate": 0.7}}, convnext)
    with pytest.raises(UserInputError, match=r"layer_decay\.convnext\.rate"):
        family_rule({"convnext": {"rate": 1.5}}, convnext)
    vit = TimmBackbone(str(paper_exports["vit_tiny"])).model
    with pytest.raises(UserInputError, match="reads ConvNeXt's layout"):
        family_rule({"default": {"grouping": "convnext_layer_wise"}}, vit)
