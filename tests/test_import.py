"""``dropbench import`` and ``eval``: the authors' checkpoint format, timm weights, any state dict; nothing pickled
runs; imported models give the original's logits."""

import argparse
import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dropbench.core.export import load_exported_model, read_sidecar
from dropbench.core.models import BackboneConfig

PAPER_ARGS = dict(
    dropout=0.1,
    drop_path=0.0,
    drop_mode="early",
    drop_schedule="linear",
    cutoff_epoch=50,
    epochs=300,
    mixup=0.8,
    cutmix=1.0,
    input_size=224,
    seed=3,
)


def _convnext_original_keys(state: dict) -> dict:
    """timm's ConvNeXt keys in the layout of the ConvNeXt code the authors train with."""
    renamed = {}
    for key, value in state.items():
        key = re.sub(r"^stem\.(\d)", r"downsample_layers.0.\1", key)
        key = re.sub(r"^stages\.(\d)\.downsample\.(\d)", r"downsample_layers.\1.\2", key)
        key = re.sub(r"^stages\.(\d)\.blocks\.(\d+)\.", r"stages.\1.\2.", key)
        key = key.replace(".conv_dw.", ".dwconv.").replace(".mlp.fc1.", ".pwconv1.").replace(".mlp.fc2.", ".pwconv2.")
        renamed[key.replace("head.norm.", "norm.").replace("head.fc.", "head.")] = value
    return renamed


def _swin_older_timm_keys(model: torch.nn.Module) -> dict:
    """Swin as timm < 0.9 and the authors' code save it: downsampling at the end of a stage, ``head.*``, the
    relative-position indices and the shifted windows' attention masks as persistent buffers."""
    renamed = {}
    for key, value in model.state_dict().items():
        match = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
        key = f"layers.{int(match.group(1)) - 1}.downsample.{match.group(2)}" if match else key
        renamed[key.replace("head.fc.", "head.")] = value
    for name, buffer in model.named_buffers():
        if name.endswith(("relative_position_index", "attn_mask")) and buffer is not None:
            renamed[name] = buffer
    return renamed


def _official_checkpoint(path: Path, name: str, **args) -> torch.nn.Module:
    """An authors'-format checkpoint of a freshly initialised model at the paper's widths; returns the model."""
    torch.manual_seed(0)
    model = BackboneConfig.load(name).create_model(1000).eval()
    if name == "convnext_femto":
        weights = _convnext_original_keys(model.state_dict())
    elif name == "swin_femto":
        weights = _swin_older_timm_keys(model)
    else:
        weights = model.state_dict()  # the authors' ViT and timm's Mixer share timm's names
    namespace = argparse.Namespace(model=name, **(PAPER_ARGS | args))
    optimizer = {"state": {}, "param_groups": [{"lr": 4e-3, "params": [0, 1]}]}
    torch.save({"model": weights, "optimizer": optimizer, "epoch": 299, "scaler": {}, "args": namespace}, path)
    return model


def _logits(model: torch.nn.Module, size: int = 224) -> torch.Tensor:
    torch.manual_seed(1)
    with torch.no_grad():
        return model.eval()(torch.randn(2, 3, size, size))


@pytest.mark.parametrize(
    "name",
    [
        "vit_tiny",
        "convnext_femto",
        "swin_femto",
        "mixer_s32",
        pytest.param("vit_base", marks=pytest.mark.slow),
        pytest.param("mixer_b16", marks=pytest.mark.slow),
    ],
)
def test_an_authors_checkpoint_imports_with_the_originals_logits(cli, tmp_path, name):
    args = {"drop_mode": "late", "dropout": 0.0, "drop_path": 0.4, "drop_schedule": "constant"}
    original = _official_checkpoint(
        tmp_path / "checkpoint.pth", name, **(args if name.endswith(("b16", "base")) else {})
    )
    code, out, err = cli("import", "--from", "official", tmp_path / "checkpoint.pth", "--out", tmp_path / "export")
    assert code == 0, err
    imported, sidecar = load_exported_model(tmp_path / "export")
    assert (imported(torch.zeros(1, 3, 224, 224)).shape[1], sidecar.backbone) == (1000, name)
    assert (_logits(imported) - _logits(original)).abs().max().item() <= 1e-5
    regime = "late_sd" if name.endswith(("b16", "base")) else "early_dropout"
    assert (sidecar.regime, sidecar.recipe, sidecar.seed, sidecar.dataset) == (
        regime,
        "basic",
        3,
        "imagenet-1k",
    )


def test_ema_weights_are_taken_when_asked(cli, tmp_path):
    model = _official_checkpoint(tmp_path / "c.pth", "vit_tiny")
    data = torch.load(tmp_path / "c.pth", weights_only=False)
    data["model_ema"] = {k: v + 1.0 if v.is_floating_point() else v for k, v in data["model"].items()}
    torch.save(data, tmp_path / "c.pth")
    code, _, err = cli("import", "--from", "official", tmp_path / "c.pth", "--out", tmp_path / "e", "--ema")
    assert code == 0, err
    imported, _ = load_exported_model(tmp_path / "e")
    torch.testing.assert_close(imported.cls_token, model.cls_token + 1.0)


def test_a_pickle_with_a_payload_is_refused_and_never_runs(cli, tmp_path):
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": {}, "args": Payload()}, tmp_path / "evil.pth")
    code, _, err = cli("import", "--from", "official", tmp_path / "evil.pth", "--out", tmp_path / "export")
    assert code == 2 and err.count("\n") == 1 and "refused" in err and "system" in err, err
    assert not marker.exists() and not (tmp_path / "export").exists()


