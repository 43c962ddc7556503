"""Build labelled training instances with realtime action sequences from the raw contract.

Extract (read and check the four raw tables) → transform (pure DataFrame functions below) →
load (atomic publish of two tables with ``_manifest.json`` and ``_SUCCESS``).

Locally: ``homefeed build-instances --raw RAW --out OUT [--start YYYY-MM-DD --end YYYY-MM-DD]``.
On a cluster, from a machine with homefeed installed (client deploy mode: the driver runs there;
executors run only JVM code, no Python UDFs, so they need no Python packages; the deployment
image adds hadoop-aws for s3a:// URIs)::

    spark-submit --master spark://HOST:7077 --conf spark.executor.memory=4g \
        jobs/build_instances.py --raw s3a://bucket/raw --out s3a://bucket/instances/2026-01-12 \
        [--start 2026-01-05 --end 2026-01-11] [--config overlay.yaml]

``tests/jobs/test_spark_cluster.py`` runs exactly this against a standalone master and two
workers on 127.0.0.1 and compares the result with a local run.

The sequence plan is linear under skew: every event (impression cut-off or action) of a user is
ranked once by a running count (a growing ``ROWS`` frame, not a per-row range frame), a user's
actions are grouped into overlapping blocks of ``2 * seq_len`` consecutive positions, and each
*request* (one user, one cut-off ``ts - delay``) joins the one block that holds its latest
``seq_len`` actions and slices them out.

Output layout: two tables under one ``_manifest.json`` and one ``_SUCCESS``::

    rows/split=S/bucket=B/*.parquet       one row per kept impression (metadata, labels, weight,
                                          fold, features) and ``sequence_key``
    sequences/split=S/bucket=B/*.parquet  one row per distinct (user_id, ts): ``sequence_key``,
                                          ``user_id``, ``ts``, ``seq_pin_id``, ``seq_action``,
                                          ``seq_ts`` (newest first, <= seq_len, before ts - delay)
    _pin_features/*.parquet               pin_id → embedding (the one copy of it): the content vector,
                                          or with ``--pin-embeddings`` the learned one

A request's ~28 candidates share one sequence, so it is written once, not once per row (RecD's
deduplication of request-level features). The key is ``xxhash64(user_id, ts)``; the job checks
that no two sequences share one. Both tables are **bucketed by user** into
``instances.buckets`` buckets (``pmod(xxhash64(user_id), buckets)``), and a bucket is written
by one task: every row's sequence lies in the same split and bucket as the row, so a reader
streams one bucket's sequences (1/buckets of them) with that bucket's rows and never holds the
whole sequence table. User buckets, not request buckets, because a user's rows then sit together
(sorted by user and time), and the split comes first because readers read one split at a time.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from homefeed import contract, schema, segments, storage
from homefeed.config import Config, InstancesConfig
from homefeed.embeddings import PinVectors
from homefeed.errors import PermanentError


log = logging.getLogger(__name__)
IMPRESSION_KEY = ("request_id", "pin_id")
_RANK = "_rank"
_KIND = "_kind"  # 0: an impression's cut-off, 1: an action; cut-offs sort first on ties
_T = "_t"
_ROW = "_row"  # an impression's other columns, carried through the sort instead of joined back
# A block event's field → the sequence column sliced from it, and its element type.
_SEQUENCE_FIELDS = (("pin_id", schema.SEQ_PIN_ID, "bigint"), ("action_code", schema.SEQ_ACTION, "int"), ("ts", schema.SEQ_TS, "bigint"))


class InputDataError(PermanentError, ValueError):
    """Raw input that breaks the contract; the message names the table and column."""


@dataclass(frozen=True)
class RawTables:
    impressions: DataFrame
    actions: DataFrame
    pins: DataFrame
    users: DataFrame


# =========================================================================== extract
def _table_path(raw_root: str, table: str) -> str:
    return f"{raw_root.rstrip('/')}/{table}"


def check_files(raw_root: str, table: str) -> None:
    """Every Parquet footer of a local table, before Spark reads any: an unreadable (truncated)
    file or a column of another type in one partition is one line naming the file, instead of a
    Py4J stack trace from the middle of the job."""
    import pyarrow.parquet as pq

    if "://" in raw_root and not raw_root.startswith("file://"):
        return  # object stores: Spark's own error (footers are not fetched twice)
    expected = schema.arrow_schema(table, with_dt=False)
    for path in storage.list_files(storage.local_path(_table_path(raw_root, table))):
        try:
            found = pq.read_schema(path)
        except Exception as exc:  # ArrowInvalid, OSError: truncated or not Parquet at all
            raise InputDataError(f"{table}: {path} is not a readable Parquet file ({str(exc).splitlines()[0]})") from None
        for field in expected:
            index = found.get_field_index(field.name)
            if index >= 0 and not found.field(index).type.equals(field.type):
                raise InputDataError(f"{table}: {path}: column {field.name!r} has type {found.field(index).type}, expected {field.type}")


def read_table(spark: SparkSession, raw_root: str, table: str) -> DataFrame:
    """Read one raw table and check it against the contract (columns and types)."""
    path = _table_path(raw_root, table)
    check_files(raw_root, table)
    try:
        frame = spark.read.option("basePath", path).parquet(path)
    except Exception as exc:  # AnalysisException, corrupt footers, missing paths
        raise InputDataError(f"{table}: cannot read Parquet at {path}: {str(exc).splitlines()[0]}") from exc
    check_schema(frame, table)
    return frame


def check_schema(frame: DataFrame, table: str) -> None:
    actual = {f.name: f.dataType.simpleString() for f in frame.schema.fields}
    for name, ddl in schema.RAW_COLUMNS[table]:
        if name not in actual:
            raise InputDataError(f"{table}: missing column {name!r} (have {sorted(actual)})")
        if actual[name] != ddl:
            raise InputDataError(f"{table}: column {name!r} has type {actual[name]}, expected {ddl}")


# A check: (message with {n} for the count, the condition true on a failing row, whether the
# message names an example row).
Check = tuple[str, Column, bool]


def _first_violation(frame: DataFrame, checks: list[Check]) -> tuple[Check, int] | None:
    """The first check some row fails and how many rows fail it, in one pass over ``frame``."""
    counts = frame.agg(*[F.sum(cond.cast("long")).alias(f"c{i}") for i, (_, cond, _) in enumerate(checks)]).first()
    return next(((check, counts[f"c{i}"]) for i, check in enumerate(checks) if counts[f"c{i}"]), None)


def _contract_checks(table: str, now_ms: int) -> list[Check]:
    return [(f"{table}: {{n}} rows break the rule '{rule.holds}'", F.expr(rule.condition(now_ms)), True) for rule in contract.rules(table)]


def _example(frame: DataFrame, table: str, condition: Column) -> str:
    """One offending row's key, for the message."""
    keys = [c for c in schema.RAW_KEYS[table] if c in frame.columns] + ([schema.DT] if schema.DT in frame.columns else [])
    row = frame.filter(condition).select(*keys).limit(1).collect()
    return f" (e.g. {', '.join(f'{k}={row[0][k]!r}' for k in keys)})" if row else ""


