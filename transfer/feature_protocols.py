"""Protocols on frozen features, from the features cache the linear probe fills: k-NN and few-shot.

- ``knn`` (DINOv2's ``eval/knn.py``, after Wu et al. 2018): features L2-normalised; each test image's most similar
  training images (cosine) vote for their class with weight ``exp(similarity / T)``, ``T = knn_temperature``
  (0.07). One pass over the test set, in chunks of ``knn_chunk`` images, serves every k of ``knn_k`` (10, 20, 100,
  200) at once. It holds the bank (training images × feature dim, float32) and one chunk's similarities (chunk ×
  training images, float32), and says how much that is before it starts: ImageNet-1k's 1.28 M ViT-B features
  (768-d) are a 3.7 GiB bank and 4.9 GiB of similarities per 1,024-image chunk.
- ``fewshot`` (VISSL's low-shot benchmark): ``fewshot_shots`` training images per class, drawn ``fewshot_subsamples``
  times (each draw seeded by the transfer seed and its index); the linear probe's logistic regression, at the fixed
  L2 strength ``fewshot_c`` (with a handful of images per class there is nothing to hold out, so C is a config
  value, never chosen on the test split), fitted on each draw and evaluated on the whole test split. The record is
  the mean over the draws, the number paired over pretraining seeds; every draw's number goes to ``fewshot.json``.
"""

import logging

import numpy as np
import torch
from torch import nn

from dropbench.core.errors import UserInputError
from dropbench.core.loop import accuracy_metrics

logger = logging.getLogger(__name__)

KNN_HEADLINE_K = 20  # the table's k-NN top-1 (DINO's 20-NN), where knn_k holds it; else knn_k's first
GIB = 1 << 30


def knn_memory(train_images: int, feature_dim: int, chunk: int) -> tuple[float, float]:
    """GiB that a k-NN pass holds: ``(bank, similarities of one chunk)``, both float32."""
    return train_images * feature_dim * 4 / GIB, min(chunk, train_images) * train_images * 4 / GIB


@torch.no_grad()
def knn_predictions(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    num_classes: int,
    ks: tuple[int, ...],
    temperature: float,
    chunk: int,
) -> dict[int, torch.Tensor]:
    """Each k's predicted class of every test feature: temperature-weighted votes of its k most similar training
    features (cosine), every k from one top-k search per chunk. A k above the training set's size uses all of it."""
    bank = nn.functional.normalize(train_x.float(), dim=1)
    labels = train_y.long().to(bank.device)
    widest = min(max(ks), len(bank))
    predicted: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, len(test_x), chunk):
        queries = nn.functional.normalize(test_x[start : start + chunk].float().to(bank.device), dim=1)
        similarity, nearest = (queries @ bank.T).topk(widest, dim=1)  # most similar first
        weights, voters = (similarity / temperature).exp(), labels[nearest]
        for k in ks:
            votes = torch.zeros(len(queries), num_classes, device=bank.device)
            votes.scatter_add_(1, voters[:, :k], weights[:, :k])
            predicted[k].append(votes.argmax(dim=1).cpu())
    return {k: torch.cat(parts) for k, parts in predicted.items()}


def knn_protocol(cached: dict[str, torch.Tensor], num_classes: int, config) -> tuple[dict[str, float], dict]:
    """``top1_k<k>`` for every k, and ``top1`` (the ``KNN_HEADLINE_K``-NN's), with a report of the run."""
    train_x, test_x = cached["train_features"], cached["test_features"]
    bank, chunk = knn_memory(len(train_x), train_x.shape[1], config.knn_chunk)
    logger.info(f"k-NN: a {_size(bank)} feature bank and {_size(chunk)} of similarities per chunk of test images")
    ks = tuple(config.knn_k)
    predicted = knn_predictions(
        train_x, cached["train_labels"], test_x, num_classes, ks, config.knn_temperature, config.knn_chunk
    )
    per_k = {k: accuracy_metrics(predicted[k], cached["test_labels"], num_classes) for k in ks}
    headline = KNN_HEADLINE_K if KNN_HEADLINE_K in ks else ks[0]
    metrics = {"top1": per_k[headline]["top1"], **{f"top1_k{k}": per_k[k]["top1"] for k in ks}}
    report = {
        "k": list(ks),
        "headline_k": headline,
        "temperature": config.knn_temperature,
        "per_k": {str(k): values for k, values in per_k.items()},
        "bank_gib": bank,
        "chunk_similarities_gib": chunk,
        "train_images": len(train_x),
        "test_images": len(test_x),
    }
    return metrics, report


def _size(gib: float) -> str:
    return f"{gib:.2f} GiB" if gib >= 0.1 else f"{gib * 1024:.1f} MiB"


def fewshot_indices(labels: np.ndarray, shots: int, seed: int, draw: int) -> np.ndarray:
    """``shots`` training images of every class, drawn without replacement, seeded by ``(seed, draw)``."""
    rng = np.random.default_rng([seed, draw])
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < shots:
            raise UserInputError(
                "dataset.fewshot_shots", f"{shots} images of class {label}, which has {len(members)}: lower it"
            )
        chosen.append(rng.choice(members, shots, replace=False))
    return np.sort(np.concatenate(chosen))


def fewshot_protocol(
    cached: dict[str, torch.Tensor], num_classes: int, config, fit_probe
) -> tuple[dict[str, float], dict]:
    """The mean test top-1 over ``fewshot_subsamples`` draws of ``fewshot_shots`` images per class, each draw's
    probe fitted by ``fit_probe`` (the linear probe's) at C = ``fewshot_c``."""
    train_x, train_y = cached["train_features"], cached["train_labels"]
    draws = []
    for draw in range(config.fewshot_subsamples):
        chosen = torch.from_numpy(fewshot_indices(train_y.numpy(), config.fewshot_shots, config.seed, draw))
        probe = fit_probe(train_x[chosen], train_y[chosen], num_classes, config.fewshot_c, config.linear_max_iter)
        draws.append(accuracy_metrics(probe.predict(cached["test_features"]), cached["test_labels"], num_classes))
    top1 = np.array([d["top1"] for d in draws])
    report = {
        "shots": config.fewshot_shots,
        "c": config.fewshot_c,
        "draws": draws,
        "top1_mean": float(top1.mean()),
        "top1_std_over_draws": float(top1.std(ddof=1)) if len(top1) > 1 else None,
        "train_images_per_draw": config.fewshot_shots * num_classes,
        "test_images": len(cached["test_labels"]),
    }
    return {"top1": float(top1.mean())}, report
