"""ECE, NLL, Brier and temperature scaling against hand computations."""

import numpy as np
import pytest
import torch

from dropbench.core.calibration import (
    calibrate,
    calibration_metrics,
    calibration_split,
    fit_temperature,
    reliability_bins,
)


def _hand_ece(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    confidence, predicted = probabilities.max(axis=1), probabilities.argmax(axis=1)
    total = 0.0
    for index in range(bins):
        inside = (confidence > index / bins) & (confidence <= (index + 1) / bins)
        if inside.any():
            total += inside.mean() * abs((predicted[inside] == labels[inside]).mean() - confidence[inside].mean())
    return 100.0 * total


def test_ece_nll_and_brier_are_the_hand_computed_ones():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(400, 4)) * 2
    labels = rng.integers(0, 4, 400)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    metrics = calibration_metrics(torch.from_numpy(logits), torch.from_numpy(labels))
    assert metrics["ece"] == pytest.approx(_hand_ece(probabilities, labels), abs=1e-4)
    assert metrics["nll"] == pytest.approx(-np.log(probabilities[np.arange(400), labels]).mean())
    assert metrics["brier"] == pytest.approx(((probabilities - np.eye(4)[labels]) ** 2).sum(axis=1).mean())


def test_a_perfectly_confident_correct_classifier_has_zero_ece_and_brier():
    logits = torch.full((10, 3), -50.0)
    labels = torch.arange(10) % 3
    logits[torch.arange(10), labels] = 50.0
    metrics = calibration_metrics(logits, labels)
    assert metrics["ece"] == pytest.approx(0, abs=1e-9) and metrics["brier"] == pytest.approx(0, abs=1e-9)


def test_temperature_scaling_recovers_the_temperature_that_made_logits_overconfident():
    rng = np.random.default_rng(1)
    calibrated = torch.from_numpy(rng.normal(size=(20_000, 5)) * 1.5)
    labels = torch.multinomial(calibrated.softmax(dim=1), 1).squeeze(1)  # labels drawn from the model itself
    assert fit_temperature(3.0 * calibrated, labels) == pytest.approx(3.0, rel=0.05)
    metrics, bins = calibrate(3.0 * calibrated, labels)
    assert metrics["temperature"] == pytest.approx(3.0, rel=0.05)
    assert metrics["ece_ts"] < metrics["ece"] / 3 and metrics["nll_ts"] < metrics["nll"]
    assert sum(b["count"] for b in bins["before"]) == len(labels) - len(labels) // 2


def test_the_split_fits_and_measures_on_disjoint_seeded_halves():
    fit, measure = calibration_split(101)
    assert len(fit) == 50 and len(measure) == 51 and not set(fit) & set(measure)
    assert np.array_equal(fit, calibration_split(101)[0])


def test_reliability_bins_count_every_image_once():
    logits = torch.randn(300, 6)
    rows = reliability_bins(logits, torch.randint(0, 6, (300,)))
    assert len(rows) == 15 and sum(r["count"] for r in rows) == 300
