"""Learned pin embeddings, a PinSage stand-in: Spark MLlib over the engagement up to a cut-off day.

TransAct reads each engaged pin as its learned PinSage vector; homefeed's pins carry a content
vector only (random projections of metadata on KuaiRand). This job learns one from engagement:

- extract: the pins snapshot (every pin and its content vector) and the positive actions
  (repin, click, closeup, like, comment) dated **up to and including** ``end``; nothing after it
  is read, so a pipeline that sets ``end`` to the day before its first validation day cannot
  leak evaluation engagement into the vectors;
- transform: ``word2vec`` (item2vec: MLlib's Word2Vec over each user's time-ordered engaged pins)
  or ``als`` (MLlib's implicit ALS on the user × pin engagement counts); pins with at least
  ``min_engagements`` engagements are ``learned``; every other pin of the snapshot keeps its
  content vector mapped into the learned space by a least-squares projection fitted on the
  learned pins (``content``), so unseen pins stay comparable with learned ones;
- load: Parquet ``pin_id, embedding, source`` with a manifest (method, window, counts, coverage,
  the projection and its fit, how far learned neighbourhoods agree with content ones), published atomically (``homefeed.embeddings`` reads it).

Deterministic for a seed: one partition for the model fit (MLlib's Word2Vec and ALS depend on the
partitioning), pins sorted before the projection.
"""

from __future__ import annotations

import argparse
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from homefeed import embeddings, schema, storage
from homefeed.config import Config, EmbeddingsConfig
from homefeed.embeddings import CONTENT, LEARNED
from jobs.build_instances import InputDataError, _input_listing, read_table, with_event_logs


# --------------------------------------------------------------------------- extract
def _end_ms(end: date) -> int:
    """The first millisecond after ``end`` (UTC): actions strictly before it are read."""
    return int(datetime(end.year, end.month, end.day, tzinfo=timezone.utc).timestamp() * 1000) + 86_400_000


def extract(spark: SparkSession, raw_root: str, end: date, event_logs: tuple[str, ...] = ()) -> tuple[DataFrame, DataFrame]:
    """(pins: pin_id, embedding, category of the latest snapshot; engagements: user_id, pin_id, ts
    up to ``end``, from the raw actions and the ``event_logs``' as the instance job reads them)."""
    pins = read_table(spark, raw_root, schema.PINS)
    latest = pins.agg(F.max(schema.DT)).first()[0]
    if latest is None:
        raise InputDataError(f"{schema.PINS}: no snapshot under {raw_root}")
    pins = pins.filter(F.col(schema.DT) == latest).select("pin_id", "embedding", "category")
    actions = with_event_logs(spark, read_table(spark, raw_root, schema.ACTIONS), event_logs)
    engagements = actions.filter(F.col("action").isin(list(schema.POSITIVE_ACTIONS)) & (F.col("ts") < _end_ms(end)))
    return pins, engagements.select("user_id", "pin_id", "ts")


# --------------------------------------------------------------------------- transform
def engaged_pins(engagements: DataFrame, min_engagements: int) -> DataFrame:
    """pin_id of the pins engaged at least ``min_engagements`` times, with that count."""
    return engagements.groupBy("pin_id").agg(F.count("*").alias("engagements")).filter(F.col("engagements") >= min_engagements)


def word2vec(engagements: DataFrame, cfg: EmbeddingsConfig) -> DataFrame:
    """item2vec: each user's engaged pins in time order are a sentence (pin_id, vector)."""
    from pyspark.ml.feature import Word2Vec

    ordered = engagements.groupBy("user_id").agg(F.sort_array(F.collect_list(F.struct("ts", "pin_id"))).alias("events"))
    sentences = ordered.select(F.transform("events", lambda e: e["pin_id"].cast("string")).alias("pins")).repartition(1)
    model = Word2Vec(vectorSize=cfg.dim, windowSize=cfg.window, minCount=cfg.min_engagements, maxIter=cfg.iterations,
                     seed=cfg.seed, numPartitions=1, inputCol="pins", outputCol="vector").fit(sentences)
    return model.getVectors().select(F.col("word").cast("long").alias("pin_id"), F.col("vector"))


def als(engagements: DataFrame, cfg: EmbeddingsConfig) -> DataFrame:
    """Implicit ALS on the user × pin engagement counts; a pin's vector is its item factor."""
    from pyspark.ml.recommendation import ALS

    counts = engagements.groupBy("user_id", "pin_id").agg(F.count("*").cast("float").alias("count")).repartition(1)
    model = ALS(rank=cfg.dim, maxIter=max(cfg.iterations, 5), implicitPrefs=True, seed=cfg.seed, userCol="user_id",
                itemCol="pin_id", ratingCol="count", coldStartStrategy="drop", numUserBlocks=1, numItemBlocks=1).fit(counts)
    return model.itemFactors.select(F.col("id").cast("long").alias("pin_id"), F.col("features").alias("vector"))


METHODS = {"word2vec": word2vec, "als": als}


def learn(engagements: DataFrame, cfg: EmbeddingsConfig) -> dict[int, np.ndarray]:
    """pin_id → learned vector, for the pins engaged at least ``cfg.min_engagements`` times."""
    vectors = METHODS[cfg.method](engagements, cfg)
    kept = vectors.join(engaged_pins(engagements, cfg.min_engagements).select("pin_id"), "pin_id")
    def array(vector) -> np.ndarray:  # Word2Vec gives an ml Vector, ALS a plain array
        return np.asarray(vector.toArray() if hasattr(vector, "toArray") else vector, dtype=np.float32)

    return {int(row["pin_id"]): array(row["vector"]) for row in kept.collect()}


