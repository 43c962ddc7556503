"""Pool insertion, the batch side of Pinnability serving: score pins against many users.

The seed: when a pin is repinned, a worker scores that pin against every follower and inserts
it into their pools; at login the feed materialises from the pool in score order (holdout users:
in time order). Here the served model (``models:/<name>@<serving.alias>``) scores every
(user, pin) of ``users × pins`` with the same online features the ranking service computes
(``homefeed.features``): each user's history as of ``request_ts`` comes from the raw action
log, grouped per user in Spark and scored per group in a pandas UDF.

Output, one row per (user, pin), written atomically with a manifest:
``user_id, pin_id, score, p_<head>…, holdout, model_version, request_ts``.

    homefeed score-pool --raw RAW --pins 12,57,301 --out OUT [--users 1,2,3] [--request-ts MS]
    spark-submit --master spark://HOST:7077 jobs/score_pool.py --raw … --pins … --out …
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from homefeed import schema, storage
from homefeed.config import Config

from jobs.build_instances import InputDataError, read_table

_WORKER_CACHE: dict[tuple[str, str], Any] = {}


def output_schema() -> str:
    heads = ", ".join(f"p_{h} double" for h in schema.HEADS)
    return f"user_id long, pin_id long, score double, {heads}, holdout boolean, model_version string, request_ts long"


def _worker_state(model_dir: str, raw_root: str, compile_cache: str | None):
    """The scorer (compiled and warmed with ``serving.compile``) and feature snapshot, loaded once
    per Python worker."""
    key = (model_dir, raw_root)
    if key not in _WORKER_CACHE:
        from homefeed import features, registry

        python_model = registry.load_python_model(model_dir)
        if compile_cache:
            outcome = python_model.scorer.compile(Path(compile_cache))
            logging.getLogger("homefeed").info("score-pool worker: %s", outcome.describe("the pool's model"))
        snapshot = features.FeatureSnapshot.load(raw_root)
        features.add_snapshot_pins(python_model, snapshot)
        _WORKER_CACHE[key] = (python_model, snapshot)
    return _WORKER_CACHE[key]


def score_user(served: dict[str, Any], pin_ids: list[int], user_id: int, actions: pd.DataFrame) -> pd.DataFrame:
    """All pins for one user, through the service's feature and scoring code."""
    from homefeed import features, holdout
    from homefeed.registry import ServedModel

    python_model, snapshot = _worker_state(served["model_dir"], served["raw_root"], served["compile_cache"])
    model = ServedModel(served["version"], python_model.scorer, python_model.utility, served["feature_stats"], served["delay_ms"],
                        served["seq_len"], served["raw_root"], served["holdout_fraction"], served["holdout_salt"],
                        getattr(python_model, "pin_vectors", None))
    store = features.InMemorySequenceStore(snapshot, model.seq_len, margin=len(actions) + 1)
    for row in actions.itertuples(index=False):
        store.append(user_id, row.pin_id, row.action, row.ts)
    candidates = [features.Candidate(p, served["request_ts"], "pfy", served["position"]) for p in pin_ids]
    probs, utility, _ = features.score_candidates(model, snapshot, store.history(user_id), user_id, served["request_ts"], candidates)
    frame = pd.DataFrame({"user_id": user_id, "pin_id": pin_ids, "score": utility})
    for i, head in enumerate(schema.HEADS):
        frame[f"p_{head}"] = probs[:, i].astype(float)
    frame["holdout"] = holdout.is_holdout(user_id, served["holdout_fraction"], served["holdout_salt"])
    frame["model_version"] = served["version"]
    frame["request_ts"] = served["request_ts"]
    return frame


