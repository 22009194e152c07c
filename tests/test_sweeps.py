"""Sweeps: a suite's regimes, recipe and backbones swept into variants — expansion, names, refusals, records, the
table's rows and columns, ``plot ablation``'s csv against the records, and one real 2-point sweep end to end."""

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as scipy_stats

from dropbench.compare import read_records, render, summarise
from dropbench.core.identity import ResultRecord, StageName
from dropbench.core.models import BackboneConfig
from dropbench.core.settings import variant_name
from dropbench.core.sweeps import is_geometric, sweep_points
from dropbench.pretrain.config import Recipe, Regime, pretrain_identity
from dropbench.suite import load_suite
from dropbench.suite.slurm import SlurmExecutor

TINY_PRETRAIN = dict(epochs=2, train_subset=256, val_subset=64, batch_size=64, per_device_batch=64, warmup_epochs=0)
CLS = {"kind": "cls", "dataset": "optdigits", "protocol": "linear", "overrides": {"linear_c_grid": [1.0]}}
CUTOFF_RATE = {"regime": "early_dropout", "sweep": {"dropout.cutoff_epoch": [150, 300], "dropout.rate": [0.1, 0.2]}}


def _suite(folder: Path, **changes) -> Path:
    suite = {
        "backbones": ["vit_micro"],
        "regimes": ["no_dropout", CUTOFF_RATE],
        "seeds": [0],
        "pretrain": {"recipe": "cpu", "data": "mnist", "overrides": TINY_PRETRAIN},
        "transfers": [CLS],
        "output": {"runs": str(folder / "runs"), "results": str(folder / "results")},
    } | changes
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------------ expansion


def test_a_sweep_is_the_cartesian_product_in_order_the_last_field_fastest():
    points = sweep_points({"a.x": [1, 2], "b": ["u", "v", "w"]}, "sweep")
    assert len(points) == 6 and points[0] == {"a.x": 1, "b": "u"} and points[1] == {"a.x": 1, "b": "v"}
    assert points[-1] == {"a.x": 2, "b": "w"}


def test_a_variant_is_named_after_its_values_readably_and_safely():
    assert variant_name("early_dropout", {"dropout.cutoff_epoch": 25, "dropout.rate": 0.1}) == (
        "early_dropout.cutoff_epoch=25.rate=0.1"
    )
    # the same leaf twice: the whole dotted names keep them apart
    both = variant_name("r", {"dropout.rate": 0.1, "drop_path.rate": 0.2})
    assert both == "r.dropout.rate=0.1.drop_path.rate=0.2"
    assert variant_name("cpu", {"scale": [0.5, 1.0], "aa": None}) == "cpu.scale=0.5+1.0.aa=null"
    assert "/" not in variant_name("x", {"data": "a/b c"})


def test_a_regime_variant_has_its_own_digest_and_carries_its_values_into_the_identity():
    base = Regime.load("early_dropout")
    variant = Regime.load("early_dropout", {"dropout.cutoff_epoch": 25})
    assert variant.name == "early_dropout.cutoff_epoch=25" and variant.dropout.cutoff_epoch == 25
    assert variant.settings() != base.settings() and variant.variant == {"dropout.cutoff_epoch": 25}
    backbone, recipe = BackboneConfig.load("vit_micro", {"kwargs.depth": 2}), Recipe.load("cpu", variant={"epochs": 3})
    assert backbone.name == "vit_micro.depth=2" and backbone.kwargs["depth"] == 2 and recipe.name == "cpu.epochs=3"
    identity = pretrain_identity(backbone, variant, recipe, "mnist")
    assert identity.sweep == {"backbone.kwargs.depth": 2, "regime.dropout.cutoff_epoch": 25, "recipe.epochs": 3}
    plain = pretrain_identity(BackboneConfig.load("vit_micro"), base, Recipe.load("cpu"), "mnist")
    assert plain.sweep == {} and plain.digest != identity.digest