def check_rows(tables: dict[str, DataFrame], now_ms: int) -> None:
    """Null keys, duplicate impressions, unknown values, and every row rule of the contract
    (``homefeed.contract``, shared with the suites); one pass per table."""
    checks: dict[str, list[Check]] = {
        schema.IMPRESSIONS: [
            *[(f"{schema.IMPRESSIONS}: column {c!r} has {{n}} null or invalid values", F.col(c).isNull(), False) for c in ("request_id", "user_id", "pin_id", "ts")],
            (f"{schema.IMPRESSIONS}: column 'source' has {{n}} null or invalid values", ~F.col("source").isin(*schema.SOURCES), False),
        ],
        schema.ACTIONS: [
            *[(f"{schema.ACTIONS}: column {c!r} has {{n}} rows with null", F.col(c).isNull(), False) for c in ("user_id", "pin_id", "ts", "action")],
            (f"{schema.ACTIONS}: column 'action' has {{n}} rows with unknown action type", ~F.col("action").isin(*schema.ACTION_NAMES), False),
        ],
        schema.PINS: [],
        schema.USERS: [],
    }
    for table, table_checks in checks.items():
        found = _first_violation(tables[table], table_checks + _contract_checks(table, now_ms))
        if found:
            (message, condition, with_example), rows = found
            raise InputDataError(message.format(n=rows) + (_example(tables[table], table, condition) if with_example else ""))
    duplicates = tables[schema.IMPRESSIONS].groupBy(*IMPRESSION_KEY).count().filter(F.col("count") > 1).limit(1).collect()
    if duplicates:
        row = duplicates[0]
        raise InputDataError(
            f"{schema.IMPRESSIONS}: duplicate impressions on key {IMPRESSION_KEY} "
            f"(e.g. request_id={row['request_id']!r}, pin_id={row['pin_id']})"
        )


def check_window(impressions: DataFrame, pins: DataFrame, start: date, end: date, max_unknown_pin_rate: float) -> None:
    """Inside the window: every day has impressions (an empty dt partition silently dropped a day
    of training rows), and few impressions name pins the pins snapshot does not have."""
    stats = impressions.agg(F.collect_set(schema.DT).alias("days"), F.count(F.lit(1)).alias("rows")).first()
    present = set(stats["days"] or [])
    missing = [d for d in (start + timedelta(days=i) for i in range((end - start).days + 1)) if d.isoformat() not in present]
    if missing:
        shown = ", ".join(d.isoformat() for d in missing[:5]) + (" …" if len(missing) > 5 else "")
        raise InputDataError(f"{schema.IMPRESSIONS}: no rows for dt={shown} inside the window {start}..{end}; "
                             "pass --start/--end around the gap or land the missing day")
    unknown = impressions.select("pin_id").join(F.broadcast(pins.select("pin_id")), "pin_id", "left_anti")
    count = unknown.count()
    if stats["rows"] and count / stats["rows"] > max_unknown_pin_rate:
        examples = sorted(r["pin_id"] for r in unknown.distinct().limit(5).collect())
        raise InputDataError(
            f"{schema.IMPRESSIONS}: {count} of {stats['rows']} impressions ({count / stats['rows']:.1%}) name pins absent from "
            f"the {schema.PINS} snapshot (e.g. pin_id {examples}); validation.max_unknown_pin_rate is {max_unknown_pin_rate:.1%}"
        )


