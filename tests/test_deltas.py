"""``dropbench plot deltas``: deltas.csv holds the records' own paired Δs, intervals and noise floors; an n = 1 Δ is
never significant and is drawn against its column's floor; panels of one unit share a scale."""

import csv
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from dropbench.compare import read_records, summarise
from dropbench.deltas import (
    DELTA_COLUMNS,
    beyond_floor_line,
    column_units,
    delta_table,
    shared_y_limits,
    shipped_floors,
)
from tests.test_compare import _record

# top-1 per seed: no_dropout, early_dropout, standard_dropout; train loss (nats) per seed: no_dropout, early_dropout
TOP1 = [(70.0, 71.5, 68.0), (72.0, 74.0, 71.0), (74.0, 76.0, 72.5), (71.0, 73.5, 69.0)]
LOSS = [(0.50, 0.46), (0.48, 0.45), (0.52, 0.47), (0.49, 0.47)]


@pytest.fixture
def results(tmp_path):
    for seed, (base, early, standard) in enumerate(TOP1):
        _record("no_dropout", seed, base).write(tmp_path)
        _record("early_dropout", seed, early).write(tmp_path)
        _record("standard_dropout", seed, standard).write(tmp_path)
    for seed, (base, early) in enumerate(LOSS):
        _record("no_dropout", seed, base, metric="train_loss", unit="nats").write(tmp_path)
        _record("early_dropout", seed, early, metric="train_loss", unit="nats").write(tmp_path)
    return tmp_path


def _csv_rows(path) -> dict[tuple[str, str], dict]:
    with path.open(newline="") as f:
        return {(row["regime"], row["metric"]): row for row in csv.DictReader(f)}


