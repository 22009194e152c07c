"""Transfer over pretraining time: a pretraining exports after chosen epochs (recipe ``export_epochs``), a suite
transfers each export as a recipe variant of its own, and ``plot ablation --x export_epoch`` draws each regime's
metric against the epoch with the paired Δ at each epoch."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file

from dropbench.compare import paired_t_interval
from dropbench.suite import load_suite

TINY = dict(epochs=2, train_subset=256, val_subset=64, batch_size=64, per_device_batch=64, warmup_epochs=0)
LINEAR = {"kind": "cls", "dataset": "optdigits", "protocol": "linear", "overrides": {"linear_c_grid": [1.0]}}


def _suite(folder: Path, export_epochs, **changes) -> Path:
    suite = {
        "backbones": ["vit_micro"],
        "regimes": ["no_dropout", "early_dropout"],
        "seeds": [0, 1],
        "pretrain": {"recipe": "cpu", "data": "mnist", "overrides": TINY | {"export_epochs": export_epochs}},
        "transfers": [LINEAR],
        "output": {"runs": str(folder / "runs"), "results": str(folder / "results")},
    } | changes
    path = folder / "over_time.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def test_each_earlier_export_is_transferred_after_its_own_pretraining_in_an_array_per_epoch(cli, tmp_path):
    suite = load_suite(_suite(tmp_path, [1, 2]))
    transfers = [run for run in suite.runs if run.kind == "cls"]
    assert [run.name.split("/")[0].split("-", 1)[1] for run in transfers] == [
        "no_dropout-seed0", "no_dropout-seed0@epoch1", "no_dropout-seed1", "no_dropout-seed1@epoch1",
        "early_dropout-seed0", "early_dropout-seed0@epoch1", "early_dropout-seed1", "early_dropout-seed1@epoch1",
    ]  # fmt: skip
    for run in transfers:
        pretraining = suite.run(run.after)
        epoch = 1 if "@epoch1" in run.name else 2
        assert run.identity.sweep["recipe.export_epoch"] == epoch
        assert (run.identity.parts["recipe"] == pretraining.identity.parts["recipe"]) == (epoch == 2)
        export = run.command[run.command.index("--backbone") + 1]
        assert export == str(pretraining.work_dir / ("exports/epoch1" if epoch == 1 else "export"))
    code, out, err = cli("suite", _suite(tmp_path, [1, 2]), "--executor", "slurm", "--dry-run")
    assert code == 0, err
    assert out.strip().splitlines()[-1].startswith("slurm: 12 run(s) to submit in 3 sbatch call(s)"), out


@pytest.mark.parametrize(("epochs", "message"), [([3], "from 1 to 2"), ([2, 1], "in order"), ([1, 1], "in order")])
def test_export_epochs_outside_the_run_or_out_of_order_are_refused(cli, tmp_path, epochs, message):
    code, _, err = cli("suite", _suite(tmp_path, epochs), "--dry-run")
    assert code == 2 and "export_epochs" in err and message in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_random_init_trains_no_epoch_so_names_no_export_epoch():
    from dropbench.core.models import BackboneConfig
    from dropbench.pretrain.config import Recipe, Regime, pretrain_identity

    backbone, recipe = BackboneConfig.load("vit_micro"), Recipe.load("cpu", {"export_epochs": [1, 2]})
    assert pretrain_identity(backbone, Regime.load("no_dropout"), recipe, "mnist").sweep == {"recipe.export_epoch": 5}
    assert pretrain_identity(backbone, Regime.load("random_init"), recipe, "mnist").sweep == {}


@pytest.mark.slow
def test_a_finished_run_given_an_epoch_it_did_not_export_is_refused(cli, tmp_path):
    args = ["pretrain", "--backbone", "vit_micro", "--regime", "no_dropout", "--recipe", "cpu", "--data", "mnist"]
    args += ["--out", str(tmp_path / "run"), "--results", str(tmp_path / "results")]
    args += [f"{key}={value}" for key, value in TINY.items()]
    code, _, err = cli(*args)
    assert code == 0, err
    code, _, err = cli(*args, "export_epochs=[1]")
    assert code == 2 and "recipe.export_epochs" in err and "past epoch 1" in err, err


@pytest.mark.slow
def test_a_suite_over_pretraining_time_runs_through_compare_and_plot(cli, tmp_path):
    code, out, err = cli("suite", _suite(tmp_path, [1, 2]), "--jobs", "2")
    assert code == 0, out + err
    run = tmp_path / "runs" / "vit_micro-early_dropout-seed0" / "pretrain"
    early, final = (json.loads((run / d / "backbone.json").read_text()) for d in ("exports/epoch1", "export"))
    log = pd.read_csv(run / "log.csv")
    assert early["epochs"] == 1 and early["val_top1"] == pytest.approx(log["val_top1"].iloc[0])
    assert (
        early["identity"]["sweep"] == {"recipe.export_epoch": 1}
        and final["identity"]["sweep"]["recipe.export_epoch"] == 2
    )
    weights = [load_file(run / d / "backbone.safetensors") for d in ("exports/epoch1", "export")]
    assert any(not np.array_equal(weights[0][k].numpy(), weights[1][k].numpy()) for k in weights[0])

    records = [json.loads(p.read_text()) for p in (tmp_path / "results" / "records").glob("*.json")]
    probe = pd.DataFrame(
        [
            {"regime": r["regime"], "seed": r["seed"], "epoch": r["sweep"]["recipe.export_epoch"], "top1": r["value"]}
            for r in records
            if r["protocol"] == "linear" and r["metric"] == "top1"
        ]
    )
    assert len(probe) == 8
    code, _, err = cli(
        "plot", "ablation", "--results", tmp_path / "results", "--x", "export_epoch", "--out", tmp_path / "f"
    )
    assert code == 0, err
    figure = pd.read_csv(tmp_path / "f" / "ablation.csv")
    figure = figure[(figure["protocol"] == "linear") & (figure["metric"] == "top1")]
    assert len(figure) == 4 and sorted(set(figure["x"])) == [1, 2]
    for row in figure.itertuples():
        own = probe[(probe["regime"] == row.regime) & (probe["epoch"] == row.x)].set_index("seed")["top1"]
        assert row.mean == pytest.approx(own.mean()) and row.n == 2
        if row.regime == "early_dropout":  # paired with no_dropout's export of the same epoch and seed
            base = probe[(probe["regime"] == "no_dropout") & (probe["epoch"] == row.x)].set_index("seed")["top1"]
            deltas = own - base
            assert row.delta == pytest.approx(deltas.mean())
            assert (row.delta_low, row.delta_high) == pytest.approx(paired_t_interval(deltas))
    assert (tmp_path / "f" / "ablation_classification__optdigits__linear__top1.png").stat().st_size > 10_000

    # a run made before an epoch was listed (here: its export removed) is refused, not skipped, by the next plan
    shutil.rmtree(run / "exports" / "epoch1")
    code, _, err = cli("suite", _suite(tmp_path, [1, 2]), "--dry-run")
    assert code == 2 and "export_epochs" in err and "after epoch 1" in err, err
