"""Offline evaluation of one or more scorers on the same evaluation split.

Metrics are computed on the unsampled test split (the instance job samples only the train split),
so they describe the true traffic; ``sample_weight`` is still passed through, and is 1 there.
See :mod:`homefeed.metrics` for the HIT@k definition.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from homefeed import metrics, schema
from homefeed.config import Config
from homefeed.data import labels_and_weights

SLICES = {
    "core": lambda t: t["segment"] == schema.CORE_SEGMENT,
    "non_core": lambda t: t["segment"] != schema.CORE_SEGMENT,
    "follow": lambda t: t["source"] == "follow",
    "pfy": lambda t: t["source"] == "pfy",
}
assert tuple(SLICES) == schema.SLICES


METRICS = ("auc", "logloss", "mse", "rmse", "r2", "observed_rate", "predicted_rate", "hit", "gauc")
COUNTS = ("hit_requests", "gauc_requests")  # how many requests HIT@k and the AUC within requests counted
BOOTSTRAP_CHUNK = 50  # replicates per pass: bounds memory at chunk × rows weights


def _columns(table: pa.Table) -> dict[str, np.ndarray]:
    request_id = table.column("request_id").to_numpy(zero_copy_only=False)
    _, request_code = np.unique(request_id, return_inverse=True)
    labels, weights = labels_and_weights(table)
    return {
        "request_id": request_id,
        "request_code": request_code,
        "segment": table.column(schema.SEGMENT).to_numpy(zero_copy_only=False),
        "source": table.column("source").to_numpy(zero_copy_only=False),
        "labels": labels,
        "weights": weights,
    }


def _head_scores(probs: np.ndarray, cfg: Config) -> dict[str, np.ndarray]:
    """The score each head's HIT@k ranks by: its own probability, or the feed utility for hide."""
    utility = metrics.ranking_utility(probs, schema.HEADS, cfg.ranking.utility)
    return {h: (utility if h == schema.NEGATIVE_HEAD else probs[:, i]) for i, h in enumerate(schema.HEADS)}


def _slice_metrics(cols: dict[str, np.ndarray], probs: np.ndarray, scores: dict[str, np.ndarray], rows: np.ndarray, k: int) -> dict[str, dict[str, float]]:
    if len(rows) == 0:  # an empty slice (e.g. no Follow impressions that day) has no metrics
        return {h: {**dict.fromkeys(METRICS, float("nan")), **dict.fromkeys(COUNTS, 0)} for h in schema.HEADS}
    out = {}
    for i, head in enumerate(schema.HEADS):
        labels = cols["labels"][rows, i]
        hit, counted = metrics.hit_at_k_counted(cols["request_id"][rows], labels, scores[head][rows], k)
        gauc, gauc_counted = metrics.request_auc(cols["request_id"][rows], labels, probs[rows, i])
        out[head] = {**metrics.head_metrics(labels, probs[rows, i], cols["weights"][rows]),
                     "hit": hit, "hit_requests": counted, "gauc": gauc, "gauc_requests": gauc_counted}
    return out


def _metric_replicates(cols: dict[str, np.ndarray], probs: np.ndarray, scores: dict[str, np.ndarray], rows: np.ndarray,
                       counts: np.ndarray, k: int) -> dict[str, dict[str, np.ndarray]]:
    """Every metric of every head on each bootstrap replicate (rows of ``counts``) of the requests."""
    codes = cols["request_code"][rows]
    labels = cols["labels"][rows]
    # Per-request HIT@k outcomes do not depend on the replicate: computed once per head.
    hits = {head: metrics.hits_per_group(codes, labels[:, i], scores[head][rows], k, counts.shape[1]) for i, head in enumerate(schema.HEADS)}
    within = {head: metrics.request_aucs(codes, labels[:, i], probs[rows, i], counts.shape[1]) for i, head in enumerate(schema.HEADS)}
    replicates: dict[str, dict[str, list[np.ndarray]]] = {h: {m: [] for m in METRICS} for h in schema.HEADS}
    for chunk in range(0, len(counts), BOOTSTRAP_CHUNK):
        block = counts[chunk:chunk + BOOTSTRAP_CHUNK]
        weights = block[:, codes] * cols["weights"][rows]  # one (replicates × rows) matrix for every head
        for i, head in enumerate(schema.HEADS):
            for name, values in metrics.head_metric_replicates(labels[:, i], probs[rows, i], weights).items():
                replicates[head][name].append(values)
            replicates[head]["hit"].append(metrics.hit_replicates(block, *hits[head]))
            replicates[head]["gauc"].append(metrics.request_auc_replicates(block, *within[head]))
    return {h: {m: np.concatenate(v) for m, v in per_metric.items()} for h, per_metric in replicates.items()}


def _slice_intervals(cols: dict[str, np.ndarray], probs: np.ndarray, scores: dict[str, np.ndarray], rows: np.ndarray,
                     counts: np.ndarray, k: int) -> dict[str, dict[str, list[float]]]:
    """95% bootstrap interval of every metric of every head, from shared request replicates."""
    nan = [float("nan"), float("nan")]
    if len(rows) == 0 or len(counts) == 0:
        return {h: dict.fromkeys(METRICS, nan) for h in schema.HEADS}
    replicates = _metric_replicates(cols, probs, scores, rows, counts, k)
    return {h: {m: metrics.percentile_interval(v) for m, v in per_metric.items()} for h, per_metric in replicates.items()}