def test_a_suite_plans_every_point_as_a_run_of_its_own(tmp_path, cli):
    suite = load_suite(_suite(tmp_path))
    pretraining = [run for run in suite.runs if run.identity.stage == StageName.PRETRAIN]
    names = [run.identity.regime for run in pretraining]
    assert names == [
        "no_dropout",
        "early_dropout.cutoff_epoch=150.rate=0.1",
        "early_dropout.cutoff_epoch=150.rate=0.2",
        "early_dropout.cutoff_epoch=300.rate=0.1",
        "early_dropout.cutoff_epoch=300.rate=0.2",
    ]
    assert len({run.identity.digest for run in pretraining}) == 5
    command = pretraining[1].command
    assert command[command.index("--variant") + 1 :] == ("dropout.cutoff_epoch=150", "dropout.rate=0.1")
    transfer = next(run for run in suite.runs if run.after == pretraining[1].name)
    assert transfer.identity.sweep == {"regime.dropout.cutoff_epoch": 150, "regime.dropout.rate": 0.1}
    code, out, err = cli("suite", _suite(tmp_path), "--dry-run")
    assert code == 0 and "5 regime(s)" in out and "--variant dropout.cutoff_epoch=150 dropout.rate=0.1" in out, err


def test_the_command_a_plan_gives_makes_the_identity_it_planned(tmp_path):
    """The CLI's reading of --variant and regime overrides gives the planned identity (no run needed)."""
    from dropbench.core.configs import parse_key_values
    from dropbench.pretrain.config import split_overrides

    suite = load_suite(_suite(tmp_path, pretrain={"recipe": "cpu", "data": "mnist", "sweep": {"epochs": [2, 3]}}))
    for run in (r for r in suite.runs if r.identity.stage == StageName.PRETRAIN):
        command = list(run.command)
        variant = split_overrides(parse_key_values(command[command.index("--variant") + 1 :]))
        overrides = split_overrides(parse_key_values([i for i in command[:] if i.startswith("seed=")]))
        backbone = BackboneConfig.load("vit_micro", variant["backbone"])
        regime = Regime.load(command[command.index("--regime") + 1], variant["regime"])
        recipe = Recipe.load("cpu", overrides["recipe"], variant=variant["recipe"])
        assert pretrain_identity(backbone, regime, recipe, "mnist") == run.identity
    assert {run.name.split("/")[0] for run in suite.runs} >= {"vit_micro-no_dropout-cpu.epochs=2-seed0"}


def test_a_backbone_and_a_recipe_sweep_cross_the_regimes(tmp_path):
    backbones = [{"backbone": "vit_micro", "sweep": {"kwargs.depth": [1, 2]}}]
    pretrain = {"recipe": "cpu", "data": "mnist", "sweep": {"train_subset": [256, 512]}}
    suite = load_suite(_suite(tmp_path, backbones=backbones, regimes=["no_dropout"], pretrain=pretrain))
    points = {(r.identity.backbone, r.identity.recipe) for r in suite.runs if r.identity.stage == StageName.PRETRAIN}
    assert points == {(f"vit_micro.depth={d}", f"cpu.train_subset={n}") for d in (1, 2) for n in (256, 512)}


def test_two_hundred_points_plan_in_seconds(tmp_path):
    sweep = {
        "dropout.cutoff_epoch": list(range(10, 210, 10)),
        "dropout.rate": [round(0.02 * i, 2) for i in range(1, 11)],
    }
    path = _suite(
        tmp_path,
        regimes=["no_dropout", {"regime": "early_dropout", "sweep": sweep}],
        pretrain={"recipe": "cpu", "data": "mnist", "overrides": dict(TINY_PRETRAIN, epochs=300)},
    )
    start = time.perf_counter()
    suite = load_suite(path)
    slurm = SlurmExecutor()
    commands, summary = slurm.commands(suite), slurm.plan_summary(suite)  # what the Slurm dry run prints
    took = time.perf_counter() - start
    assert sum(run.identity.stage == StageName.PRETRAIN for run in suite.runs) == 201
    assert took <= 5, f"planning 200 points took {took:.1f} s"
    assert len(commands) == len(suite.runs) == 402
    assert summary.startswith("slurm: 402 run(s) to submit in 2 sbatch call(s); array 0: 201 pretrain; array 1: 201")


