"""Offline metrics: ROC AUC, log loss, MSE / r², calibration, and HIT@k per request.

HIT@k (TransAct's offline metric). For a head and a ranking of each request's candidates:
among the requests with at least one positive label for the head, the share whose top k
candidates hold at least one of those positives.

- For positive heads (repin, ...) the candidates are ranked by that head's own score: higher is
  better.
- For hide, the candidates are ranked by the production ranking score (the configured utility
  over heads), since that is what orders the feed; a hide in the top k is a hidden pin shown near
  the top: lower is better.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import log_loss, mean_squared_error, r2_score, roc_auc_score, roc_curve


def auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Weighted ROC AUC; NaN when only one class is present."""
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, scores, sample_weight=weights))


def hit_at_k(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int = 3) -> float:
    """Share of groups with ≥1 positive whose top-``k`` by score holds a positive; NaN if none."""
    groups, labels, scores = np.asarray(groups), np.asarray(labels), np.asarray(scores, dtype=np.float64)
    _, group_index = np.unique(groups, return_inverse=True)
    # Sort by group, then score descending; ties broken by original order (stable).
    order = np.lexsort((-scores, group_index))
    g, y = group_index[order], labels[order] > 0
    start = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
    rank = np.arange(len(g)) - np.repeat(start, np.diff(np.r_[start, len(g)]))
    n_groups = g.max() + 1 if len(g) else 0
    has_positive = np.bincount(g, weights=y, minlength=n_groups) > 0
    hit = np.bincount(g, weights=y & (rank < k), minlength=n_groups) > 0
    if not has_positive.any():
        return float("nan")
    return float(hit[has_positive].mean())


def ranking_utility(probabilities: np.ndarray, heads: tuple[str, ...], utility: dict[str, float]) -> np.ndarray:
    """The production ranking score: a weighted sum of head probabilities."""
    weights = np.array([utility.get(h, 0.0) for h in heads])
    return probabilities @ weights


def calibration(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None, bins: int = 10) -> list[dict]:
    """Predicted vs observed rate per score quantile bin (reliability curve)."""
    weights = np.ones_like(scores, dtype=np.float64) if weights is None else weights
    edges = np.unique(np.quantile(scores, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, max(len(edges) - 2, 0))
    rows = []
    for b in np.unique(which):
        sel = which == b
        rows.append(
            {
                "predicted": float(np.average(scores[sel], weights=weights[sel])),
                "observed": float(np.average(labels[sel], weights=weights[sel])),
                "count": int(sel.sum()),
            }
        )
    return rows


def head_metrics(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> dict[str, float]:
    """AUC, log loss, MSE, RMSE and r² of predicted probability against the label."""
    scores = np.clip(scores.astype(np.float64), 1e-7, 1 - 1e-7)
    both = len(np.unique(labels)) == 2
    mse = float(mean_squared_error(labels, scores, sample_weight=weights))
    return {
        "auc": auc(labels, scores, weights),
        "logloss": float(log_loss(labels, scores, sample_weight=weights, labels=[0, 1])) if len(labels) else float("nan"),
        "mse": mse,
        "rmse": float(np.sqrt(mse)),
        "r2": float(r2_score(labels, scores, sample_weight=weights)) if both else float("nan"),
        "observed_rate": float(np.average(labels, weights=weights)),
        "predicted_rate": float(np.average(scores, weights=weights)),
    }


def bootstrap_interval(
    groups: np.ndarray, statistic, samples: int, seed: int, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile interval of ``statistic(row_index)`` resampling whole groups (requests).

    ``statistic`` takes an index array into the rows and returns a float.
    """
    if samples <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    uniq, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    sizes = np.bincount(inverse)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    values = []
    for _ in range(samples):
        chosen = rng.integers(0, len(uniq), size=len(uniq))
        take = sizes[chosen]
        offsets = np.arange(take.sum()) - np.repeat(np.cumsum(take) - take, take)
        value = statistic(order[np.repeat(starts[chosen], take) + offsets])
        if not np.isnan(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    return float(np.quantile(values, alpha / 2)), float(np.quantile(values, 1 - alpha / 2))


def roc_points(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None, points: int = 50) -> dict[str, list[float]]:
    """A down-sampled ROC curve for plots; empty when only one class is present."""
    if len(np.unique(labels)) < 2:
        return {"fpr": [], "tpr": []}
    fpr, tpr, _ = roc_curve(labels, scores, sample_weight=weights)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(points, len(fpr))).astype(int))
    return {"fpr": fpr[keep].round(4).tolist(), "tpr": tpr[keep].round(4).tolist()}
