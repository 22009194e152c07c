"""k-NN and few-shot on frozen features: their numbers against scikit-learn's, and the protocols through the CLI,
a suite plan and ``compare``."""

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from dropbench.core.errors import UserInputError
from dropbench.transfer.classification import fit_linear_probe
from dropbench.transfer.feature_protocols import fewshot_indices, knn_memory, knn_predictions

TEMPERATURE = 0.07


def _features(seed: int, train: int = 300, test: int = 80, dim: int = 16, classes: int = 5):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    train_y, test_y = rng.integers(0, classes, train), rng.integers(0, classes, test)
    train_x = centres[train_y] + 1.5 * rng.normal(size=(train, dim))
    test_x = centres[test_y] + 1.5 * rng.normal(size=(test, dim))
    return train_x.astype(np.float32), train_y, test_x.astype(np.float32), test_y


@pytest.mark.parametrize("seed", [0, 1])
def test_knn_votes_as_scikit_learns_cosine_neighbours_weighted_by_exp_similarity_over_t(seed):
    train_x, train_y, test_x, _ = _features(seed)
    ks = (1, 10, 20, 100, 500)  # 500 > the 300 training images: all of them vote
    predicted = knn_predictions(
        torch.from_numpy(train_x), torch.from_numpy(train_y), torch.from_numpy(test_x), 5, ks, TEMPERATURE, chunk=7
    )
    for k in ks:
        reference = KNeighborsClassifier(
            n_neighbors=min(k, len(train_x)),
            metric="cosine",
            algorithm="brute",
            weights=lambda distance: np.exp((1.0 - distance) / TEMPERATURE),
        ).fit(train_x, train_y)
        agree = (predicted[k].numpy() == reference.predict(test_x)).mean()
        assert agree == 1.0, f"k={k}: {agree:.3f} of the predictions agree"


def test_knn_says_the_memory_it_needs():
    bank, chunk = knn_memory(1_281_167, 768, 1024)
    assert bank == pytest.approx(1_281_167 * 768 * 4 / 2**30) and 3.6 < bank < 3.7
    assert chunk == pytest.approx(1024 * 1_281_167 * 4 / 2**30)
    assert knn_memory(100, 8, 1024)[1] == pytest.approx(100 * 100 * 4 / 2**30), "a chunk holds at most the bank"


def test_fewshot_draws_the_same_number_of_images_of_every_class_seeded_by_seed_and_draw():
    labels = np.repeat(np.arange(4), [10, 7, 12, 5])
    first = fewshot_indices(labels, 3, seed=0, draw=0)
    assert np.bincount(labels[first]).tolist() == [3, 3, 3, 3] and len(set(first)) == 12
    assert np.array_equal(first, fewshot_indices(labels, 3, seed=0, draw=0))
    assert not np.array_equal(first, fewshot_indices(labels, 3, seed=0, draw=1))
    assert not np.array_equal(first, fewshot_indices(labels, 3, seed=1, draw=0))
    with pytest.raises(UserInputError) as err:
        fewshot_indices(labels, 6, seed=0, draw=0)
    assert err.value.field == "dataset.fewshot_shots"


def test_a_fewshot_probe_predicts_as_scikit_learns_logistic_regression_at_the_same_c():
    train_x, train_y, test_x, _ = _features(2)
    chosen = fewshot_indices(train_y, 5, seed=0, draw=0)
    probe = fit_linear_probe(torch.from_numpy(train_x[chosen]), torch.from_numpy(train_y[chosen]), 5, c=1.0)
    scaler = StandardScaler().fit(train_x[chosen])
    reference = LogisticRegression(C=1.0, max_iter=5000, tol=1e-8).fit(
        scaler.transform(train_x[chosen]), train_y[chosen]
    )
    agree = (probe.predict(torch.from_numpy(test_x)).numpy() == reference.predict(scaler.transform(test_x))).mean()
    assert agree >= 0.98


@pytest.mark.slow
def test_knn_and_fewshot_through_the_cli_write_records_reports_and_table_columns(cli, tmp_path):
    from tests.test_classification import _transfer_args

    export = _tiny_export(tmp_path)
    results = tmp_path / "results"
    small = ("train_subset=300", "test_subset=200")
    code, _, err = cli(*_transfer_args(export, "sklearn_digits", "knn", tmp_path / "knn", results, *small))
    assert code == 0, err
    report = json.loads((tmp_path / "knn" / "knn.json").read_text())
    records = {r["metric"]: r for r in (json.loads(p.read_text()) for p in (results / "records").glob("*knn*.json"))}
    assert set(records) == {"top1", "top1_k10", "top1_k20", "top1_k100", "top1_k200"}
    assert records["top1"]["value"] == records["top1_k20"]["value"] == report["per_k"]["20"]["top1"]
    assert records["top1"]["protocol"] == "knn" and report["headline_k"] == 20

    shots = ("fewshot_shots=2", "fewshot_subsamples=3")
    code, _, err = cli(*_transfer_args(export, "sklearn_digits", "fewshot", tmp_path / "few", results, *small, *shots))
    assert code == 0, err
    report = json.loads((tmp_path / "few" / "fewshot.json").read_text())
    assert len(report["draws"]) == 3 and report["train_images_per_draw"] == 20
    (record,) = (json.loads(p.read_text()) for p in (results / "records").glob("*2-shot*.json"))
    assert record["value"] == pytest.approx(np.mean([d["top1"] for d in report["draws"]]))

    code, out, err = cli("compare", "--results", results)
    assert code == 0, err
    assert "sklearn_digits knn top-1" in out and "sklearn_digits 2-shot top-1" in out


def _tiny_export(tmp_path):
    from dropbench.core.models import BackboneConfig
    from dropbench.pretrain.config import Recipe, Regime
    from dropbench.pretrain.train import pretrain

    recipe = Recipe.load(
        "cpu", dict(epochs=1, train_subset=256, val_subset=64, batch_size=64, per_device_batch=64, warmup_epochs=0)
    )
    pretrain(BackboneConfig.load("vit_micro"), Regime.load("no_dropout"), recipe, "mnist", tmp_path / "run", None)
    return tmp_path / "run" / "export"


def test_fewshot_with_more_shots_than_a_class_has_is_refused_before_anything_is_written(cli, tmp_path):
    from tests.conftest import make_untrained_export
    from tests.test_classification import _transfer_args

    export = make_untrained_export("vit_micro", tmp_path / "export")
    args = _transfer_args(
        export, "sklearn_digits", "fewshot", tmp_path / "few", tmp_path / "results", "fewshot_shots=500"
    )
    code, _, err = cli(*args)
    assert code == 2 and "dataset.fewshot_shots" in err and err.count("\n") == 1, err
    assert not (tmp_path / "few").exists() and not (tmp_path / "results").exists()


def test_a_suite_takes_the_feature_protocols(tmp_path):
    from dropbench.suite import load_suite

    suite = tmp_path / "s.yaml"
    suite.write_text(
        "name: s\nbackbones: [vit_micro]\nregimes: [no_dropout]\npretrain: {recipe: cpu, data: mnist}\n"
        "transfers:\n  - {kind: cls, dataset: optdigits, protocol: knn}\n"
        "  - {kind: cls, dataset: optdigits, protocol: fewshot, overrides: {fewshot_shots: 1}}\n"
        f"output: {{runs: {tmp_path}/runs, results: {tmp_path}/results}}\n"
    )
    names = [run.name for run in load_suite(suite).runs]
    assert any("knn" in name for name in names) and any("fewshot" in name for name in names)
