import io
import json
import shutil
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from dropbench.compare import paired_t_interval, read_records, render, summarise
from dropbench.core.errors import UserInputError
from dropbench.core.identity import ResultRecord

RECIPE = {"digest": "r" * 16, "overrides": ""}


def _record(
    regime: str,
    seed: int,
    value: float,
    backbone: str = "vit_micro",
    metric: str = "top1",
    recipe_part: dict = RECIPE,
    **changes,
) -> ResultRecord:
    record = ResultRecord(
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
        parts={"backbone": {"digest": backbone * 2, "overrides": ""}, "regime": {"digest": regime, "overrides": ""}}
        | {"recipe": recipe_part},
    )
    return replace(record, **changes)


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
    assert stats.loc["early_dropout", "mean"] == pytest.approx(74)
    assert stats.loc["early_dropout", "std"] == pytest.approx(3)
    assert stats.loc["early_dropout", "delta"] == pytest.approx(2)
    assert stats.loc["late_dropout", "delta"] == pytest.approx(-10)  # paired with seed 0 only: 60 − 70
    assert stats.loc["early_dropout", "n"] == 3 and stats.loc["late_dropout", "n"] == 1
    low, high = stats.loc["early_dropout", ["delta_low", "delta_high"]]
    # paired Δs 1, 2, 3: mean 2, sd 1 → 2 ± t(0.975, 2) / √3
    half = scipy_stats.t.ppf(0.975, 2) / np.sqrt(3)
    assert (low, high) == pytest.approx((2 - half, 2 + half))
    assert np.isnan(stats.loc["late_dropout", "delta_low"]), "one paired seed: no interval"


@pytest.mark.parametrize("n", [2, 3, 5])
def test_the_interval_is_scipys_paired_t_interval(tmp_path, n):
    rng = np.random.default_rng(n)
    base = rng.normal(70, 2, n)
    other = base + rng.normal(0.8, 1.0, n)
    for seed in range(n):
        _record("no_dropout", seed, float(base[seed])).write(tmp_path)
        _record("early_dropout", seed, float(other[seed])).write(tmp_path)
    stats = summarise(read_records(tmp_path)[0]).set_index("regime")
    expected = scipy_stats.ttest_rel(other, base).confidence_interval(0.95)
    got = stats.loc["early_dropout", ["delta_low", "delta_high"]].to_numpy(dtype=float)
    np.testing.assert_allclose(got, [expected.low, expected.high], rtol=1e-9)
    assert paired_t_interval(other - base) == pytest.approx((expected.low, expected.high))
    assert stats.loc["early_dropout", "n_paired"] == n


def test_two_seeds_give_the_wide_t_interval_and_never_claim_significance(tmp_path):
    # paired Δs 0.2 and 0.6: a percentile bootstrap would say [0.2, 0.6]; the t interval is [−2.14, 2.94]
    for seed, (base, early) in enumerate([(70.0, 70.2), (71.0, 71.6)]):
        _record("no_dropout", seed, base).write(tmp_path)
        _record("early_dropout", seed, early).write(tmp_path)
    stats = summarise(read_records(tmp_path)[0]).set_index("regime")
    assert stats.loc["early_dropout", ["delta_low", "delta_high"]].to_numpy(dtype=float) == pytest.approx(
        [-2.141, 2.941], abs=1e-3
    )
    assert not stats.loc["early_dropout", "significant"]


def _significant(folder: Path, pairs: list[tuple[float, float]]) -> bool:
    for seed, (base, early) in enumerate(pairs):
        _record("no_dropout", seed, base).write(folder)
        _record("early_dropout", seed, early).write(folder)
    stats = summarise(read_records(folder)[0])
    marked = "†" in next(line for line in render(stats, "md").splitlines() if "early_dropout" in line)
    significant = bool(stats.set_index("regime").loc["early_dropout", "significant"])
    assert marked == significant
    return significant


def test_significance_needs_three_paired_seeds_and_an_interval_without_zero(tmp_path):
    assert _significant(tmp_path / "a", [(70, 72), (72, 74.5), (74, 77)])  # Δs 2, 2.5, 3: [1.26, 3.74]
    assert not _significant(tmp_path / "b", [(70, 71), (72, 74), (74, 77)])  # Δs 1, 2, 3: [−0.48, 4.48]
    assert not _significant(tmp_path / "c", [(70, 75), (72, 77.1)])  # excludes 0, but only 2 seeds


def test_the_best_mean_is_bold_in_every_format(results):
    stats = summarise(read_records(results)[0])
    markdown = render(stats, "md")
    early_line = next(line for line in markdown.splitlines() if "early_dropout" in line)
    assert "**74.00 ± 3.00** Δ +2.00" in early_line
    assert "**" not in next(line for line in markdown.splitlines() if "| no_dropout" in line)
    assert r"\textbf{74.00" in render(stats, "latex") and r"early\_dropout" in render(stats, "latex")
    assert "<b>74.00" in render(stats, "html")


