"""Staleness monitor: how the champion does on each day that lands after its training window.

For every new day of impressions the champion is scored, unchanged, on that day's instances
(built by the instance job with the champion's own standardisation, every row unsampled), and
the day's metrics are recorded against the model's age: days since its training window ended.
The seed's observation is that a realtime-sequence model's gains decay within days without
retraining; this makes the decay visible and acts on it.

Stale, when on a day with at least ``monitor.min_impressions`` impressions either
- the primary head's AUC fell more than ``monitor.max_auc_drop`` below the model's first
  monitored day (same method, same kind of data: the fairest reference), or
- the model is older than ``monitor.max_age_days``.

A stale champion is tagged on its registry version (``monitor.stale*``) and
``<root>/monitor/stale.json`` says why; the monitor DAG then emits the asset that triggers
``homefeed_retrain``.

Records: ``<root>/monitor/v<version>/<day>.json`` (re-scoring a day replaces its record).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from homefeed import schema, storage
from homefeed.config import Config
from homefeed.monitor_records import monitor_root, records, write_stale_notice


# --------------------------------------------------------------------------- pure decision logic
def model_age_days(day: date, window_end: date) -> int:
    return (day - window_end).days


def staleness(records: list[dict[str, Any]], cfg: Config) -> dict[str, Any]:
    """The decision from one version's daily records (any order): stale or not, and why."""
    m = cfg.monitor
    decisive = sorted((r for r in records if r["impressions"] >= m.min_impressions), key=lambda r: r["day"])
    if not decisive:
        return {"stale": False, "reason": f"no day with at least {m.min_impressions} impressions yet", "drop": None}
    reference, latest = decisive[0], decisive[-1]
    head = schema.PRIMARY_HEAD
    drop = reference["auc"][head] - latest["auc"][head]
    reasons = []
    if drop > m.max_auc_drop:
        reasons.append(
            f"{head} AUC {latest['auc'][head]:.4f} on {latest['day']} is {drop:.4f} below {reference['auc'][head]:.4f} "
            f"on {reference['day']} (limit {m.max_auc_drop})"
        )
    if latest["age_days"] > m.max_age_days:
        reasons.append(f"model is {latest['age_days']} days old on {latest['day']} (limit {m.max_age_days})")
    return {
        "stale": bool(reasons),
        "reason": "; ".join(reasons) or f"{head} AUC within {m.max_auc_drop} of the first day, age {latest['age_days']} days",
        "drop": drop, "day": latest["day"], "age_days": latest["age_days"],
    }


def day_record(version: str, day: date, window_end: date, result: dict[str, Any]) -> dict[str, Any]:
    k = result["hit_k"]
    return {
        "model_version": version, "day": day.isoformat(), "age_days": model_age_days(day, window_end),
        "impressions": result["rows"], "requests": result["requests"],
        "auc": {h: m["auc"] for h, m in result["overall"].items()},
        f"hit{k}": {h: m["hit"] for h, m in result["overall"].items()},
        "slices": {s: {h: {"auc": m["auc"], "hit": m["hit"]} for h, m in per.items()} for s, per in result["slices"].items()},
    }


# --------------------------------------------------------------------------- the monitor run
def _champion(cfg: Config) -> tuple[Any, date]:
    from homefeed import registry

    model = registry.load_served_model(cfg, registry.CHAMPION)
    tags = registry.version_tags(cfg, model.version) or {}
    if "data.window" not in tags:
        raise storage.StorageError(f"{cfg.registry.model_name} v{model.version} has no data.window tag: its age is unknown")
    return model, date.fromisoformat(tags["data.window"].split("..")[1])


def score_day(spark, cfg: Config, raw_root: str, day: date, model, window_end: date) -> dict[str, Any]:
    """The champion on one landed day: instances with its standardisation, then every metric."""
    from homefeed.data import read_instances
    from homefeed.evaluate import evaluate_scorer
    from jobs import build_instances as job

    out = monitor_root(cfg) / f"v{model.version}" / "instances" / day.isoformat()
    vectors = model.pin_vectors.directory if model.pin_vectors is not None else None  # the pin vectors it was trained with
    job.run(spark, raw_root, str(out), cfg, day, day, feature_stats=model.feature_stats, pin_embeddings=vectors)
    record = day_record(model.version, day, window_end, evaluate_scorer(model.scorer, read_instances(out, "test"), cfg))
    storage.write_json(monitor_root(cfg) / f"v{model.version}" / f"{day.isoformat()}.json", record)
    return record


def run(spark, cfg: Config, raw_root: str, days: list[date] | None = None) -> dict[str, Any]:
    """Score the champion on new days (default: every landed day after its window not yet scored),
    decide staleness, tag and record it, redraw the decay plot. Returns the decision."""
    from homefeed import registry

    model, window_end = _champion(cfg)
    done = {r["day"] for r in records(cfg, model.version)}
    if days is None:
        days = [d for d in storage.landed_days(raw_root) if d > window_end and d.isoformat() not in done]
    for day in days:
        if day <= window_end:
            raise ValueError(f"{day} is inside v{model.version}'s training window (ends {window_end}); monitor later days")
        score_day(spark, cfg, raw_root, day, model, window_end)
    decision = {"model_version": model.version, "window_end": window_end.isoformat(), "scored_days": [d.isoformat() for d in days],
                **staleness(records(cfg, model.version), cfg)}
    if decision["stale"]:
        registry.set_version_tags(cfg, model.version, {"monitor.stale": decision["day"], "monitor.stale_reason": decision["reason"]})
        write_stale_notice(cfg, decision)
    plot_decay(cfg)
    return decision


def plot_decay(cfg: Config) -> Path | None:
    """AUC per head against model age, one line per version: ``<root>/monitor/decay.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    everything = records(cfg)
    if not everything:
        return None
    fig, axes = plt.subplots(1, len(schema.HEADS), figsize=(4 * len(schema.HEADS), 3.2), sharex=True)
    for ax, head in zip(axes, schema.HEADS):
        for version in sorted({r["model_version"] for r in everything}, key=int):
            mine = sorted((r for r in everything if r["model_version"] == version), key=lambda r: r["age_days"])
            ax.plot([r["age_days"] for r in mine], [r["auc"][head] for r in mine], marker="o", label=f"v{version}")
        ax.set_title(f"AUC {head}")
        ax.set_xlabel("model age (days)")
    axes[0].legend()
    fig.tight_layout()
    out = monitor_root(cfg) / "decay.png"
    tmp = out.with_name(".decay.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(out)
    return out