def pool_scores(users: DataFrame, actions: DataFrame, pin_ids: list[int], served: dict[str, Any]) -> DataFrame:
    """users (user_id) × pins scored per user; ``actions`` already cut at the request's cut-off."""
    def score_group(user_rows: pd.DataFrame, user_actions: pd.DataFrame) -> pd.DataFrame:
        if user_rows.empty:  # actions of a user outside the requested set
            return pd.DataFrame(columns=[f.split()[0] for f in output_schema().split(", ")])
        return score_user(served, pin_ids, int(user_rows["user_id"].iloc[0]), user_actions)

    return users.groupBy("user_id").cogroup(actions.groupBy("user_id")).applyInPandas(score_group, output_schema())


def _compile_cache(cfg: Config) -> str | None:
    """Where the workers keep compiled kernels, with ``serving.compile``; None: they stay eager."""
    if not cfg.serving.compile:
        return None
    from models.compilation import compile_cache_dir

    return str(compile_cache_dir(cfg.storage.root))


def run(spark: SparkSession, raw_root: str, pin_ids: list[int], out: str, cfg: Config,
        user_ids: list[int] | None = None, request_ts: int | None = None) -> dict[str, Any]:
    from homefeed import registry

    if not pin_ids:
        raise InputDataError("no pins to score (--pins is empty)")
    storage.require_published(raw_root, "raw data")
    model = registry.load_served_model(cfg, cfg.serving.alias)
    request_ts = int(time.time() * 1000) if request_ts is None else request_ts
    users = read_table(spark, raw_root, schema.USERS)
    latest = users.agg(F.max(schema.DT)).first()[0]
    users = users.filter(F.col(schema.DT) == latest).select("user_id")
    if user_ids is not None:
        users = users.join(spark.createDataFrame([(u,) for u in user_ids], "user_id long"), "user_id")
    cutoff = request_ts - model.delay_ms
    actions = read_table(spark, raw_root, schema.ACTIONS).filter(F.col("ts") < cutoff).select("user_id", "pin_id", "ts", "action")
    with tempfile.TemporaryDirectory(prefix="homefeed-pool-model-") as download:
        model_dir = registry.download_model(cfg, cfg.serving.alias, download)
        served = {
            "model_dir": model_dir, "raw_root": cfg.serving.features_root or raw_root, "version": model.version,
            "request_ts": request_ts, "delay_ms": model.delay_ms, "seq_len": model.seq_len, "position": cfg.serving.position,
            "feature_stats": model.feature_stats, "holdout_fraction": model.holdout_fraction, "holdout_salt": model.holdout_salt,
            "compile_cache": _compile_cache(cfg),
        }
        scored = pool_scores(users, actions, sorted(set(pin_ids)), served)
        with storage.publish_dataset(out) as staging:
            scored.write.mode("overwrite").parquet(str(staging))
            rows = spark.read.parquet(str(staging)).agg(F.count("*").alias("rows"), F.sum(F.col("holdout").cast("int")).alias("holdout_rows")).first()
            manifest = {
                "raw_root": raw_root, "pins": sorted(set(pin_ids)), "request_ts": request_ts,
                "model": f"{cfg.registry.model_name}@{cfg.serving.alias}", "model_version": model.version,
                "rows": rows["rows"], "holdout_rows": rows["holdout_rows"] or 0,
            }
            storage.write_json(staging / schema.MANIFEST, manifest)
    return manifest


def main(argv: list[str] | None = None) -> None:
    from homefeed.config import load_config
    from homefeed.spark import session

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", required=True)
    parser.add_argument("--pins", required=True, help="comma-separated pin ids")
    parser.add_argument("--out", required=True)
    parser.add_argument("--users", help="comma-separated user ids (default: every user of the latest snapshot)")
    parser.add_argument("--request-ts", type=int)
    parser.add_argument("--config", action="append", default=[])
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    spark = session(cfg, "score-pool")
    users = [int(u) for u in args.users.split(",")] if args.users else None
    manifest = run(spark, args.raw, [int(p) for p in args.pins.split(",") if p], args.out, cfg, users, args.request_ts)
    print(f"wrote {manifest['rows']} pool entries to {args.out} (model v{manifest['model_version']})")


if __name__ == "__main__":
    main()