def test_csv_is_a_tidy_numeric_table(results):
    table = pd.read_csv(io.StringIO(render(summarise(read_records(results)[0]), "csv")))
    assert list(table.columns[:7]) == ["backbone", "recipe", "regime", "task", "dataset", "protocol", "metric"]
    early = table.set_index("regime").loc["early_dropout"]
    assert early["mean"] == pytest.approx(74) and early["n"] == 3 and early["delta"] == pytest.approx(2)
    assert table["mean"].dtype.kind == "f" and table["delta_low"].dtype.kind == "f"
    assert len(table) == 3


def test_different_settings_of_one_name_are_separate_labelled_variants(tmp_path):
    short = {"digest": "s" * 16, "overrides": "epochs=4"}
    for seed in range(2):
        _record("no_dropout", seed, 70.0 + seed).write(tmp_path / "demo")
        _record("no_dropout", seed, 60.0 + seed, recipe_part=short).write(tmp_path / "suite")
        _record("early_dropout", seed, 72.0 + seed, recipe_part=short).write(tmp_path / "suite")
    stats = summarise(read_records(tmp_path)[0]).set_index(["recipe", "regime"])
    assert stats.loc[("cpu", "no_dropout"), "mean"] == pytest.approx(70.5), "never averaged with the other variant"
    assert stats.loc[("cpu·epochs=4", "no_dropout"), "mean"] == pytest.approx(60.5)
    assert stats.loc[("cpu·epochs=4", "early_dropout"), "delta"] == pytest.approx(12), "Δ within its own variant"
    assert np.isnan(stats.loc[("cpu", "no_dropout"), "delta"])


def test_variants_whose_overrides_agree_are_told_apart_by_their_digest(tmp_path):
    _record("no_dropout", 0, 70.0).write(tmp_path / "a")
    _record("no_dropout", 0, 50.0, recipe_part={"digest": "e" * 16, "overrides": ""}).write(tmp_path / "b")
    recipes = set(summarise(read_records(tmp_path)[0])["recipe"])
    assert recipes == {"cpu·#rrrrrr", "cpu·#eeeeee"}


def test_the_same_run_found_twice_counts_once_with_a_warning_naming_both(results, tmp_path_factory):
    both = tmp_path_factory.mktemp("both")
    shutil.copytree(results / "records", both / "one" / "records")
    shutil.copytree(results / "records", both / "two" / "records")
    warnings = []
    stats = summarise(read_records(both)[0], warn=warnings.append).set_index("regime")
    assert stats.loc["early_dropout", "n"] == 3
    assert len(warnings) == 7 and all("one/records" in w and "two/records" in w for w in warnings)


def test_old_records_with_different_config_hashes_stay_two_experiments(tmp_path):
    """Records written before settings parts existed carry only a ``config_hash``: it tells them apart."""
    for config_hash, values in (("60aa", (60.0, 62.0)), ("80bb", (80.0, 82.0))):
        for seed, value in enumerate(values):
            old = asdict(_record("no_dropout", seed, value, config_hash=config_hash))
            del old["parts"], old["transfer_seed"]
            path = tmp_path / "records" / f"{config_hash}-{seed}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(old))
    warnings = []
    stats = summarise(read_records(tmp_path)[0], warn=warnings.append).set_index("recipe")
    assert warnings == []
    assert stats.loc["cpu·legacy·#60aa", "mean"] == pytest.approx(61) and stats.loc["cpu·legacy·#60aa", "n"] == 2
    assert stats.loc["cpu·legacy·#80bb", "mean"] == pytest.approx(81)


def test_records_of_the_old_format_stay_readable(results):
    old = asdict(_record("standard_dropout", 0, 65.0))
    del old["parts"], old["transfer_seed"]
    (results / "records" / "old.json").write_text(json.dumps(old))
    records, skipped = read_records(results)
    assert not skipped and len(records) == 8
    assert summarise(records).set_index("regime").loc["standard_dropout", "mean"] == pytest.approx(65.0)


def test_superseded_records_are_not_read(results):
    superseded = results / "records" / "superseded"
    superseded.mkdir()
    (superseded / "x.json").write_text(json.dumps(asdict(_record("no_dropout", 9, 0.0))))
    assert len(read_records(results)[0]) == 7


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