def content_projection(content: dict[int, np.ndarray], learned: dict[int, np.ndarray]) -> tuple[np.ndarray, float]:
    """The least-squares map W (content dim + 1 → learned dim, with a bias) fitted on the learned
    pins, and its R² (how much of the learned space content explains)."""
    ids = sorted(set(learned) & set(content))
    if len(ids) < 2:
        raise InputDataError(f"only {len(ids)} pins have a learned vector: too little engagement to learn embeddings "
                             "(an earlier --end, or a smaller embeddings.min_engagements)")
    x = np.hstack([np.stack([content[i] for i in ids]), np.ones((len(ids), 1), np.float32)])
    y = np.stack([learned[i] for i in ids])
    weights, *_ = np.linalg.lstsq(x, y, rcond=None)
    residual = ((x @ weights - y) ** 2).sum()
    total = ((y - y.mean(axis=0)) ** 2).sum()
    return weights.astype(np.float32), float(1.0 - residual / total) if total > 0 else 0.0


def assemble(content: dict[int, np.ndarray], learned: dict[int, np.ndarray]) -> tuple[list[int], list[np.ndarray], list[str], dict[str, Any]]:
    """Every pin of the snapshot (ids, vectors, sources): its learned vector, or its content vector
    projected; and the fit (the projection itself, which readers apply to pins they meet later)."""
    weights, r2 = content_projection(content, learned)
    ids = sorted(content)
    vectors, sources = [], []
    for pin in ids:
        if pin in learned:
            vectors.append(learned[pin])
            sources.append(LEARNED)
        else:
            vectors.append(np.append(content[pin], 1.0).astype(np.float32) @ weights)
            sources.append(CONTENT)
    return ids, vectors, sources, {"content_projection_r2": r2, "projection": weights.tolist()}


def _learned_and_content(learned: dict[int, np.ndarray], content: dict[int, np.ndarray],
                         category: dict[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The learned pins' learned vectors, content vectors and categories, in pin order."""
    ids = sorted(learned)
    if not ids:
        return np.zeros((0, 1)), np.zeros((0, 1)), np.zeros(0, np.int64)
    return (np.stack([learned[i] for i in ids]), np.stack([content[i] for i in ids]), np.array([category[i] for i in ids]))


# --------------------------------------------------------------------------- load
def run(spark: SparkSession, raw_root: str, out: str, cfg: Config, end: date, event_logs: tuple[str, ...] = ()) -> dict[str, Any]:
    """Learn, assemble and publish the pins' embeddings; the manifest. Skips the work when ``out``
    already holds the output of the same inputs, config and cut-off day."""
    ecfg = cfg.embeddings
    if ecfg.method == "none":
        raise InputDataError("embeddings.method is none: choose word2vec or als")
    storage.require_published(raw_root, "raw data")
    fingerprint = storage.fingerprint({"inputs": _input_listing(raw_root, event_logs), "config": ecfg.model_dump(mode="json"), "end": end.isoformat()})
    previous = storage.intact_dataset(out, "pin embeddings")
    if previous is not None and previous.get("fingerprint") == fingerprint:
        return previous
    pins, engagements = extract(spark, raw_root, end, event_logs)
    engagements = engagements.cache()
    window = engagements.agg(F.min("ts").alias("first"), F.count("*").alias("n")).first()
    if not window["n"]:
        raise InputDataError(f"no positive actions up to {end.isoformat()} under {raw_root}: nothing to learn from")
    snapshot = pins.collect()
    content = {int(r["pin_id"]): np.asarray(r["embedding"], dtype=np.float32) for r in snapshot}
    category = {int(r["pin_id"]): int(r["category"] or 0) for r in snapshot}
    learned = {pin: vector for pin, vector in learn(engagements, ecfg).items() if pin in content}
    ids, vectors, sources, fit = assemble(content, learned)
    agreement = embeddings.neighbourhood_agreement(*_learned_and_content(learned, content, category), seed=ecfg.seed)
    engaged_in_window = engagements.join(spark.createDataFrame([(p,) for p in learned] or [(-1,)], "pin_id long"), "pin_id").count()
    manifest = {
        "fingerprint": fingerprint, "method": ecfg.method, "config": ecfg.model_dump(mode="json"),
        "window": {"first_ts": int(window["first"]), "end": end.isoformat(), "end_exclusive_ms": _end_ms(end)},
        "raw_root": str(raw_root), "event_logs": list(event_logs), "pins": len(content), "learned": len(learned), "content": len(content) - len(learned),
        "coverage": {"pins": len(learned) / len(content), "engagements": engaged_in_window / window["n"]},
        "engagements": int(window["n"]), "neighbours": agreement, **fit,
    }
    engagements.unpersist()
    with storage.publish_dataset(out) as staging:
        return embeddings.write(staging, ids, vectors, sources, manifest)


def read(path: str | Path) -> pa.Table:
    """A published embedding table as it is (pin_id, embedding, source); readers that score use
    :class:`homefeed.embeddings.PinVectors`."""
    return pq.read_table(storage.require_published(str(path), "pin embeddings") / embeddings.TABLE_FILE)


def main(argv: list[str] | None = None) -> None:
    from homefeed.config import load_config
    from homefeed.spark import session

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", required=True)
    parser.add_argument("--end", required=True, type=date.fromisoformat)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    cfg = load_config()
    print(run(session(cfg, "embed-pins"), args.raw, args.out, cfg, args.end))


if __name__ == "__main__":
    main()