# ------------------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("sweep", "field", "words"),
    [
        ({"dropout.mode": ["curriculum"], "dropout.shape": ["constant"]}, "regimes[1]", "does not apply"),
        ({"dropout.cutof_epoch": [10]}, "regimes[1].sweep.dropout.cutof_epoch", "dropout.cutoff_epoch"),
        ({"dropout.rate": [0.1, 1.5]}, "regimes[1]", "must be in [0, 1)"),
        ({"dropout.cutoff_epoch": [400]}, "regimes[1]", "cutoff_epoch"),
        ({"dropout.cutoff_epoch": [10, 20]}, "regimes[1].sweep.dropout.cutoff_epoch", "changes nothing"),
        ({"dropout.rate": [0.1, 0.1]}, "regimes[1].sweep.dropout.rate[1]", "twice"),
        ({"dropout.rate": []}, "regimes[1].sweep.dropout.rate", "non-empty"),
    ],
)
def test_an_impossible_point_is_refused_in_one_line_before_anything_runs(tmp_path, cli, sweep, field, words):
    path = _suite(tmp_path, regimes=["no_dropout", {"regime": "early_dropout", "sweep": sweep}])
    code, out, err = cli("suite", path, "--dry-run")
    assert code == 2 and err.startswith(f"error: {field}") and words in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


def test_a_field_the_mode_ignores_is_refused_naming_the_mode(tmp_path, cli):
    sweep = {"dropout.shape": ["constant", "linear"]}
    path = _suite(tmp_path, regimes=["no_dropout", {"regime": "standard_dropout", "sweep": sweep}])
    code, _, err = cli("suite", path, "--dry-run")
    assert code == 2 and "changes nothing: mode 'standard' ignores shape" in err, err


def test_two_regimes_that_resolve_to_the_same_settings_are_refused(tmp_path, cli):
    # a rate of 0 is no schedule: the point is no_dropout under another name
    path = _suite(tmp_path, regimes=["no_dropout", {"regime": "early_dropout", "sweep": {"dropout.rate": [0.0, 0.1]}}])
    code, _, err = cli("suite", path, "--dry-run")
    assert code == 2 and "resolves to the same settings as 'no_dropout'" in err, err


def test_regime_overrides_on_the_command_line_name_the_variant(cli, tmp_path):
    code, out, err = cli(
        "schedule", "--regime", "early_dropout", "dropout.cutoff_epoch=150", "--epochs", "300", "--iters-per-epoch", "1"
    )
    assert code == 0, err
    (label, rates), *_ = json.loads(out).items()
    assert label == "early_dropout.cutoff_epoch=150 (dropout)" and rates[149] == 0.0 and rates[148] > 0
    code, _, err = cli(
        "schedule", "--regime", "early_dropout", "dropout.cutof_epoch=1", "--epochs", "3", "--iters-per-epoch", "1"
    )
    assert code == 2 and "dropout.cutof_epoch: unknown override (did you mean 'dropout.cutoff_epoch'?)" in err, err


# ------------------------------------------------------------------------------------------------ table and figure


def _record(regime: str, seed: int, value: float, sweep: dict) -> ResultRecord:
    return ResultRecord(
        backbone="vit_micro",
        regime=regime,
        recipe="cpu",
        seed=seed,
        stage=StageName.PRETRAIN,
        task="classification",
        dataset="mnist",
        protocol="from_scratch",
        sweep=sweep,
        parts={"backbone": {"digest": "b", "overrides": ""}, "regime": {"digest": regime, "overrides": ""}}
        | {"recipe": {"digest": "r", "overrides": ""}},
        model="m",
        run_dir="r",
        metric="top1",
        value=value,
        config_hash=regime,
        code_version="v",
        started="s",
        finished="f",
    )