def with_event_logs(spark: SparkSession, actions: DataFrame, event_logs: tuple[str, ...]) -> DataFrame:
    """The raw actions and those of the ``event_logs`` (same contract), an action in both once."""
    if not event_logs:
        return actions
    columns = [*schema.columns(schema.ACTIONS), schema.DT]
    union = actions.select(*columns)
    for root in event_logs:
        union = union.unionByName(read_table(spark, root, schema.ACTIONS).select(*columns))
    return union.dropDuplicates(list(schema.RAW_KEYS[schema.ACTIONS]))


def extract(spark: SparkSession, raw_root: str, start: date | None, end: date | None, now_ms: int,
            max_unknown_pin_rate: float = 0.01, event_logs: tuple[str, ...] = ()) -> tuple[RawTables, date, date]:
    """Read and check the raw tables (all of them: a bad row outside the window is still a bad
    producer), then keep the window's impressions and the actions that can matter to them.

    ``event_logs``: roots holding an ``actions`` table of the same contract (the ranking
    service's log of acknowledged events): their actions join the raw ones, an action in both
    counted once (the contract's key), so a retraining sees what users did on served feeds."""
    tables = {t: read_table(spark, raw_root, t) for t in schema.RAW_TABLES}
    tables[schema.ACTIONS] = with_event_logs(spark, tables[schema.ACTIONS], event_logs)
    check_rows(tables, now_ms)
    impressions = tables[schema.IMPRESSIONS]
    if start is None or end is None:
        bounds = impressions.agg(F.min(schema.DT).alias("lo"), F.max(schema.DT).alias("hi")).first()
        if bounds["lo"] is None:
            raise InputDataError(f"{schema.IMPRESSIONS}: no rows under {_table_path(raw_root, schema.IMPRESSIONS)}")
        start = start or date.fromisoformat(bounds["lo"])
        # The newest *landed* day, as the pipeline's --end is: an empty newest partition is then
        # refused by check_window below in both, instead of silently dropped when run directly.
        landed = storage.landed_days(raw_root) if "://" not in raw_root or raw_root.startswith("file://") else []
        end = end or max([date.fromisoformat(bounds["hi"]), *landed])
    impressions = impressions.filter(F.col(schema.DT).between(start.isoformat(), end.isoformat()))
    # History before the window feeds sequences; one day after it feeds late labels.
    actions = tables[schema.ACTIONS].filter(F.col(schema.DT) <= (end + timedelta(days=1)).isoformat())
    latest_snapshot = {
        t: tables[t].agg(F.max(schema.DT)).first()[0] for t in (schema.PINS, schema.USERS)
    }
    for table, snapshot in latest_snapshot.items():
        if snapshot is None:
            raise InputDataError(f"{table}: no snapshot under {_table_path(raw_root, table)}")
    pins = tables[schema.PINS].filter(F.col(schema.DT) == latest_snapshot[schema.PINS])
    users = tables[schema.USERS].filter(F.col(schema.DT) == latest_snapshot[schema.USERS])
    check_window(impressions, pins, start, end, max_unknown_pin_rate)
    return RawTables(impressions, actions, pins, users.withColumn("_snapshot_dt", F.col(schema.DT))), start, end


# =========================================================================== transform
def add_labels(impressions: DataFrame, actions: DataFrame, window_ms: int) -> DataFrame:
    """One ``label_<head>`` per head: did the user act on the pin within ``window_ms`` after it."""
    per_pair = actions.groupBy("user_id", "pin_id").agg(
        F.collect_list(F.struct(F.col("ts").alias("ts"), F.col("action").alias("action"))).alias("_acts")
    )
    joined = impressions.join(per_pair, ["user_id", "pin_id"], "left")
    acts = F.coalesce(F.col("_acts"), F.array().cast("array<struct<ts:bigint,action:string>>"))

    def acted(head: str) -> Column:
        in_window = lambda a: (a["action"] == head) & (a["ts"] >= F.col("ts")) & (a["ts"] <= F.col("ts") + window_ms)  # noqa: E731
        return F.exists(acts, in_window).cast("int")

    labels = {schema.label_column(head): acted(head) for head in schema.HEADS}
    return joined.withColumns(labels).drop("_acts")