def test_the_records_format_shows_every_field_of_the_record_type(cli, results):
    """Record columns come from the record type: a field added to ResultRecord reaches --format records unnamed."""
    code, out, err = cli("compare", "--results", results, "--format", "records")
    assert code == 0, err
    frame = pd.read_csv(io.StringIO(out))
    assert list(frame.columns) == [*(f.name for f in fields(ResultRecord)), "path"]
    assert len(frame) == 7 and frame["value"].notna().all() and frame["config_hash"].notna().all()
    first = json.loads(Path(frame["path"][0]).read_text())
    row = frame[frame["path"] == frame["path"][0]].iloc[0]
    assert all(str(row[name]) == str(first[name]) for name in first if name not in ("parts", "transfer_seed"))
    assert json.loads(row["parts"]) == first["parts"]


def test_paper_numbers_are_shown_only_when_asked(cli, results):
    paper = results / "paper"
    paper.mkdir()
    record = asdict(_record("early_sd", 0, 74.4, backbone="vit_tiny")) | {"config_hash": "paper", "recipe": "basic"}
    (paper / "vit_tiny.json").write_text(json.dumps(record))
    assert "vit_tiny" not in cli("compare", "--results", results)[1]
    assert "basic (paper)" in cli("compare", "--results", results, "--include-paper")[1]


def test_the_shipped_paper_numbers_join_any_results_folder(cli, results):
    out = cli("compare", "--results", results, "--include-paper", "--format", "csv")[1]
    table = pd.read_csv(io.StringIO(out))
    paper = table[table["recipe"] == "basic (paper)"]
    assert len(paper) > 0 and set(paper["dataset"]) == {"imagenet-1k"}


def test_the_shipped_paper_records_are_valid_records():
    records, skipped = read_records(Path(__file__).resolve().parents[1] / "results", include_paper=True)
    paper = records[records["config_hash"] == "paper"]
    assert not skipped and len(paper) == 35
    early = paper[(paper.backbone == "vit_tiny") & (paper.regime == "early_dropout") & (paper.recipe == "basic")]
    assert early["value"].tolist() == [74.3]


def test_a_transfer_seed_is_a_unit_of_its_single_pretraining_seed(tmp_path):
    task = {"digest": "t" * 16, "overrides": ""}
    for transfer_seed, value in enumerate([10.0, 14.0]):
        _record(
            "no_dropout",
            0,
            value,
            stage="transfer",
            task="detection",
            dataset="coco_digits",
            protocol="mask_rcnn_cpu",
            metric="box_AP",
            transfer_seed=transfer_seed,
            parts=_record("no_dropout", 0, 0).parts | {"task": task},
        ).write(tmp_path)
    cell = summarise(read_records(tmp_path)[0]).iloc[0]
    assert (cell["n"], cell["mean"], cell["std"]) == (2, pytest.approx(12.0), pytest.approx(2 * np.sqrt(2)))


@pytest.mark.slow
def test_summarising_many_records_is_fast():
    rng = np.random.default_rng(0)
    n = 100_000
    frame = pd.DataFrame(
        {
            "backbone": rng.choice([f"b{i}" for i in range(10)], n),
            "recipe": "cpu",
            "regime": rng.choice(["no_dropout", "early_dropout", "late_dropout", "standard_dropout"], n),
            "stage": "transfer",
            "task": "classification",
            "dataset": rng.choice([f"d{i}" for i in range(25)], n),
            "protocol": "p",
            "metric": "top1",
            "seed": rng.integers(0, 10, n),
            "transfer_seed": 0,
            "value": rng.normal(70, 2, n),
            "config_hash": "h",
            "finished": "f",
            "path": [f"p{i}" for i in range(n)],
            "parts": [{} for _ in range(n)],
        }
    )
    start = time.perf_counter()
    stats = summarise(frame)
    render(stats, "md")
    assert time.perf_counter() - start < 30  # a generous bound for a loaded CI machine; see benchmarks/
    assert len(stats) == 10 * 4 * 25


def test_the_noise_floor_pools_seed_stds_and_gives_the_minimum_detectable_delta(results):
    from dropbench.compare import noise_floor

    stats = summarise(read_records(results)[0])
    (floor,) = noise_floor(stats).itertuples(index=False)
    # no_dropout std 2, early_dropout std 3 (2 df each): pooled √((4·2 + 9·2) / 4); paired Δs 1, 2, 3: sd 1
    assert floor.seed_std == pytest.approx(np.sqrt(26 / 4)) and floor.df == 4
    assert floor.delta_sd == pytest.approx(1.0)
    assert floor.min_detectable_delta == pytest.approx(scipy_stats.t.ppf(0.975, 2) / np.sqrt(3))
    text = render(stats, "md")
    assert "noise floor" in text and f"min detectable Δ {floor.min_detectable_delta:.2f}" in text