@pytest.fixture
def swept_records(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for seed in range(4):
        base = 90 + rng.normal()
        _record("no_dropout", seed, base, {}).write(tmp_path)
        for cutoff in (5, 25, 100):
            regime = f"early_dropout.cutoff_epoch={cutoff}"
            value = base + cutoff / 50 + rng.normal(0, 0.3)
            _record(regime, seed, value, {"regime.dropout.cutoff_epoch": cutoff}).write(tmp_path)
    return tmp_path


def test_the_table_groups_a_sweep_under_its_base_in_value_order_with_a_column_per_swept_field(swept_records):
    stats = summarise(read_records(swept_records)[0])
    csv = pd.read_csv(__import__("io").StringIO(render(stats, "csv")))
    assert "regime.dropout.cutoff_epoch" in csv.columns
    rows = [line.split(" | ")[2] for line in render(stats, "md").splitlines()[2:] if line.startswith("| vit")]
    assert rows == [
        "early_dropout.cutoff_epoch=5",
        "early_dropout.cutoff_epoch=25",
        "early_dropout.cutoff_epoch=100",
        "no_dropout",
    ]


def test_ablation_csv_holds_the_records_own_means_and_t_intervals(swept_records, cli, tmp_path):
    out = tmp_path / "figures"
    code, printed, err = cli("plot", "ablation", "--results", swept_records, "--x", "cutoff_epoch", "--out", out)
    assert code == 0, err
    table = pd.read_csv(out / "ablation.csv")
    assert list(table.columns[:6]) == ["metric", "x", "mean", "ci_low", "ci_high", "n"]
    records = pd.DataFrame([json.loads(p.read_text()) for p in (swept_records / "records").glob("*.json")])
    for row in table.itertuples():
        values = records[records["regime"] == f"early_dropout.cutoff_epoch={int(row.x)}"]["value"].to_numpy()
        half = scipy_stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
        assert row.n == len(values) == 4
        assert row.mean == pytest.approx(values.mean()) and row.ci_low == pytest.approx(values.mean() - half)
        base = records[records["regime"] == "no_dropout"].sort_values("seed")["value"].to_numpy()
        own = records[records["regime"] == f"early_dropout.cutoff_epoch={int(row.x)}"].sort_values("seed")["value"]
        low, _ = scipy_stats.t.interval(0.95, 3, loc=(own.to_numpy() - base).mean(), scale=scipy_stats.sem(own - base))
        assert row.delta_low == pytest.approx(low)
    assert (out / "ablation_classification__mnist__from_scratch__top1.png").stat().st_size > 10_000
    code, _, err = cli("plot", "ablation", "--results", swept_records, "--x", "rate", "--out", out)
    assert code == 2 and "--x: 'rate' is not one swept field" in err, err


def test_geometric_values_get_a_log_axis():
    assert is_geometric([0.05, 0.1, 0.2, 0.4]) and is_geometric([10, 25, 50, 100])
    assert not is_geometric([1, 2, 3, 4]) and not is_geometric([0.1, 0.2])


# ------------------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_a_real_two_point_sweep_runs_through_suite_compare_and_plot(tmp_path, cli):
    sweep = {"regime": "early_dropout", "sweep": {"dropout.rate": [0.1, 0.3]}}
    path = _suite(tmp_path, regimes=["no_dropout", sweep], seeds=[0, 1], transfers=[])
    code, out, err = cli("suite", path, "--jobs", "2")
    assert code == 0, out + err
    results = tmp_path / "results"
    records = [json.loads(p.read_text()) for p in (results / "records").glob("*.json")]
    swept = [r for r in records if r["regime"].startswith("early_dropout.") and r["metric"] == "top1"]
    assert len(swept) == 4 and {r["sweep"]["regime.dropout.rate"] for r in swept} == {0.1, 0.3}
    code, table, err = cli("compare", "--results", results, "--format", "csv")
    assert code == 0 and "regime.dropout.rate" in table.splitlines()[0], err
    code, printed, err = cli("plot", "ablation", "--results", results, "--x", "dropout.rate", "--out", tmp_path / "f")
    assert code == 0 and (tmp_path / "f" / "ablation.csv").is_file(), err
    figure = pd.read_csv(tmp_path / "f" / "ablation.csv")
    assert set(figure["metric"]) == {"top1", "train_loss"}, "pretraining's headline: top-1 and training loss"
    top1 = figure[figure["metric"] == "top1"]
    assert sorted(top1["x"]) == [0.1, 0.3] and set(top1["n"]) == {2}
    code, out, err = cli("suite", path, "--dry-run")
    assert code == 0 and out.count("finished") >= 3, err


def test_plot_schedules_draws_every_point_of_a_suite_with_its_csv(tmp_path, cli):
    code, out, err = cli("plot", "schedules", _suite(tmp_path), "--out", tmp_path / "schedules.png")
    assert code == 0 and (tmp_path / "schedules.png").stat().st_size > 10_000, err
    rates = pd.read_csv(tmp_path / "schedules.csv")
    assert len(rates.columns) == 5 and len(rates) == 2 * 4  # 2 epochs of 256 images at batch 64
    assert rates["early_dropout.cutoff_epoch=300.rate=0.2 (dropout)"].iloc[0] == pytest.approx(0.2)