def rank_events(impressions: DataFrame, actions: DataFrame, pins: DataFrame, delay_ms: int) -> DataFrame:
    """Impression cut-offs and actions of each user in one frame, with running counts.

    For an impression row: ``_rank`` = actions strictly before ``ts - delay``; the engagement
    counts = positive actions before it on the pin's category / owner. Only impression rows are
    read afterwards, and their counts do not depend on how tied actions are ordered.
    """
    pin_keys = pins.select("pin_id", "category", "owner_id")
    positive = F.col("action").isin(*schema.POSITIVE_ACTIONS).cast("long")
    queries = impressions.join(F.broadcast(pin_keys), "pin_id", "left").select(
        "user_id", "category", "owner_id", "request_id", "pin_id",
        (F.col("ts") - delay_ms).alias(_T), F.lit(0).alias(_KIND), F.lit(0).cast("long").alias("_positive"),
        F.struct(*[c for c in impressions.columns if c not in ("user_id", "request_id", "pin_id")]).alias(_ROW),
    )
    events = actions.join(F.broadcast(pin_keys), "pin_id", "left").select(
        "user_id", "category", "owner_id", F.lit(None).cast("string").alias("request_id"), "pin_id",
        F.col("ts").alias(_T), F.lit(1).alias(_KIND), positive.alias("_positive"),
    )
    running = Window.unboundedPreceding, Window.currentRow
    by_user = Window.partitionBy("user_id").orderBy(_T, _KIND).rowsBetween(*running)
    by_category = Window.partitionBy("user_id", "category").orderBy(_T, _KIND).rowsBetween(*running)
    by_owner = Window.partitionBy("user_id", "owner_id").orderBy(_T, _KIND).rowsBetween(*running)
    return queries.unionByName(events, allowMissingColumns=True).withColumns(
        {
            _RANK: F.sum(F.col(_KIND).cast("long")).over(by_user),
            "user_category_engagements": F.sum("_positive").over(by_category),
            "user_owner_engagements": F.sum("_positive").over(by_owner),
        }
    )


def impression_cutoffs(ranked: DataFrame, seq_len: int) -> DataFrame:
    """Per impression: its running counts and where its sequence lies in the user's history.

    ``_lo``.. ``_hi`` are the 0-based positions of the latest ``seq_len`` actions before the
    cut-off (empty when ``_hi`` < ``_lo``); ``_block`` is the one block that holds all of them.
    """
    hi = F.col(_RANK) - 1
    return ranked.filter(F.col(_KIND) == 0).select(
        "request_id", "pin_id", "user_id", f"{_ROW}.*",
        F.col(_RANK).alias("user_prior_actions"), "user_category_engagements", "user_owner_engagements",
        F.greatest(F.col(_RANK) - seq_len, F.lit(0)).alias("_lo"), hi.alias("_hi"),
        F.when(hi >= 0, F.floor(hi / seq_len)).alias("_block"),
    )


def action_blocks(actions: DataFrame, seq_len: int) -> DataFrame:
    """Each user's actions in overlapping blocks: block ``b`` holds positions
    [(b - 1)·seq_len, (b + 1)·seq_len) of the user's history, so the latest ``seq_len`` actions
    before any cut-off lie in a single block (the one holding the newest of them) and each
    impression joins exactly one block. Every action is in two blocks: twice the block rows for
    one join instead of two.

    The order (ts, pin_id, action code) is the one ``rank_events`` counts in, so a cut-off's rank
    is the number of positions before it.
    """
    code = _lookup(schema.ACTION_CODES, "action")
    by_user = Window.partitionBy("user_id").orderBy("ts", "pin_id", code)
    positioned = actions.select(
        "user_id", "ts", "pin_id", code.cast("int").alias("action_code"), (F.row_number().over(by_user) - 1).alias("_pos")
    )
    own_block = F.floor(F.col("_pos") / seq_len)
    events = positioned.select(
        "user_id", F.explode(F.array(own_block, own_block + 1)).alias("_block"),
        F.struct("_pos", "ts", "pin_id", "action_code").alias("_event"),
    )
    blocks = events.groupBy("user_id", "_block").agg(F.sort_array(F.collect_list("_event")).alias("_events"))
    return blocks.select(
        "user_id", "_block",
        F.col("_events")[0]["_pos"].alias("_first_pos"),
        *[F.transform("_events", _field_of(field)).alias(f"_block_{field}") for field, _, _ in _SEQUENCE_FIELDS],
    )


def _field_of(field: str):
    # transform() reads a two-argument lambda as (element, index), so no default-argument binding.
    return lambda event: event[field]


def _lookup(mapping: dict[str, int], column: str) -> Column:
    """``mapping[column]`` as a literal map lookup (null for a key it does not have)."""
    return F.element_at(F.create_map(*[F.lit(x) for pair in mapping.items() for x in pair]), F.col(column))


def with_sequences(rows: DataFrame, blocks: DataFrame) -> DataFrame:
    """Slice each row's sequence out of its block, newest first; rows keep every other column."""
    joined = rows.join(blocks, ["user_id", "_block"], "left")
    start = F.col("_lo") - F.col("_first_pos") + 1  # 1-based
    length = F.greatest(F.col("_hi") - F.col("_lo") + 1, F.lit(0))

    def newest_first(field: str, element: str) -> Column:
        return F.coalesce(F.reverse(F.slice(F.col(f"_block_{field}"), start, length)), F.array().cast(f"array<{element}>"))

    return joined.withColumns(
        {column: newest_first(field, element) for field, column, element in _SEQUENCE_FIELDS}
    ).drop("_block", "_lo", "_hi", "_first_pos", *[f"_block_{field}" for field, _, _ in _SEQUENCE_FIELDS])


def attach_sequences(ranked: DataFrame, actions: DataFrame, seq_len: int) -> DataFrame:
    """Per impression of ``ranked``: its counts and the latest ``seq_len`` actions before its cut-off."""
    return with_sequences(impression_cutoffs(ranked, seq_len), action_blocks(actions, seq_len)).drop("user_id")


