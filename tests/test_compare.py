import json
import time
from dataclasses import asdict

import numpy as np
import pytest

from dropbench.compare import paired_bootstrap_interval, read_records, render, summarise
from dropbench.records import ResultRecord


def _record(regime: str, seed: int, value: float, backbone: str = "vit_micro", metric: str = "top1") -> ResultRecord:
    return ResultRecord(
        backbone=backbone,
        model="m",
        regime=regime,
        recipe="cpu",
        seed=seed,
        stage="pretrain",
        task="classification",
        dataset="mnist",
        protocol="from_scratch",
        metric=metric,
        value=value,
        unit="%",
        config_hash="h",
        code_version="v",
        started="s",
        finished="f",
        run_dir="r",
    )


@pytest.fixture
def results(tmp_path):
    # no_dropout: 70, 72, 74 (mean 72, std 2); early_dropout: 71, 74, 77 (mean 74, std 3) → Δ +2, paired Δs 1, 2, 3
    for seed, (base, early) in enumerate([(70, 71), (72, 74), (74, 77)]):
        _record("no_dropout", seed, base).write(tmp_path)
        _record("early_dropout", seed, early).write(tmp_path)
    _record("late_dropout", 0, 60).write(tmp_path)
    return tmp_path


def test_means_stds_deltas_and_counts_match_hand_computed_values(results):
    stats = summarise(read_records(results)[0]).set_index("regime")
    assert stats.loc["no_dropout", "mean"] == pytest.approx(72) and stats.loc["no_dropout", "std"] == pytest.approx(2)
    assert stats.loc["early_dropout", "mean"] == pytest.approx(74) and stats.loc[
        "early_dropout", "std"
    ] == pytest.approx(3)
    assert stats.loc["early_dropout", "delta"] == pytest.approx(2) and stats.loc[
        "late_dropout", "delta"
    ] == pytest.approx(-12)
    assert stats.loc["early_dropout", "n"] == 3 and stats.loc["late_dropout", "n"] == 1
    low, high = stats.loc["early_dropout", ["delta_low", "delta_high"]]
    assert 1 <= low <= 2 <= high <= 3  # the bootstrap of paired Δs 1, 2, 3 stays within their range
    assert np.isnan(stats.loc["late_dropout", "delta_low"]), "one seed: no interval"


def test_the_best_mean_is_bold_in_every_format(results):
    stats = summarise(read_records(results)[0])
    markdown = render(stats, "md")
    early_line = next(line for line in markdown.splitlines() if "early_dropout" in line)
    assert "**74.00 ± 3.00 (n=3)** Δ +2.00" in early_line
    assert "**" not in next(line for line in markdown.splitlines() if "| no_dropout" in line)
    assert r"\textbf{74.00" in render(stats, "latex") and r"early\_dropout" in render(stats, "latex")
    assert "<b>74.00" in render(stats, "html")
    assert "74.00 ± 3.00 (n=3) Δ +2.00" in render(stats, "csv") and "**" not in render(stats, "csv")


def test_the_bootstrap_interval_covers_a_known_difference():
    rng = np.random.default_rng(1)
    deltas = 1.5 + rng.normal(0, 0.5, size=12)
    low, high = paired_bootstrap_interval(deltas)
    assert low < 1.5 < high and high - low < 1.0
    assert paired_bootstrap_interval(np.full(5, 0.7)) == pytest.approx((0.7, 0.7))


def test_corrupt_and_foreign_files_are_named_and_skipped_without_losing_records(results):
    (results / "records" / "broken.json").write_text("{not json")
    (results / "records" / "foreign.json").write_text(json.dumps({"hello": 1}))
    records, skipped = read_records(results)
    assert len(records) == 7
    assert any("broken.json" in s and "not valid JSON" in s for s in skipped)
    assert any("foreign.json" in s and "not a result record" in s for s in skipped)


def test_the_compare_command_prints_the_table_and_warns(cli, results):
    (results / "records" / "broken.json").write_text("{")
    code, out, err = cli("compare", "--results", results, "--format", "md")
    assert code == 0 and "early_dropout" in out and "broken.json" in err


def test_paper_numbers_are_shown_only_when_asked(cli, results):
    paper = results / "paper"
    paper.mkdir()
    record = asdict(_record("early_sd", 0, 74.4, backbone="vit_tiny")) | {"config_hash": "paper", "recipe": "basic"}
    (paper / "vit_tiny.json").write_text(json.dumps(record))
    assert "vit_tiny" not in cli("compare", "--results", results)[1]
    assert "basic (paper)" in cli("compare", "--results", results, "--include-paper")[1]


def test_the_shipped_paper_records_are_valid_records():
    from pathlib import Path

    records, skipped = read_records(Path(__file__).resolve().parents[1] / "results", include_paper=True)
    paper = records[records["config_hash"] == "paper"]
    assert not skipped and len(paper) == 35
    early = paper[
        (paper.backbone == "vit_tiny") & (paper.regime == "early_dropout") & (paper.recipe == "basic (paper)")
    ]
    assert early["value"].tolist() == [74.3]


@pytest.mark.slow
def test_summarising_many_records_is_fast():
    rng = np.random.default_rng(0)
    import pandas as pd

    n = 100_000
    frame = pd.DataFrame(
        {
            "backbone": rng.choice([f"b{i}" for i in range(10)], n),
            "recipe": "cpu",
            "regime": rng.choice(["no_dropout", "early_dropout", "late_dropout", "standard_dropout"], n),
            "task": "classification",
            "dataset": rng.choice([f"d{i}" for i in range(25)], n),
            "protocol": "p",
            "metric": "top1",
            "seed": rng.integers(0, 10, n),
            "value": rng.normal(70, 2, n),
        }
    )
    start = time.perf_counter()
    stats = summarise(frame)
    render(stats, "md")
    assert time.perf_counter() - start < 30  # a generous bound for a loaded CI machine; see benchmarks/
    assert len(stats) == 10 * 4 * 25
