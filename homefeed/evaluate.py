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

SLICES = {
    "core": lambda t: t["segment"] == schema.CORE_SEGMENT,
    "non_core": lambda t: t["segment"] != schema.CORE_SEGMENT,
    "follow": lambda t: t["source"] == "follow",
    "pfy": lambda t: t["source"] == "pfy",
}


def _columns(table: pa.Table) -> dict[str, np.ndarray]:
    return {
        "request_id": table.column("request_id").to_numpy(zero_copy_only=False),
        "segment": table.column(schema.SEGMENT).to_numpy(zero_copy_only=False),
        "source": table.column("source").to_numpy(zero_copy_only=False),
        "labels": np.stack([table.column(c).to_numpy(zero_copy_only=False) for c in schema.LABEL_COLUMNS], axis=1),
        "weights": table.column(schema.SAMPLE_WEIGHT).to_numpy(zero_copy_only=False).astype(np.float64),
    }


def _head_scores(probs: np.ndarray, cfg: Config) -> dict[str, np.ndarray]:
    """The score each head's HIT@k ranks by: its own probability, or the feed utility for hide."""
    utility = metrics.ranking_utility(probs, schema.HEADS, cfg.ranking.utility)
    return {h: (utility if h == schema.NEGATIVE_HEAD else probs[:, i]) for i, h in enumerate(schema.HEADS)}


def _slice_metrics(cols: dict[str, np.ndarray], probs: np.ndarray, rows: np.ndarray, cfg: Config) -> dict[str, dict[str, float]]:
    k = cfg.evaluation.hit_k
    if len(rows) == 0:  # an empty slice (e.g. no Follow impressions that day) has no metrics
        nan = float("nan")
        return {h: {"auc": nan, "logloss": nan, "mse": nan, "rmse": nan, "r2": nan, "observed_rate": nan, "predicted_rate": nan, "hit": nan} for h in schema.HEADS}
    scores = _head_scores(probs[rows], cfg)
    out = {}
    for i, head in enumerate(schema.HEADS):
        labels = cols["labels"][rows, i]
        out[head] = {
            **metrics.head_metrics(labels, probs[rows, i], cols["weights"][rows]),
            "hit": metrics.hit_at_k(cols["request_id"][rows], labels, scores[head], k),
        }
    return out


def evaluate_probabilities(table: pa.Table, probs: np.ndarray, cfg: Config) -> dict[str, Any]:
    cols = _columns(table)
    everything = np.arange(table.num_rows)
    result: dict[str, Any] = {
        "rows": int(table.num_rows),
        "requests": int(len(np.unique(cols["request_id"]))),
        "hit_k": cfg.evaluation.hit_k,
        "overall": _slice_metrics(cols, probs, everything, cfg),
        "slices": {name: _slice_metrics(cols, probs, np.flatnonzero(pick(cols)), cfg) for name, pick in SLICES.items()},
        "roc": {h: metrics.roc_points(cols["labels"][:, i], probs[:, i], cols["weights"]) for i, h in enumerate(schema.HEADS)},
        "calibration": {
            h: metrics.calibration(cols["labels"][:, i], probs[:, i], cols["weights"]) for i, h in enumerate(schema.HEADS)
        },
    }
    scores = _head_scores(probs, cfg)
    k = cfg.evaluation.hit_k
    primary = schema.HEADS.index(schema.PRIMARY_HEAD)
    negative = schema.HEADS.index(schema.NEGATIVE_HEAD)
    statistics = {
        f"auc/{schema.PRIMARY_HEAD}": lambda r: metrics.auc(cols["labels"][r, primary], probs[r, primary], cols["weights"][r]),
        f"hit/{schema.PRIMARY_HEAD}": lambda r: metrics.hit_at_k(cols["request_id"][r], cols["labels"][r, primary], scores[schema.PRIMARY_HEAD][r], k),
        f"hit/{schema.NEGATIVE_HEAD}": lambda r: metrics.hit_at_k(cols["request_id"][r], cols["labels"][r, negative], scores[schema.NEGATIVE_HEAD][r], k),
    }
    result["intervals"] = {
        name: metrics.bootstrap_interval(cols["request_id"], stat, cfg.evaluation.bootstrap_samples, cfg.evaluation.seed)
        for name, stat in statistics.items()
    }
    return result


def evaluate_scorer(scorer, table: pa.Table, cfg: Config) -> dict[str, Any]:
    return {"model": scorer.name, **evaluate_probabilities(table, scorer.predict(table), cfg)}


def headline(result: dict[str, Any]) -> dict[str, float]:
    """Flat metric names for MLflow and tables: auc/<head>, hit<k>/<head>, logloss/<head>."""
    k = result["hit_k"]
    flat = {}
    for head, m in result["overall"].items():
        flat[f"auc_{head}"] = m["auc"]
        flat[f"hit{k}_{head}"] = m["hit"]
        flat[f"logloss_{head}"] = m["logloss"]
    return flat