def add_features(instances: DataFrame, pins: DataFrame, users: DataFrame) -> DataFrame:
    """Pin, pinner and metadata features (before log1p and standardisation)."""
    hour_ms, day_ms = 3_600_000, segments.DAY_MS
    pin_cols = pins.select(
        "pin_id",
        F.col("repin_count").alias("pin_repin_count"),
        F.col("click_count").alias("pin_click_count"),
        F.col("impression_count").alias("pin_impression_count"),
        F.col("spam_score").alias("pin_spam_score"),
        F.col("created_ts").alias("_created_ts"),
        F.col("category").alias("pin_category"),
    )
    user_cols = users.select(
        "user_id",
        F.col("board_count").alias("user_board_count"),
        F.col("follower_count").alias("user_follower_count"),
        F.col("pin_count").alias("user_pin_count"),
        "signup_ts", "last_active_ts", "actions_28d", "gender",
        (F.unix_timestamp(F.to_timestamp("_snapshot_dt")) * 1000).alias("_snapshot_ts"),
    )
    gender_id = F.coalesce(_lookup({g: i + 1 for i, g in enumerate(schema.GENDERS)}, "gender"), F.lit(0))
    source_id = F.coalesce(_lookup({s: i + 1 for i, s in enumerate(schema.SOURCES)}, "source"), F.lit(0))
    with_sides = instances.join(F.broadcast(pin_cols), "pin_id", "left").join(F.broadcast(user_cols), "user_id", "left")
    return with_sides.withColumns(
        {
            "feed_position": F.col("position").cast("double"),
            "pin_age_hours": F.greatest((F.col("ts") - F.col("_created_ts")) / hour_ms, F.lit(0.0)),
            "user_account_age_days": F.greatest((F.col("ts") - F.col("signup_ts")) / day_ms, F.lit(0.0)),
            schema.SEGMENT: segments.segment_column(
                F.col("ts"), F.col("signup_ts"), F.col("last_active_ts"), F.col("_snapshot_ts"), F.col("actions_28d")
            ),
            "pin_category": F.coalesce(F.col("pin_category"), F.lit(0)) % schema.NUM_CATEGORIES,
            "user_gender": gender_id,
            "source_id": source_id,
        }
    ).drop("_created_ts", "signup_ts", "last_active_ts", "actions_28d", "gender", "_snapshot_ts")


def log_transform(frame: DataFrame) -> DataFrame:
    """log1p on count features (seed: counts become regression-friendly)."""
    return frame.withColumns(
        {f: F.log1p(F.greatest(F.coalesce(F.col(f).cast("double"), F.lit(0.0)), F.lit(0.0))) for f in schema.LOG1P_FEATURES}
    )


def validation_start(end: date, cfg: InstancesConfig) -> date:
    """The first validation day of a window ending on ``end``: anything learned for training (pin
    embeddings) may read engagement only before it."""
    return end - timedelta(days=cfg.test_days - 1 + cfg.validation_days)


def last_training_day(end: date, cfg: InstancesConfig) -> date:
    """The last day a window ending on ``end`` trains on: the cut-off of what the pin embeddings may read."""
    return validation_start(end, cfg) - timedelta(days=1)


def assign_splits(frame: DataFrame, start: date, end: date, cfg: InstancesConfig) -> DataFrame:
    """Time split: the last ``test_days`` are test, the ``validation_days`` before them validation."""
    test_from = end - timedelta(days=cfg.test_days - 1)
    validation_from = validation_start(end, cfg)
    if validation_from <= start:
        raise InputDataError(
            f"{schema.IMPRESSIONS}: window {start}..{end} is too short for {cfg.validation_days} validation "
            f"and {cfg.test_days} test days with at least one training day"
        )
    return frame.withColumns(
        {
            schema.SPLIT: F.when(F.col(schema.DT) >= test_from.isoformat(), "test")
            .when(F.col(schema.DT) >= validation_from.isoformat(), "validation")
            .otherwise("train"),
            schema.FOLD: F.pmod(F.xxhash64(F.col("user_id"), F.lit(cfg.seed)), F.lit(schema.NUM_FOLDS)).cast("int"),
        }
    )


def sample(frame: DataFrame, cfg: InstancesConfig) -> DataFrame:
    """Keep train positives at ``positive_rate`` and negatives at ``negative_rate``, deterministically.

    Validation and test keep every row (weight 1), so metrics see the true distribution.
    """
    any_label = F.greatest(*[F.col(c) for c in schema.LABEL_COLUMNS]) > 0
    rate = F.when(F.col(schema.SPLIT) != "train", F.lit(1.0)).when(any_label, F.lit(cfg.positive_rate)).otherwise(F.lit(cfg.negative_rate))
    uniform = F.pmod(F.xxhash64("request_id", "pin_id", F.lit(cfg.seed)), F.lit(1_000_000)) / F.lit(1_000_000.0)
    return frame.withColumn("_rate", rate).filter(uniform < F.col("_rate")).withColumn(
        schema.SAMPLE_WEIGHT, (1.0 / F.col("_rate")).cast("float")
    ).drop("_rate")