def test_deltas_csv_holds_the_records_own_paired_deltas_intervals_and_measured_floors(cli, results, tmp_path):
    code, out, err = cli("plot", "deltas", "--results", results, "--out", tmp_path / "figures")
    assert code == 0, err
    assert (tmp_path / "figures" / "deltas.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = _csv_rows(tmp_path / "figures" / "deltas.csv")
    assert set(rows) == {("early_dropout", "top1"), ("standard_dropout", "top1"), ("early_dropout", "train_loss")}
    t3 = scipy_stats.t.ppf(0.975, 3)
    top1_sds = []
    for regime, index in (("early_dropout", 1), ("standard_dropout", 2)):
        paired = np.array([seed[index] - seed[0] for seed in TOP1])
        half = t3 * paired.std(ddof=1) / np.sqrt(4)
        row = rows[(regime, "top1")]
        assert float(row["delta"]) == pytest.approx(paired.mean())
        interval = (float(row["ci_low"]), float(row["ci_high"]))
        assert interval == pytest.approx((paired.mean() - half, paired.mean() + half))
        assert row["n"] == "4" and row["significant"] == "True" and row["unit"] == "%"
        top1_sds.append(paired.std(ddof=1))
    # the floor: t(0.975, 6) × the paired sd pooled over both regimes' rows (3 df each), from these records
    pooled = np.sqrt(np.mean(np.square(top1_sds)))
    assert float(rows[("early_dropout", "top1")]["noise_floor"]) == pytest.approx(scipy_stats.t.ppf(0.975, 6) * pooled)
    assert rows[("early_dropout", "top1")]["floor_source"].startswith("measured")
    loss = rows[("early_dropout", "train_loss")]
    paired = np.array([early - base for base, early in LOSS])
    assert float(loss["delta"]) == pytest.approx(paired.mean()) and loss["unit"] == "nats"


def test_a_single_seed_delta_is_never_significant_and_gets_the_shipped_floor_of_its_column(tmp_path):
    floors = shipped_floors()
    shipped = floors.set_index(["task", "dataset", "protocol", "metric"]).loc[
        ("classification", "mnist", "from_scratch", "top1")
    ]
    for regime, value in (("no_dropout", 70.0), ("early_dropout", 95.0)):  # far beyond any floor, yet one seed
        _record(regime, 0, value).write(tmp_path)
    table = delta_table(summarise(read_records(tmp_path)[0]))
    (row,) = table.itertuples(index=False)
    assert row.n == 1 and not row.significant and np.isnan(row.ci_low)
    expected = scipy_stats.t.ppf(0.975, int(shipped["paired_df"])) * shipped["delta_sd"]
    assert row.noise_floor == pytest.approx(expected) and "sensitivity" in row.floor_source
    line = beyond_floor_line(table)
    assert line.startswith("n = 1: 1 of 1 regime Δs exceed") and "regimes_embedded.yaml" in line


def test_a_single_seed_delta_without_a_known_floor_says_so(tmp_path):
    for regime, value in (("no_dropout", 70.0), ("early_dropout", 70.5)):
        _record(regime, 0, value, dataset="fashion_mnist").write(tmp_path)
    table = delta_table(summarise(read_records(tmp_path)[0]))
    assert table["noise_floor"].isna().all() and not table["significant"].any()
    assert "no noise floor is known" in beyond_floor_line(table)


def test_two_seeds_draw_an_interval_but_are_not_significant(tmp_path):
    for seed, (base, early) in enumerate([(70.0, 75.0), (71.0, 76.1)]):
        _record("no_dropout", seed, base).write(tmp_path)
        _record("early_dropout", seed, early).write(tmp_path)
    (row,) = delta_table(summarise(read_records(tmp_path)[0])).itertuples(index=False)
    assert row.n == 2 and row.ci_low > 0 and not row.significant


def test_panels_of_one_unit_share_a_scale_and_a_loss_keeps_its_own(results, tmp_path):
    records, _ = read_records(results)
    for regime, value in (("no_dropout", 40.0), ("early_dropout", 45.0)):  # another percent column, a larger Δ
        _record(regime, 0, value, protocol="linear", stage="transfer", transfer_seed=0).write(tmp_path)
    more, _ = read_records(tmp_path)
    records = pd.concat([records, more], ignore_index=True)
    table = delta_table(summarise(records), column_units(records))
    limits = shared_y_limits(table)
    assert set(limits) == {"%", "nats"}
    low, high = limits["%"]
    percent = table[table["unit"] == "%"]
    assert low <= percent["ci_low"].min() and high >= 5.0, "one range holds the small top-1 Δs and the +5 probe Δ"
    assert limits["nats"][1] - limits["nats"][0] < 0.2


def test_the_csv_has_the_columns_a_reader_needs(results, tmp_path):
    from dropbench.deltas import plot_delta_table

    records, _ = read_records(results)
    _, path = plot_delta_table(delta_table(summarise(records), column_units(records)), tmp_path)
    header = path.read_text().splitlines()[0].split(",")
    assert header == DELTA_COLUMNS
    for name in ("metric", "regime", "delta", "ci_low", "ci_high", "n", "noise_floor", "significant"):
        assert name in header


def test_plot_deltas_of_a_missing_folder_is_a_one_line_error(cli, tmp_path):
    code, _, err = cli("plot", "deltas", "--results", tmp_path / "none", "--out", tmp_path)
    assert code == 2 and err.count("\n") == 1 and "--results" in err
    assert not (tmp_path / "deltas.png").exists()


def test_the_loss_column_is_marked_lower_is_better_and_its_lowest_mean_is_bold(results):
    from dropbench.compare import render

    table = render(summarise(read_records(results)[0]), "md")
    header, _, *rows = table.splitlines()
    assert "train loss ↓" in header
    early = next(line for line in rows if "| early_dropout |" in line)
    assert "**0.463" in early, "early dropout's loss (mean 0.4625) is the lowest: bold"


def test_the_table_says_which_regime_of_the_paper_each_model_is_in(results, tmp_path):
    from dropbench.compare import regime_verdicts

    (line,) = regime_verdicts(summarise(read_records(results)[0]))
    assert "standard_dropout − no_dropout" in line and "underfitting" in line and "early_dropout" in line
    assert "(n=4)" in line and "[" in line
    for seed, (base, standard) in enumerate([(70.0, 72.0), (71.0, 73.2), (72.0, 73.9)]):
        _record("no_dropout", seed, base, backbone="vit_tiny").write(tmp_path)
        _record("standard_sd", seed, standard, backbone="vit_tiny").write(tmp_path)
    _record("no_dropout", 0, 70.0, backbone="swin_micro").write(tmp_path)
    _record("standard_dropout", 0, 60.0, backbone="swin_micro").write(tmp_path)
    lines = regime_verdicts(summarise(read_records(tmp_path)[0]))
    over = next(line for line in lines if line.startswith("vit_tiny"))
    assert "overfitting" in over and "late_sd" in over
    single = next(line for line in lines if line.startswith("swin_micro"))
    assert "neither" in single and "n < 3" in single
    assert regime_verdicts(summarise(read_records(tmp_path)[0], baseline="standard_dropout")) == []


def test_records_carry_their_metric_unit(tmp_path):
    record = replace(_record("no_dropout", 0, 0.5, metric="train_loss"), unit="nats")
    record.write(tmp_path)
    records, _ = read_records(tmp_path)
    assert column_units(records) == {("classification", "mnist", "from_scratch", "train_loss"): "nats"}


def test_floors_written_from_a_sensitivity_run_are_the_floors_a_single_seed_delta_is_drawn_against(results, tmp_path):
    from dropbench.deltas import write_floors

    measured = summarise(read_records(results)[0])
    path = write_floors(measured, "test suite, 4 seeds", tmp_path / "floors" / "test.csv")
    floors = shipped_floors(tmp_path / "floors")
    assert set(floors["metric"]) == {"top1", "train_loss"} and set(floors["source"]) == {"test suite, 4 seeds"}
    single = tmp_path / "single"
    for regime, value in (("no_dropout", 70.0), ("early_dropout", 71.0)):
        _record(regime, 0, value).write(single)
    (row,) = delta_table(summarise(read_records(single)[0]), floors=floors).itertuples(index=False)
    expected = delta_table(measured)
    assert row.noise_floor == pytest.approx(expected["noise_floor"].iloc[0], rel=1e-3) and path.is_file()
    assert row.floor_source == "test suite, 4 seeds"
