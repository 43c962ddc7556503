"""Data shift between this run's instances and the last instances that passed validation.

The seed tracks "data shift per action over time"; here every run profiles its instances and
compares the profile with the previous successful run's:

- label rate per action head (relative change),
- per dense feature: mean and the 10th/50th/90th percentiles (shift in units of the previous
  run's training standard deviation) and the null rate (absolute change),
- sequence length: mean (relative change) and the share of empty sequences (absolute change).

Profiles are computed on the *unsampled* splits (validation and test), so a change of the
sampling rates does not look like drift, and on the features' model scale (after log1p, before
standardisation, recovered from the manifest's statistics), so each run's own standardisation
does not hide a shift. The profile of every run and the comparison are saved in the run
directory; a shift beyond the configured limits raises :class:`validation.ValidationFailed`
with one line per shifted statistic (observed vs the previous run and the limit).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from homefeed import schema, storage
from homefeed.config import DriftConfig
from homefeed.validation import ExpectationOutcome, SuiteReport

QUANTILES = (0.1, 0.5, 0.9)
BASELINE = "drift/baseline.json"


def profile(rows: DataFrame, sequences: DataFrame, feature_stats: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Summary statistics of the unsampled splits of an instance set (its ``rows`` and
    ``sequences`` tables); sequence lengths are counted per row, as the model sees them."""
    lengths = sequences.select(schema.SEQUENCE_KEY, F.size(schema.SEQ_TS).alias("_seq_len"))
    frame = rows.filter(F.col(schema.SPLIT) != "train").join(lengths, schema.SEQUENCE_KEY, "left")
    for feature in schema.DENSE_FEATURES:
        stats = feature_stats[feature]
        frame = frame.withColumn(feature, F.col(feature) * F.lit(stats["std"]) + F.lit(stats["mean"]))
    frame = frame.withColumn("_seq_len", F.coalesce(F.col("_seq_len"), F.lit(0)))
    aggregates = [F.count(F.lit(1)).alias("rows")]
    aggregates += [F.avg(schema.label_column(h)).alias(f"label_rate/{h}") for h in schema.HEADS]
    for feature in schema.DENSE_FEATURES:
        aggregates += [F.avg(feature).alias(f"mean/{feature}"), F.avg(F.col(feature).isNull().cast("double")).alias(f"null_rate/{feature}")]
    aggregates += [F.avg("_seq_len").alias("seq_len/mean"), F.avg((F.col("_seq_len") == 0).cast("double")).alias("seq_len/empty_share")]
    summary = frame.agg(*aggregates).first().asDict()
    quantiles = frame.approxQuantile(list(schema.DENSE_FEATURES), list(QUANTILES), 0.01)
    for feature, values in zip(schema.DENSE_FEATURES, quantiles):
        for q, value in zip(QUANTILES, values):
            summary[f"p{int(q * 100)}/{feature}"] = value
    summary["std"] = {f: feature_stats[f]["std"] for f in schema.DENSE_FEATURES}
    return summary


def _change(kind: str, current: float, previous: float, std: float) -> float:
    if kind == "relative":
        return abs(current - previous) / max(abs(previous), 1e-9)
    if kind == "std":
        return abs(current - previous) / max(std, 1e-9)
    return abs(current - previous)


def _checks(cfg: DriftConfig) -> list[tuple[str, str | None, str, float]]:
    """(statistic key, column, how change is measured, limit) for every compared statistic."""
    checks = [(f"label_rate/{h}", schema.label_column(h), "relative", cfg.label_rate_relative) for h in schema.HEADS]
    for feature in schema.DENSE_FEATURES:
        checks.append((f"mean/{feature}", feature, "std", cfg.feature_mean_std))
        checks += [(f"p{int(q * 100)}/{feature}", feature, "std", cfg.feature_quantile_std) for q in QUANTILES]
        checks.append((f"null_rate/{feature}", feature, "absolute", cfg.null_rate_absolute))
    checks.append(("seq_len/mean", schema.SEQ_TS, "relative", cfg.seq_len_relative))
    checks.append(("seq_len/empty_share", schema.SEQ_TS, "absolute", cfg.seq_len_empty_absolute))
    return checks


def compare(current: dict[str, Any], previous: dict[str, Any], cfg: DriftConfig, previous_run: str) -> SuiteReport:
    """One outcome per statistic: the change from the previous run against its limit."""
    outcomes = []
    for key, column, kind, limit in _checks(cfg):
        now, before = current.get(key), previous.get(key)
        if now is None or before is None:
            # A statistic that is undefined (no rows of a split) cannot be compared; say so.
            outcomes.append(ExpectationOutcome(f"drift:{key}", column, now == before, now, {"previous": before}))
            continue
        std = previous["std"].get(column, 1.0) if kind == "std" else 1.0
        change = _change(kind, now, before, std)
        outcomes.append(ExpectationOutcome(
            f"drift:{key}", column, change <= limit, round(now, 6),
            {"previous": round(before, 6), "previous_run": previous_run, "change": round(change, 4), "max_change": limit, "measured_as": kind},
        ))
    return SuiteReport("instances_drift", all(o.success for o in outcomes), int(current["rows"]), outcomes)


def previous_profile(root: str, run: str) -> tuple[str, dict[str, Any]] | None:
    """The last profile that passed validation in a run other than ``run``."""
    path = storage.local_path(root) / BASELINE
    if not path.exists():
        return None
    baseline = json.loads(path.read_text())
    if baseline["run"] == run:
        # Re-validating the run that set the baseline compares with what came before it.
        baseline = baseline.get("before")
    return (baseline["run"], baseline["profile"]) if baseline else None


def accept(root: str, run: str, current: dict[str, Any]) -> None:
    """Make ``current`` the baseline the next run is compared with."""
    path = storage.local_path(root) / BASELINE
    existing = json.loads(path.read_text()) if path.exists() else None
    if existing and existing["run"] == run:
        before = existing.get("before")
    else:
        before = {"run": existing["run"], "profile": existing["profile"]} if existing else None
    storage.write_json(path, {"run": run, "profile": current, "before": before})


def save(directory: Path, current: dict[str, Any], report: SuiteReport | None, previous_run: str | None) -> dict[str, Any]:
    result = {"previous_run": previous_run, "profile": current, "comparison": report.to_dict() if report else None}
    storage.write_json(directory / "drift.json", result)
    return result