def fit_standardizer(train: DataFrame) -> dict[str, dict[str, float]]:
    aggs = [F.mean(f).alias(f"{f}__mean") for f in schema.DENSE_FEATURES] + [
        F.stddev_pop(f).alias(f"{f}__std") for f in schema.DENSE_FEATURES
    ]
    row = train.agg(*aggs).first()
    stats = {}
    for f in schema.DENSE_FEATURES:
        mean, std = row[f"{f}__mean"], row[f"{f}__std"]
        stats[f] = {"mean": float(mean or 0.0), "std": float(std) if std and std > 1e-9 else 1.0}
    return stats


def standardize(frame: DataFrame, stats: dict[str, dict[str, float]]) -> DataFrame:
    return frame.withColumns(
        {f: ((F.coalesce(F.col(f).cast("double"), F.lit(s["mean"])) - s["mean"]) / s["std"]).cast("float") for f, s in stats.items()}
    )


OUTPUT_COLUMNS = (*schema.ROW_COLUMNS, schema.SPLIT, schema.BUCKET)
SEQUENCE_OUTPUT_COLUMNS = (*schema.SEQUENCE_TABLE_COLUMNS, schema.SPLIT, schema.BUCKET)


def evaluation_split(frame: DataFrame, cfg: InstancesConfig) -> DataFrame:
    """Every row in ``test`` (unsampled): instances to score an existing model on, not to train."""
    return frame.withColumns(
        {
            schema.SPLIT: F.lit("test"),
            schema.FOLD: F.pmod(F.xxhash64(F.col("user_id"), F.lit(cfg.seed)), F.lit(schema.NUM_FOLDS)).cast("int"),
        }
    )


def with_sequence_keys(rows: DataFrame, buckets: int) -> DataFrame:
    """``sequence_key`` (the request's sequence: one user, one cut-off) and the user's bucket."""
    return rows.withColumns(
        {
            schema.SEQUENCE_KEY: F.xxhash64("user_id", "ts"),
            schema.BUCKET: F.pmod(F.xxhash64("user_id"), F.lit(buckets)).cast("int"),
        }
    )


def request_sequences(rows: DataFrame, blocks: DataFrame) -> DataFrame:
    """One row per distinct (user, ts) of ``rows``: its sequence, sliced once for all its candidates."""
    requests = rows.select(
        schema.SEQUENCE_KEY, "user_id", "ts", schema.SPLIT, schema.BUCKET, "_block", "_lo", "_hi"
    ).dropDuplicates(["user_id", "ts"])
    return with_sequences(requests, blocks).select(*SEQUENCE_OUTPUT_COLUMNS)


@dataclass(frozen=True)
class InstanceFrames:
    """The job's output before standardisation, in two parts: ``rows`` (one per kept impression:
    metadata, labels, split, weight, features, its sequence key and where its sequence lies) is
    narrow enough to cache while the standardiser is fitted; ``blocks`` (the users' action
    histories) is sliced once per request on the way to the writer."""

    rows: DataFrame
    blocks: DataFrame

    def sequences(self) -> DataFrame:
        return request_sequences(self.rows, self.blocks)

    def instances(self) -> DataFrame:
        """The per-impression view (each row with its own copy of the sequence), for tests and benchmarks."""
        return with_sequences(self.rows, self.blocks)


def build_instance_frames(raw: RawTables, start: date, end: date, cfg: InstancesConfig, evaluation_only: bool = False) -> InstanceFrames:
    labelled = add_labels(raw.impressions, raw.actions, cfg.attribution_window_ms)
    split = evaluation_split(labelled, cfg) if evaluation_only else assign_splits(labelled, start, end, cfg)
    # Sampling needs only the labels and the split, so the rows it drops never reach the sequence
    # and feature joins, which cost per row. The sequences do not depend on which impressions are
    # kept: an impression's cut-off counts actions only.
    kept = sample(split, cfg)
    history = raw.actions.filter(F.col("ts") < F.lit((_epoch_ms(end) + segments.DAY_MS)))
    rows = impression_cutoffs(rank_events(kept, history, raw.pins, cfg.delay_ms), cfg.seq_len)
    rows = with_sequence_keys(log_transform(add_features(rows, raw.pins, raw.users)), cfg.buckets)
    return InstanceFrames(rows, action_blocks(history, cfg.seq_len))


def build_instances(raw: RawTables, start: date, end: date, cfg: InstancesConfig, evaluation_only: bool = False) -> DataFrame:
    """All transforms, before standardisation (which needs the train split's statistics)."""
    return build_instance_frames(raw, start, end, cfg, evaluation_only).instances()


def _epoch_ms(day: date) -> int:
    from datetime import datetime, time, timezone

    return int(datetime.combine(day, time(), tzinfo=timezone.utc).timestamp() * 1000)


# =========================================================================== load
def _code_version() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# Bumped when the published layout changes, so a re-run over an older layout rebuilds it.
# 2: request-level (rows/ + sequences/, _manifest.json).
LAYOUT_VERSION = 2


