"""Offline metrics: ROC AUC, log loss, MSE / r², calibration, HIT@k and AUC within requests.

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
    """Share of counted groups whose top-``k`` by score holds a positive; NaN if none is counted.

    A group counts when it has a positive and more than ``k`` members: a request of ``k`` or
    fewer candidates holds its positive in the top ``k`` whatever the order.
    """
    return hit_at_k_counted(groups, labels, scores, k)[0]


def hit_at_k_counted(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int = 3) -> tuple[float, int]:
    """(HIT@k, the number of groups it counted): a HIT@k over 12 requests is not one over 8,000."""
    _, codes = np.unique(np.asarray(groups), return_inverse=True)
    hit, counted = hits_per_group(codes, labels, scores, k, int(codes.max()) + 1 if len(codes) else 0)
    if not counted.any():
        return float("nan"), 0
    return float(hit[counted].mean()), int(counted.sum())


def _run_starts(*sorted_keys: np.ndarray) -> np.ndarray:
    """Where each run of rows equal in every key begins, in arrays sorted by those keys."""
    changed = np.zeros(max(len(sorted_keys[0]) - 1, 0), dtype=bool)
    for key in sorted_keys:
        changed |= key[1:] != key[:-1]
    return np.r_[0, np.flatnonzero(changed) + 1] if len(sorted_keys[0]) else np.zeros(0, int)


def _run_start_of_each(starts: np.ndarray, n: int) -> np.ndarray:
    """Per row of ``n`` sorted rows: the start of its run (``starts`` from :func:`_run_starts`)."""
    return np.repeat(starts, np.diff(np.r_[starts, n]))


def hits_per_group(codes: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per group code in ``range(n_groups)``: (top-``k`` holds a positive, counted by HIT@k).

    Counted: the group has a positive and more than ``k`` members (see :func:`hit_at_k`).
    """
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    # Sort by group, then score descending; ties broken by original order (stable).
    order = np.lexsort((-scores, codes))
    g, y = codes[order], labels[order] > 0
    rank = np.arange(len(g)) - _run_start_of_each(_run_starts(g), len(g))
    has_positive = np.bincount(g, weights=y, minlength=n_groups) > 0
    counted = has_positive & (np.bincount(g, minlength=n_groups) > k)
    hit = np.bincount(g, weights=y & (rank < k), minlength=n_groups) > 0
    return hit, counted


def request_aucs(codes: np.ndarray, labels: np.ndarray, scores: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per group code in ``range(n_groups)``: (the AUC of its members, ties counted half; its weight).

    The weight is the group's size when it holds a positive and a negative, else 0 (its AUC is
    then 0, not NaN, so that weighted sums over groups need no masking).
    """
    labels, scores = np.asarray(labels) > 0, np.asarray(scores, dtype=np.float64)
    order = np.lexsort((scores, codes))  # by group, then score ascending
    g, y, s = codes[order], labels[order], scores[order]
    n = len(g)
    tie_start = _run_starts(g, s)
    tie_size = np.diff(np.r_[tie_start, n])
    # Mann-Whitney: a member's rank within its group, the mean rank of its tie block (1-based).
    rank = np.repeat(tie_start + (tie_size + 1) / 2.0, tie_size) - _run_start_of_each(_run_starts(g), n)
    positives = np.bincount(g, weights=y, minlength=n_groups)
    size = np.bincount(g, minlength=n_groups).astype(np.float64)
    negatives = size - positives
    rank_sum = np.bincount(g, weights=rank * y, minlength=n_groups)
    both = (positives > 0) & (negatives > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc_per_group = np.where(both, (rank_sum - positives * (positives + 1) / 2) / (positives * negatives), 0.0)
    return auc_per_group, np.where(both, size, 0.0)


def request_auc(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> tuple[float, int]:
    """(AUC within groups, the number of groups it counted); NaN when no group has both labels."""
    _, codes = np.unique(np.asarray(groups), return_inverse=True)
    auc_per_group, weight = request_aucs(codes, labels, scores, int(codes.max()) + 1 if len(codes) else 0)
    if not weight.any():
        return float("nan"), 0
    return float(weight @ auc_per_group / weight.sum()), int((weight > 0).sum())


def request_auc_replicates(request_counts: np.ndarray, auc_per_group: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """AUC within requests per replicate from per-request AUCs (see :func:`request_aucs`)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return request_counts @ (weight * auc_per_group) / (request_counts @ weight)


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


def bootstrap_request_counts(n_requests: int, samples: int, seed: int) -> np.ndarray:
    """(samples, n_requests): how often each request is drawn in each bootstrap replicate.

    Resampling whole requests keeps a request's candidates together (HIT@k is per request).
    Every metric is then a weighted sum over rows, so all metrics of all slices come from the
    same replicates at the cost of a few matrix products instead of re-scoring copies.
    """
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_requests, np.full(n_requests, 1.0 / n_requests), size=samples).astype(np.float64)


def weighted_auc_replicates(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC per row of ``weights`` (replicates × rows), ties counted half, like sklearn."""
    order = np.argsort(scores, kind="stable")
    sorted_scores, y = scores[order], labels[order] > 0
    w = weights[:, order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]  # one block per distinct score
    positives = np.add.reduceat(w * y, starts, axis=1)
    negatives = np.add.reduceat(w * ~y, starts, axis=1)
    negatives_below = np.cumsum(negatives, axis=1) - negatives
    total = positives.sum(1) * negatives.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (positives * (negatives_below + 0.5 * negatives)).sum(1) / total, np.nan)


def head_metric_replicates(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every :func:`head_metrics` value per replicate (rows of ``weights``)."""
    scores = np.clip(scores.astype(np.float64), 1e-7, 1 - 1e-7)
    y = labels.astype(np.float64)
    total = weights.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = weights @ y / total
        mse = weights @ (y - scores) ** 2 / total
        variance = weights @ y**2 / total - observed**2
        return {
            "auc": weighted_auc_replicates(labels, scores, weights),
            "logloss": weights @ -(y * np.log(scores) + (1 - y) * np.log(1 - scores)) / total,
            "mse": mse,
            "rmse": np.sqrt(mse),
            "r2": np.where(variance > 0, 1 - mse / variance, np.nan),
            "observed_rate": observed,
            "predicted_rate": weights @ scores / total,
        }


def hit_replicates(request_counts: np.ndarray, hit: np.ndarray, counted: np.ndarray) -> np.ndarray:
    """HIT@k per replicate from per-request outcomes (see :func:`hits_per_group`)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return request_counts @ (hit & counted).astype(np.float64) / (request_counts @ counted.astype(np.float64))


def percentile_interval(replicates: np.ndarray, alpha: float = 0.05) -> list[float]:
    finite = replicates[np.isfinite(replicates)]
    if not len(finite):
        return [float("nan"), float("nan")]
    return [float(np.quantile(finite, alpha / 2)), float(np.quantile(finite, 1 - alpha / 2))]


def roc_points(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None, points: int = 50) -> dict[str, list[float]]:
    """A down-sampled ROC curve for plots; empty when only one class is present."""
    if len(np.unique(labels)) < 2:
        return {"fpr": [], "tpr": []}
    fpr, tpr, _ = roc_curve(labels, scores, sample_weight=weights)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(points, len(fpr))).astype(int))
    return {"fpr": fpr[keep].round(4).tolist(), "tpr": tpr[keep].round(4).tolist()}