def evaluate_probabilities(table: pa.Table, probs: np.ndarray, cfg: Config) -> dict[str, Any]:
    """Metrics per head, overall and per slice, each with a 95% interval (requests resampled)."""
    cols = _columns(table)
    k = cfg.evaluation.hit_k
    scores = _head_scores(probs, cfg)
    n_requests = int(cols["request_code"].max()) + 1 if table.num_rows else 0
    counts = (metrics.bootstrap_request_counts(n_requests, cfg.evaluation.bootstrap_samples, cfg.evaluation.seed)
              if n_requests and cfg.evaluation.bootstrap_samples else np.zeros((0, n_requests)))
    scopes = {"overall": np.arange(table.num_rows), **{name: np.flatnonzero(pick(cols)) for name, pick in SLICES.items()}}
    computed = {scope: _slice_metrics(cols, probs, scores, rows, k) for scope, rows in scopes.items()}
    return {
        "rows": int(table.num_rows),
        "requests": n_requests,
        "hit_k": k,
        "overall": computed.pop("overall"),
        "slices": computed,
        "intervals": {scope: _slice_intervals(cols, probs, scores, rows, counts, k) for scope, rows in scopes.items()},
        "roc": {h: metrics.roc_points(cols["labels"][:, i], probs[:, i], cols["weights"]) for i, h in enumerate(schema.HEADS)},
        "calibration": {
            h: metrics.calibration(cols["labels"][:, i], probs[:, i], cols["weights"]) for i, h in enumerate(schema.HEADS)
        },
    }


PAIRED_METRICS = ("auc", "hit", "gauc")


def paired_differences(table: pa.Table, probs: dict[str, np.ndarray], reference: str, cfg: Config) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Each model's AUC, HIT@k and AUC within requests per head minus the reference model's, with a 95% interval.

    Both models are scored on the same resampled requests in every replicate, so the interval is
    of the difference itself: much narrower than comparing two separate intervals, because most of
    the sampling noise (which requests happen to be in the test days) is shared.
    Returns ``{model: {head: {metric: [difference, lo, hi]}}}`` for every model but the reference.
    """
    return paired_differences_against(table, probs, (reference,), cfg)[reference]


def paired_differences_against(table: pa.Table, probs: dict[str, np.ndarray], references: tuple[str, ...],
                               cfg: Config) -> dict[str, dict[str, dict[str, dict[str, list[float]]]]]:
    """:func:`paired_differences` against each of ``references`` (``{reference: {model: …}}``), every
    model's bootstrap replicates computed once for all of them."""
    cols = _columns(table)
    k = cfg.evaluation.hit_k
    n_requests = int(cols["request_code"].max()) + 1 if table.num_rows else 0
    if not n_requests or not cfg.evaluation.bootstrap_samples:
        raise ValueError("paired differences need a non-empty test split and evaluation.bootstrap_samples > 0")
    counts = metrics.bootstrap_request_counts(n_requests, cfg.evaluation.bootstrap_samples, cfg.evaluation.seed)
    rows = np.arange(table.num_rows)
    scores = {model: _head_scores(p, cfg) for model, p in probs.items()}
    replicates = {model: _metric_replicates(cols, p, scores[model], rows, counts, k) for model, p in probs.items()}
    point = {model: _slice_metrics(cols, p, scores[model], rows, k) for model, p in probs.items()}
    out: dict[str, dict[str, dict[str, dict[str, list[float]]]]] = {}
    for reference in references:
        out[reference] = {}
        for model in probs:
            if model == reference:
                continue
            out[reference][model] = {}
            for head in schema.HEADS:
                out[reference][model][head] = {}
                for name in PAIRED_METRICS:
                    delta = replicates[model][head][name] - replicates[reference][head][name]
                    observed = point[model][head][name] - point[reference][head][name]
                    out[reference][model][head][name] = [float(observed), *metrics.percentile_interval(delta)]
    return out


def evaluate_scorer(scorer, table: pa.Table, cfg: Config) -> dict[str, Any]:
    return {"model": scorer.name, **evaluate_probabilities(table, scorer.predict(table), cfg)}


def headline(result: dict[str, Any]) -> dict[str, float]:
    """Flat metric names for MLflow and tables: auc_<head>, hit<k>_<head>, gauc_<head>, logloss_<head>."""
    k = result["hit_k"]
    flat = {}
    for head, m in result["overall"].items():
        flat[f"auc_{head}"] = m["auc"]
        flat[f"hit{k}_{head}"] = m["hit"]
        flat[f"gauc_{head}"] = m["gauc"]
        flat[f"logloss_{head}"] = m["logloss"]
    return flat


def challenger_and_champion(challenger_scorer, champion_scorer, table: pa.Table, cfg: Config,
                            champion_table: pa.Table | None = None) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]:
    """Both models on the same test rows, and the challenger's change against the champion with a
    paired 95% interval per head (``{head: {"auc"|"hit"|"gauc": [difference, lo, hi]}}``; None without a
    champion or without bootstrap samples). ``champion_table``: the same rows with the features the
    champion reads, where they differ (its own pin vectors)."""
    challenger_probs = challenger_scorer.predict(table)
    challenger = {"model": challenger_scorer.name, **evaluate_probabilities(table, challenger_probs, cfg)}
    if champion_scorer is None:
        return challenger, None, None
    champion_probs = champion_scorer.predict(table if champion_table is None else champion_table)
    champion = {"model": champion_scorer.name, **evaluate_probabilities(table, champion_probs, cfg)}
    if not table.num_rows or not cfg.evaluation.bootstrap_samples:
        return challenger, champion, None
    paired = paired_differences(table, {"challenger": challenger_probs, "champion": champion_probs}, "champion", cfg)
    return challenger, champion, paired["challenger"]