def _input_listing(raw_root: str, event_logs: tuple[str, ...] = ()) -> dict[str, list[tuple[str, str]]]:
    """Every raw file (and every event log's actions file) with a hash of its bytes: an edit that
    keeps a file's size (two values swapped) still changes it. blake2b over the 2M-impression
    simulation's raw files (40 MB) takes ~0.1 s, against ~45 s for the job."""
    def hashed(root: Path, table: str) -> list[tuple[str, str]]:
        return [(str(path.relative_to(root)), storage.file_digest(path)) for path in storage.list_files(root / table)]

    root = storage.local_path(raw_root)
    listing = {table: hashed(root, table) for table in schema.RAW_TABLES}
    for log in event_logs:
        listing[f"events:{log}"] = hashed(storage.local_path(log), schema.ACTIONS)
    return listing


def event_log_roots(candidates: list[str]) -> tuple[str, ...]:
    """The candidates that hold published actions (an event log nobody wrote to is skipped)."""
    return tuple(c for c in candidates if storage.list_files(storage.local_path(c) / schema.ACTIONS))


def _label_rates(frame: DataFrame) -> dict[str, dict[str, Any]]:
    aggs = [F.count(F.lit(1)).alias("rows"), F.sum(schema.SAMPLE_WEIGHT).alias("weighted_rows")]
    aggs += [F.sum(F.col(c) * F.col(schema.SAMPLE_WEIGHT)).alias(c) for c in schema.LABEL_COLUMNS]
    result = {}
    for row in frame.groupBy(schema.SPLIT).agg(*aggs).collect():
        weighted = row["weighted_rows"] or 1.0
        result[row[schema.SPLIT]] = {
            "rows": row["rows"],
            "label_rates": {h: float(row[schema.label_column(h)] or 0.0) / weighted for h in schema.HEADS},
        }
    return result


def run(
    spark: SparkSession, raw_root: str, out: str, cfg: Config, start: date | None = None, end: date | None = None,
    now_ms: int | None = None, feature_stats: dict[str, dict[str, float]] | None = None, event_logs: tuple[str, ...] = (),
    pin_embeddings: str | None = None,
) -> dict[str, Any]:
    """Extract → transform → load. Returns the manifest. Skips work when ``out`` already holds
    the output of the same inputs and config. ``event_logs``: see :func:`extract`.

    With ``feature_stats`` (a served model's), the output is for scoring that model: every row in
    the unsampled ``test`` split, standardised with its statistics instead of fitted ones.
    With ``pin_embeddings`` (``homefeed embed-pins``' output), the pin table holds those vectors
    instead of the content ones; they must have read no engagement of the evaluated days.
    """
    import time as _time

    icfg = cfg.instances
    storage.require_published(raw_root, "raw data")
    vectors = PinVectors.read(pin_embeddings) if pin_embeddings else None
    fingerprint = storage.fingerprint(
        {"inputs": _input_listing(raw_root, event_logs), "config": icfg.model_dump(mode="json"), "start": str(start), "end": str(end),
         "feature_stats": feature_stats, "layout": LAYOUT_VERSION, "pin_embeddings": vectors and vectors.manifest.get("fingerprint")}
    )
    previous = storage.intact_dataset(out, "instances")
    if previous is not None and previous.get("fingerprint") == fingerprint:
        return previous
    raw, start, end = extract(spark, raw_root, start, end, now_ms if now_ms is not None else int(_time.time() * 1000),
                              cfg.validation.max_unknown_pin_rate, event_logs)
    impression_rows = raw.impressions.count()
    if impression_rows == 0:
        raise InputDataError(f"{schema.IMPRESSIONS}: no rows between {start} and {end}")
    evaluation_only = feature_stats is not None
    if vectors is not None:
        check_embedding_window(vectors, start if evaluation_only else validation_start(end, icfg), pin_embeddings)
    frames = build_instance_frames(raw, start, end, icfg, evaluation_only)
    rows = frames.rows.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        stats = feature_stats if evaluation_only else fit_standardizer(rows.filter(F.col(schema.SPLIT) == "train"))
        with storage.publish_dataset(out) as staging:
            write_bucketed(standardize(rows, stats).select(*OUTPUT_COLUMNS), staging / schema.ROWS_DIR, icfg.buckets)
            write_bucketed(frames.sequences(), staging / schema.SEQUENCES_DIR, icfg.buckets)
            # The pin table: the candidate's and the engaged pins' vectors (content, or learned).
            write_pin_table(raw.pins, vectors, staging / schema.PIN_FEATURES_DIR)
            sequences = spark.read.parquet(str(staging / schema.SEQUENCES_DIR))
            check_sequence_keys(sequences)
            splits = _label_rates(spark.read.parquet(str(staging / schema.ROWS_DIR)))
            for row in sequences.groupBy(schema.SPLIT).count().collect():
                splits[row[schema.SPLIT]]["sequences"] = row["count"]
            manifest = {
                "fingerprint": fingerprint,
                "raw_root": str(raw_root),
                "event_logs": list(event_logs),
                "window": {"start": start.isoformat(), "end": end.isoformat()},
                "input_rows": {
                    schema.IMPRESSIONS: impression_rows,
                    schema.ACTIONS: raw.actions.count(),
                    schema.PINS: raw.pins.count(),
                    schema.USERS: raw.users.count(),
                },
                "config": icfg.model_dump(mode="json"),
                "sampling": {"positive_rate": icfg.positive_rate, "negative_rate": icfg.negative_rate, "applies_to": "train"},
                "feature_stats": stats,
                "pin_embeddings": embedding_record(vectors, pin_embeddings),
                "evaluation_only": evaluation_only,
                "splits": splits,
                "output_rows": sum(s["rows"] for s in splits.values()),
                "sequence_rows": sum(s.get("sequences", 0) for s in splits.values()),
                "layout": {
                    "tables": {schema.ROWS_DIR: list(OUTPUT_COLUMNS), schema.SEQUENCES_DIR: list(SEQUENCE_OUTPUT_COLUMNS)},
                    "partitioned_by": [schema.SPLIT, schema.BUCKET], "buckets": icfg.buckets,
                    "bucket": "pmod(xxhash64(user_id), buckets)", "sequence_key": "xxhash64(user_id, ts)",
                },
                "columns": list(OUTPUT_COLUMNS),
                "code_version": _code_version(),
            }
            manifest["files"] = storage.file_sizes(staging)  # what "same inputs, skip" checks is still there
            storage.write_json(staging / schema.MANIFEST, manifest)
    finally:
        rows.unpersist()
    return manifest