def test_args_that_match_no_shipped_regime_are_named_not_guessed(cli, tmp_path):
    _official_checkpoint(tmp_path / "c.pth", "vit_tiny", dropout=0.15)
    code, _, err = cli("import", "--from", "official", tmp_path / "c.pth", "--out", tmp_path / "export")
    assert code == 2 and "dropout=0.15" in err and "--regime" in err
    code, _, err = cli(
        *("import", "--from", "official", tmp_path / "c.pth", "--out", tmp_path / "export"),
        *("--regime", "early_dropout"),
    )
    assert code == 0, err
    assert read_sidecar(tmp_path / "export").regime == "early_dropout"


def test_timm_weights_from_a_file_and_a_missing_cache_named(cli, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = BackboneConfig.load("resnet10t").create_model(1000).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    code, _, err = cli(
        "import", "--from", "timm", "resnet10t", "--weights", tmp_path / "w.safetensors", "--out", tmp_path / "e"
    )
    assert code == 0, err
    imported, sidecar = load_exported_model(tmp_path / "e")
    assert sidecar.regime == "timm_pretrained" and torch.equal(_logits(imported, 64), _logits(model, 64))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    code, _, err = cli("import", "--from", "timm", "resnet10t", "--out", tmp_path / "f")
    assert code == 2 and "models--timm--resnet10t" in err and "nothing is downloaded" in err


def test_any_state_dict_for_a_backbone_config(cli, tmp_path):
    torch.manual_seed(0)
    model = BackboneConfig.load("vit_micro").create_model(10)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    code, _, err = cli(
        *("import", "--from", "file", tmp_path / "w.pth", "--backbone", "vit_micro", "--out", tmp_path / "e"),
        *("--regime", "no_dropout", "--recipe", "cpu"),
    )
    assert code == 0, err
    imported, _ = load_exported_model(tmp_path / "e")
    assert torch.equal(_logits(imported, 32), _logits(model, 32))


@pytest.mark.slow
def test_eval_reproduces_the_pretraining_validation_and_records_it(cli, tmp_path):
    """Validated on all 10,000 MNIST test digits during pretraining, the export must score the same in eval."""
    from dropbench.pretrain.config import Recipe, Regime
    from dropbench.pretrain.train import pretrain

    recipe = Recipe.load("cpu", dict(epochs=1, train_subset=8192, val_subset=10000, warmup_epochs=0, lr=2e-3))
    summary = pretrain(
        BackboneConfig.load("vit_micro"), Regime.load("no_dropout"), recipe, "mnist", tmp_path / "run", None
    )
    code, out, err = cli("eval", "--backbone", tmp_path / "run" / "export", "--data", "mnist", "--results", tmp_path)
    assert code == 0, err
    records = [json.loads(p.read_text()) for p in (tmp_path / "records").glob("*.json")]
    calibration = {"ece", "nll", "brier", "ece_ts", "nll_ts", "brier_ts", "temperature"}
    assert {r["metric"] for r in records} == {"top1", "top5"} | calibration
    assert all(r["stage"] == "eval" and r["dataset"] == "mnist" for r in records)
    by_metric = {r["metric"]: r for r in records}
    assert (by_metric["ece"]["unit"], by_metric["nll"]["unit"], by_metric["temperature"]["unit"]) == ("%", "nats", "T")
    assert by_metric["nll_ts"]["value"] <= by_metric["nll"]["value"] + 0.01, "T fitted on the other half helps"
    (figure,) = (tmp_path / "figures" / "reliability").glob("*.png")
    assert figure.stat().st_size > 10_000 and figure.with_suffix(".csv").is_file()
    top1 = next(r["value"] for r in records if r["metric"] == "top1")
    assert top1 == pytest.approx(summary.val_top1, abs=1e-6) and top1 > 20  # above chance: a trained export


@pytest.mark.slow
def test_an_imported_export_goes_through_every_transfer_into_the_table(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the embedded det/seg configs make data/ here
    _official_checkpoint(tmp_path / "c.pth", "vit_tiny")
    assert cli("import", "--from", "official", tmp_path / "c.pth", "--out", tmp_path / "export")[0] == 0
    configs = Path(__file__).resolve().parents[1] / "configs"
    results = tmp_path / "results"
    common = ("--backbone", tmp_path / "export", "--results", results)
    runs = [
        (
            "transfer",
            "cls",
            *common,
            "--dataset",
            "sklearn_digits",
            "--protocol",
            "linear",
            "--work-dir",
            "cls",
            "train_subset=100",
            "test_subset=50",
        ),
        (
            "transfer",
            "det",
            *common,
            "--config",
            configs / "detection/mask_rcnn_cpu.py",
            "--work-dir",
            "det",
            "--cfg-options",
            "train_cfg.max_iters=2",
            "embedded_data.num_train=4",
            "embedded_data.num_val=4",
        ),
        (
            "transfer",
            "seg",
            *common,
            "--config",
            configs / "segmentation/upernet_cpu.py",
            "--work-dir",
            "seg",
            "--cfg-options",
            "train_cfg.max_iters=2",
            "embedded_data.num_train=4",
            "embedded_data.num_val=4",
        ),
    ]
    for command in runs:
        code, _, err = cli(*command)
        assert code == 0, err
    code, table, err = cli("compare", "--results", results)
    assert code == 0, err
    row = next(line for line in table.splitlines() if "vit_tiny" in line)
    assert "basic" in row and "early_dropout" in row
    for column in ("sklearn_digits linear top-1", "coco_digits mask_rcnn_cpu AP^box", "ade_digits upernet_cpu mIoU"):
        assert column in table
