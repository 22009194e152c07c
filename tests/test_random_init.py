"""The random_init reference: an untrained export that every transfer takes like any other."""

from pathlib import Path

import pytest
import torch

from dropbench.core.export import load_exported_model, read_sidecar
from dropbench.core.models import BackboneConfig
from dropbench.pretrain.config import Recipe, Regime
from dropbench.pretrain.train import pretrain

pytest.importorskip("mmdet")
ROOT = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def random_init_export(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("random_init") / "run"
    recipe = Recipe.load("cpu", dict(epochs=1, val_subset=32, batch_size=32, per_device_batch=32, warmup_epochs=0))
    pretrain(BackboneConfig.load("vit_micro"), Regime.load("random_init"), recipe, "mnist", run, results_dir=None)
    return run / "export"


def test_a_random_init_export_loads_in_every_transfer(random_init_export):
    from mmdet.registry import MODELS as DET_MODELS
    from mmseg.registry import MODELS as SEG_MODELS

    from dropbench.transfer.backbone import TimmBackbone
    from dropbench.transfer.mm_runner import load_config

    sidecar = read_sidecar(random_init_export)
    assert sidecar.regime == "random_init" and sidecar.epochs == 0

    adapter = TimmBackbone(str(random_init_export))
    features = adapter(torch.randn(1, 3, 96, 96))
    assert [f.shape[-1] for f in features] == [24, 12, 6, 3]

    det = load_config(ROOT / "detection" / "mask_rcnn_cpu.py", [])
    det.model.backbone.export = str(random_init_export)
    det.model.neck.in_channels = adapter.out_channels
    assert type(DET_MODELS.build(det.model)).__name__ == "MaskRCNN"

    seg = load_config(ROOT / "segmentation" / "upernet_cpu.py", [])
    seg.model.backbone.export = str(random_init_export)
    seg.model.decode_head.in_channels = adapter.out_channels
    seg.model.auxiliary_head.in_channels = adapter.out_channels[seg.model.auxiliary_head.in_index]
    assert type(SEG_MODELS.build(seg.model)).__name__ == "EncoderDecoder"

    model, _ = load_exported_model(random_init_export)
    pooled = model.forward_head(model.forward_features(torch.randn(2, 3, 32, 32)), pre_logits=True)
    assert pooled.shape == (2, 64) and torch.isfinite(pooled).all()
