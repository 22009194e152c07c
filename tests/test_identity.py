"""Run identity: what the settings digest covers, record names, the existing-record policy."""

import json
from pathlib import Path

from dropbench.core.export import ExportSidecar
from dropbench.core.identity import Measurement, Part, ResultRecord, RunIdentity
from dropbench.core.models import BackboneConfig
from dropbench.pretrain.config import Recipe, Regime, pretrain_identity
from dropbench.pretrain.data import IMAGENET_1K, dataset_name


def _identity(**recipe_overrides) -> RunIdentity:
    recipe = Recipe.load("cpu", recipe_overrides)
    return pretrain_identity(BackboneConfig.load("vit_micro"), Regime.load("early_dropout"), recipe, "mnist")


def test_the_digest_covers_settings_but_not_seeds():
    base = _identity()
    assert _identity(seed=3).digest == base.digest, "seeds are fields of the identity, not settings"
    assert _identity(seed=3).stem() != base.stem()
    assert _identity(epochs=4).digest != base.digest
    assert _identity(log_every=1).digest == base.digest, "the logging cadence does not change a result"
    other_regime = pretrain_identity(
        BackboneConfig.load("vit_micro"), Regime.load("late_dropout"), Recipe.load("cpu"), "mnist"
    )
    assert other_regime.parts["recipe"] == base.parts["recipe"] and other_regime.parts["regime"] != base.parts["regime"]


def test_overrides_label_the_recipe_part_without_the_seed():
    assert _identity(epochs=4, seed=2).parts["recipe"].overrides == "epochs=4"
    assert _identity().parts["recipe"].overrides == ""


def test_how_a_run_executes_is_neither_a_setting_nor_a_label():
    executed_otherwise = _identity(compile="aot_eager", recovery_every=7, log_every=3)
    assert executed_otherwise == _identity(), "a compiled or more often checkpointed run is the same experiment"


def test_a_transfer_identity_carries_its_export_parts_and_its_own_seed():
    pretraining = _identity(epochs=4)
    task = Part.of({"lr": 1e-3}, ["train_cfg.max_iters=40"])
    transfer = pretraining.transfer("detection", "coco_digits", "mask_rcnn_cpu", 2, task)
    assert transfer.parts["recipe"] == pretraining.parts["recipe"] and transfer.parts["task"] == task
    assert "__tseed2__" in transfer.stem() and transfer.stem().endswith(f"__{transfer.digest[:12]}__")
    assert transfer.digest != pretraining.transfer("detection", "coco_digits", "mask_rcnn_cpu", 2, Part.of({})).digest
    sidecar = {"model": "vit_tiny_patch16_224", "kwargs": {}, "num_classes": 10, "identity": pretraining.to_json()}
    assert ExportSidecar.from_json(json.loads(json.dumps(sidecar)), Path("x")).pretraining_identity() == pretraining


def test_records_are_found_by_identity_kept_and_superseded_only_by_a_forced_rewrite(tmp_path, capsys):
    identity, other = _identity(), _identity(epochs=4)
    write = dict(started="s", code_version="v")
    measurement = Measurement(model="m", run_dir=tmp_path)
    written = identity.write_records(tmp_path, {"top1": 50.0}, measurement, **write)
    assert identity.existing_records(tmp_path) == written and other.existing_records(tmp_path) == []
    record = ResultRecord(**json.loads(written[0].read_text()))
    assert record.identity() == identity and record.config_hash == identity.digest
    # Another process's records, written while this one ran: kept, and said so.
    assert identity.write_records(tmp_path, {"top1": 49.0}, measurement, **write) == []
    assert "they are kept" in capsys.readouterr().out and json.loads(written[0].read_text())["value"] == 50.0
    again = identity.write_records(tmp_path, {"top1": 51.0}, measurement, **write, force=True)
    assert again == written and json.loads(again[0].read_text())["value"] == 51.0
    superseded = list((tmp_path / "records" / "superseded").glob("*.json"))
    assert len(superseded) == 1 and json.loads(superseded[0].read_text())["value"] == 50.0


def test_an_imagenet_1k_folder_is_named_as_the_papers_records_name_it(tmp_path):
    for index in range(1000):
        (tmp_path / "in1k" / "train" / f"n{index:08d}").mkdir(parents=True)
    (tmp_path / "other" / "train" / "cat").mkdir(parents=True)
    assert dataset_name(str(tmp_path / "in1k")) == IMAGENET_1K
    assert dataset_name(str(tmp_path / "other")) == "other"
    assert dataset_name(str(tmp_path / "other"), Recipe.load("cpu", {"dataset_name": "pets"})) == "pets"
    assert dataset_name(str(tmp_path / "other"), None, data_name="mine") == "mine"
