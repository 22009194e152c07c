"""How well a classifier's probabilities match its accuracy: expected calibration error (15 equal-width
confidence bins, torchmetrics' ``multiclass_calibration_error``), negative log-likelihood and Brier score, before
and after temperature scaling (Guo et al. 2017: one scalar T dividing the logits, fitted by NLL on held-out
logits), and the reliability diagram that draws them.

``calibration_split`` halves a labelled set with a fixed seed: T is fitted on one half and every calibration number
is measured on the other, so T is never fitted on the images it is judged on.
"""

from pathlib import Path

import numpy as np
import torch
from torch import nn

from dropbench.core.identity import NATS, PERCENT
from dropbench.core.io import atomic_write_csv, save_png

ECE_BINS = 15
SPLIT_SEED = 0
# each metric's unit in its record (Brier's is a squared distance between probability vectors)
UNITS = {"ece": PERCENT, "nll": NATS, "brier": "brier", "temperature": "T"}
UNITS |= {f"{name}_ts": UNITS[name] for name in ("ece", "nll", "brier")}


def calibration_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """ECE (percent, 15 bins, L1), NLL (nats) and Brier score (the mean over images of the squared distance between
    the probability vector and the one-hot label, summed over classes)."""
    # imported here: torchmetrics costs every process that loads this module about a second (scipy.signal)
    from torchmetrics.functional.classification import multiclass_calibration_error

    logits, labels = logits.double(), labels.long()
    probabilities = logits.softmax(dim=1)
    classes = logits.shape[1]
    ece = multiclass_calibration_error(probabilities, labels, num_classes=classes, n_bins=ECE_BINS, norm="l1")
    brier = (probabilities - nn.functional.one_hot(labels, classes).double()).square().sum(dim=1).mean()
    return {
        "ece": 100.0 * float(ece),
        "nll": float(nn.functional.cross_entropy(logits, labels)),
        "brier": float(brier),
    }


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 that minimises the NLL of ``logits / T`` (L-BFGS on log T, from T = 1)."""
    logits, labels = logits.double(), labels.long()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def calibration_split(count: int) -> tuple[np.ndarray, np.ndarray]:
    """``(fit, measure)`` indices: a seeded half of ``count`` images to fit T on, the rest to measure on."""
    order = np.random.default_rng(SPLIT_SEED).permutation(count)
    return np.sort(order[: count // 2]), np.sort(order[count // 2 :])


def calibrate(logits: torch.Tensor, labels: torch.Tensor) -> tuple[dict[str, float], dict[str, list]]:
    """Every calibration metric before and after temperature scaling, and the fitted ``temperature``; with the
    reliability bins of both (``reliability_bins``) for the diagram."""
    fit, measure = (torch.from_numpy(indices) for indices in calibration_split(len(labels)))
    temperature = fit_temperature(logits[fit], labels[fit])
    before = calibration_metrics(logits[measure], labels[measure])
    after = calibration_metrics(logits[measure] / temperature, labels[measure])
    metrics = before | {f"{name}_ts": value for name, value in after.items()} | {"temperature": temperature}
    bins = {
        "before": reliability_bins(logits[measure], labels[measure]),
        "after": reliability_bins(logits[measure] / temperature, labels[measure]),
    }
    return metrics, bins


def reliability_bins(logits: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> list[dict]:
    """Per equal-width confidence bin: its range, the images in it, their mean confidence and their accuracy."""
    confidence, predicted = logits.double().softmax(dim=1).max(dim=1)
    correct = predicted.eq(labels.long()).double()
    rows = []
    for index in range(bins):
        low, high = index / bins, (index + 1) / bins
        inside = (confidence > low) & (confidence <= high)
        count = int(inside.sum())
        rows.append(
            {
                "low": low,
                "high": high,
                "count": count,
                "confidence": float(confidence[inside].mean()) if count else float("nan"),
                "accuracy": float(correct[inside].mean()) if count else float("nan"),
            }
        )
    return rows


def plot_reliability(bins: dict[str, list[dict]], out: str | Path, title: str = "") -> list[Path]:
    """``out`` (PNG): accuracy against confidence per bin, before and after temperature scaling, with the diagonal a
    calibrated classifier lies on and each bin's share of the images; ``out`` with ``.csv``: the bins it draws."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, share) = plt.subplots(2, 1, figsize=(5.2, 5.6), dpi=120, sharex=True, height_ratios=(3, 1))
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="calibrated")
    rows = []
    for (label, own), colour in zip(bins.items(), ("tab:red", "tab:blue"), strict=False):
        middles = [(b["low"] + b["high"]) / 2 for b in own]
        accuracy = [b["accuracy"] for b in own]
        ax.plot(middles, accuracy, marker="o", markersize=3, color=colour, label=f"{label} temperature scaling")
        total = max(sum(b["count"] for b in own), 1)
        share.bar(middles, [b["count"] / total for b in own], width=0.9 / len(own), color=colour, alpha=0.5)
        rows += [{"scaling": label, **b} for b in own]
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    share.set_xlabel("confidence (top-class probability)")
    share.set_ylabel("images")
    if title:
        ax.set_title(title, fontsize=8)
    png = save_png(fig, out)
    return [png, atomic_write_csv(Path(out).with_suffix(".csv"), ["scaling", *rows[0]], rows)]
