"""The one training loop (``dropbench.core.loop``) that pretraining and fine-tuning share."""

import csv

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dropbench.core.loop import StepSettings, accuracy_metrics, build_criterion, evaluate, gpu_step_settings
from dropbench.core.models import BackboneConfig
from dropbench.pretrain.config import Recipe, Regime
from dropbench.pretrain.train import pretrain


def test_evaluate_counts_like_accuracy_metrics_on_fixed_predictions():
    torch.manual_seed(0)
    logits = torch.randn(50, 7)
    labels = torch.randint(0, 6, (50,))  # class 6 never occurs: not part of the per-class mean
    model = nn.Identity()
    loader = DataLoader(TensorDataset(logits, labels), batch_size=8)
    metrics = evaluate(model, loader, 7, torch.device("cpu"))
    expected = accuracy_metrics(logits.argmax(1), labels, 7)
    assert metrics["top1"] == pytest.approx(expected["top1"])
    assert metrics["mean_per_class_accuracy"] == pytest.approx(expected["mean_per_class_accuracy"])
    assert metrics["loss"] == pytest.approx(nn.functional.cross_entropy(logits, labels).item())
    top5 = logits.topk(5, dim=1).indices.eq(labels[:, None]).any(1).double().mean().item()
    assert metrics["top5"] == pytest.approx(100 * top5)


def test_mixup_or_cutmix_switch_to_soft_targets():
    mixup, criterion = build_criterion(10, smoothing=0.1, mixup=0.8, cutmix=1.0)
    assert mixup is not None and mixup.mixup_alpha == 0.8 and mixup.cutmix_alpha == 1.0
    assert type(criterion).__name__ == "SoftTargetCrossEntropy"
    assert build_criterion(10, smoothing=0.0)[0] is None


@pytest.mark.slow
def test_gradient_accumulation_ends_where_one_large_batch_does(tmp_path):
    """Two micro-batches of 32 per update must train like one batch of 64 (no dropout, no mixup)."""
    # SGD: unlike Adam, it is not invariant to the gradient's scale, so a missing 1/accum_steps would show
    tiny = dict(epochs=1, train_subset=512, val_subset=64, batch_size=64, warmup_epochs=0, smoothing=0.0)
    tiny |= dict(opt="sgd", lr=0.05, momentum=0.9, weight_decay=0.0)
    weights = {}
    for per_device in (64, 32):
        run = tmp_path / f"micro{per_device}"
        recipe = Recipe.load("cpu", tiny | {"per_device_batch": per_device})
        pretrain(BackboneConfig.load("vit_micro"), Regime.load("no_dropout"), recipe, "mnist", run, results_dir=None)
        weights[per_device] = load_file(run / "export" / "backbone.safetensors")
    for name, tensor in weights[64].items():
        torch.testing.assert_close(weights[32][name], tensor, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_mixup_reaches_the_fine_tuning_loop(cli, tmp_path):
    """The same fine-tune with mixup and cutmix on trains on other targets: its logged loss differs."""
    from .conftest import make_untrained_export
    from .test_classification import _transfer_args

    export = make_untrained_export("vit_micro", tmp_path / "export")
    tiny = ["train_subset=128", "test_subset=32", "batch_size=32", "epochs=1", "warmup_epochs=0"]
    losses = {}
    for name, extra in (("plain", []), ("mixed", ["mixup=0.8", "cutmix=1.0"])):
        work = tmp_path / name
        code, _, err = cli(*_transfer_args(export, "sklearn_digits", "finetune", work, tmp_path / "r", *tiny, *extra))
        assert code == 0, err
        losses[name] = float(next(csv.DictReader((work / "log.csv").open()))["train_loss"])
    assert losses["plain"] != pytest.approx(losses["mixed"], rel=1e-3)


def test_gpu_step_settings_pick_channels_last_for_convolutional_models_and_the_fused_optimizer():
    convnext, vit = (BackboneConfig.load(name).create_model(10) for name in ("convnext_micro", "vit_micro"))
    assert gpu_step_settings(convnext, "adamw", torch.device("cpu")) == StepSettings(), "the CPU keeps its numerics"
    cuda = torch.device("cuda")  # the decision only: nothing is moved to a GPU
    assert gpu_step_settings(convnext, "adamw", cuda) == StepSettings(channels_last=True, fused_optimizer=True)
    assert gpu_step_settings(vit, "lamb", cuda) == StepSettings(channels_last=False, fused_optimizer=False)
    torch.backends.cudnn.benchmark = False