def test_the_delta_figure_has_a_bar_per_headline_cell_without_the_reference_row(results, tmp_path):
    from dropbench.deltas import delta_table, plot_delta_table

    for seed, value in enumerate((-14.0, -12.0, -10.0)):  # random init: far below the regime Δs
        _record("random_init", seed, value).write(results)
        _record("no_dropout", seed, 70.0 + seed, metric="top5").write(results)  # not a headline metric
    stats = summarise(read_records(results)[0])
    table = delta_table(stats)
    assert set(table["metric"]) == {"top1"}
    assert set(table["regime"]) == {"early_dropout", "late_dropout"} and "random_init" in set(stats["regime"])
    png, _ = plot_delta_table(table, tmp_path / "figures")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_delta_figure_without_a_baseline_says_so(tmp_path):
    """A suite whose baseline runs failed: the figure is drawn, with a line saying there is no Δ, not a crash."""
    from dropbench.deltas import delta_table, plot_delta_table

    for seed in range(2):
        _record("random_init", seed, 9.0 + seed).write(tmp_path)
        _record("early_dropout", seed, 70.0 + seed).write(tmp_path)
    stats = summarise(read_records(tmp_path)[0])
    assert stats["delta"].isna().all() and delta_table(stats).empty
    png, csv_file = plot_delta_table(delta_table(stats), tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and csv_file.read_text().startswith("backbone,")


@pytest.fixture
def two_tasks(tmp_path):
    """no/early dropout over 3 seeds: pretraining top-1 and top-5, and a detection transfer's box AP and AP50."""
    for seed in range(3):
        for regime, shift in (("no_dropout", 0.0), ("early_dropout", 1.0 + seed)):
            _record(regime, seed, 70.0 + seed + shift).write(tmp_path)
            _record(regime, seed, 90.0 + seed, metric="top5").write(tmp_path)
            for metric, value in (("box_AP", 40.0), ("box_AP50", 60.0)):
                task = dict(stage="transfer", task="detection", dataset="coco", protocol="1x", transfer_seed=0)
                _record(regime, seed, value + seed + shift / 2, metric=metric, **task).write(tmp_path)
    return summarise(read_records(tmp_path)[0])


# Reference renderings of the two_tasks table: headline metrics, grouped columns, n once per row.
REFERENCE = Path(__file__).resolve().parent / "reference"


def test_the_headline_table_matches_its_reference_rendering_in_markdown_and_latex(two_tasks):
    assert render(two_tasks, "md").split("\n\n")[0] + "\n" == (REFERENCE / "compare_two_tasks.md").read_text()
    assert render(two_tasks, "latex") == (REFERENCE / "compare_two_tasks.tex").read_text()


def test_all_metrics_and_a_list_are_one_flag_away_and_csv_keeps_every_metric(two_tasks):
    header = render(two_tasks, "md", "all").splitlines()[0]
    assert "coco 1x box_AP50" in header and "mnist from_scratch top-5" in header
    assert render(two_tasks, "md", "box_AP50").splitlines()[0].endswith("| coco 1x box_AP50 |")
    assert set(pd.read_csv(io.StringIO(render(two_tasks, "csv")))["metric"]) == {"top1", "top5", "box_AP", "box_AP50"}
    with pytest.raises(UserInputError, match="--metrics"):
        render(two_tasks, "md", "box_AP99")


def test_html_is_one_self_contained_file_with_grouped_headers(two_tasks):
    html = render(two_tasks, "html")
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert "<style>" in html and "src=" not in html and "href=" not in html
    assert '<th colspan="1" halign="left">coco 1x</th>' in html or ">coco 1x</th>" in html
    assert "<b>73.00 ± 2.00</b> Δ +2.00 [-0.48, +4.48]" in html


def test_the_html_table_renders_in_a_headless_browser(two_tasks, tmp_path):
    """Chromium (headless) opens the HTML file and its screenshot shows a table: dark text on a light page, over
    the width of a table with grouped columns."""
    import shutil
    import subprocess

    from PIL import Image

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium to load the HTML table (apt-get install chromium)")
    page, shot = tmp_path / "table.html", tmp_path / "table.png"
    page.write_text(render(two_tasks, "html"), encoding="utf-8")
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}"]
    command += ["--window-size=1200,500", "--hide-scrollbars", page.as_uri()]
    subprocess.run(command, capture_output=True, timeout=120, check=False)
    with Image.open(shot) as image:
        gray = np.asarray(image.convert("L"))
    dark_columns = np.flatnonzero((gray < 100).any(axis=0))
    assert (gray > 200).mean() > 0.5, "a light page"
    assert dark_columns.size and dark_columns[-1] - dark_columns[0] > 500, "text across a table's width"