def check_embedding_window(vectors: PinVectors, first_evaluated_day: date, path: str) -> None:
    """Refuse pin embeddings that read engagement of a day the instances evaluate on."""
    if vectors.end >= first_evaluated_day:
        raise InputDataError(
            f"pin embeddings at {path} read engagement up to {vectors.end}, on or after the first evaluated day "
            f"{first_evaluated_day}: its actions would leak into the features; rerun `homefeed embed-pins --end "
            f"{first_evaluated_day - timedelta(days=1)}`"
        )


def write_pin_table(pins: DataFrame, vectors: PinVectors | None, path: Path) -> None:
    """``pin_id, embedding`` for every pin of the snapshot: its content vector, or with ``vectors``
    its learned one (the content vector projected where the table lacks the pin)."""
    if vectors is None:
        pins.select("pin_id", "embedding").coalesce(1).write.parquet(str(path))
        return
    snapshot = pins.select("pin_id", "embedding").toPandas()
    content = np.stack(snapshot["embedding"].to_numpy()) if len(snapshot) else np.zeros((0, vectors.projection.shape[0] - 1))
    chosen = vectors.lookup(snapshot["pin_id"].to_numpy(), content)
    path.mkdir(parents=True)
    pq.write_table(pa.table({"pin_id": pa.array(snapshot["pin_id"].to_numpy(), pa.int64()),
                             "embedding": pa.array(list(chosen), pa.list_(pa.float32()))}), path / "part-00000.parquet")


def embedding_record(vectors: PinVectors | None, path: str | None) -> dict[str, Any]:
    """What the instance manifest says of its pin vectors (the serving model carries the same)."""
    if vectors is None:
        return {"method": "none"}
    return {"method": vectors.manifest["method"], "path": str(storage.local_path(path)), "end": vectors.end.isoformat(),
            "window": vectors.manifest["window"], "learned": vectors.manifest["learned"], "pins": vectors.manifest["pins"],
            "coverage": vectors.manifest["coverage"], "fingerprint": vectors.manifest.get("fingerprint")}


def write_bucketed(frame: DataFrame, path: Path, buckets: int) -> None:
    """``path/split=S/bucket=B/``: one task per bucket, so one file per (split, bucket), sorted by
    user and time. By range, not by hash: hashing ``buckets`` small integers into ``buckets`` tasks
    leaves some tasks with two buckets and others idle. zstd: on the 2M-impression simulation the
    two tables take 46 MiB instead of 59 with snappy, written no slower (benchmarks.md)."""
    frame.repartitionByRange(buckets, schema.BUCKET).sortWithinPartitions(
        schema.SPLIT, schema.BUCKET, "user_id", "ts"
    ).write.mode("overwrite").option("compression", "zstd").partitionBy(schema.SPLIT, schema.BUCKET).parquet(str(path))


def check_sequence_keys(sequences: DataFrame) -> None:
    """No two requests' sequences may share a key: a row would silently read another's history."""
    clash = sequences.groupBy(schema.SEQUENCE_KEY).count().filter(F.col("count") > 1).limit(1).collect()
    if clash:
        raise InputDataError(
            f"{schema.SEQUENCES_DIR}: {clash[0]['count']} requests share {schema.SEQUENCE_KEY}={clash[0][schema.SEQUENCE_KEY]} "
            "(a 64-bit hash collision of (user_id, ts)); rename one of the users"
        )


def main(argv: list[str] | None = None) -> None:
    from homefeed.config import load_config
    from homefeed.spark import session

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--start", type=date.fromisoformat)
    parser.add_argument("--end", type=date.fromisoformat)
    parser.add_argument("--pin-embeddings", help="homefeed embed-pins output to use instead of the content vectors")
    parser.add_argument("--config", action="append", default=[])
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    spark = session(cfg, "build-instances")
    manifest = run(spark, args.raw, args.out, cfg, args.start, args.end, pin_embeddings=args.pin_embeddings)
    print(f"wrote {manifest['output_rows']} instances to {args.out}")


if __name__ == "__main__":
    main()
