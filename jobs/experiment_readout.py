"""An online experiment's per-user table: exposures and actions → one row per user (Spark).

Extract: the service's exposure log (``<log>/served``), its acknowledged events (``<log>/actions``)
and, when given, a raw root's ``actions``, ``impressions`` and ``users``. Transform: every user
exposed while the experiment ran, in the arm the experiment's hash assigns (intent to treat: a
user is analysed in their assigned arm even when a challenger that failed to load sent them to the
champion), with

- ``first_exposure_ts``, ``requests`` (answered /rank requests), ``active_days`` (days with one);
- ``repins``, ``clicks``, ``closeups``, ``hides``: actions from the first exposure to the end;
- the same counts and ``requests_pre`` over the ``pre_period_days`` before the start (CUPED's
  covariate; the raw impressions and earlier exposures count the requests);
- ``segment`` (``homefeed.segments``' rule at the first exposure) when a users snapshot exists;

and one row per (user, day) with that day's repins and requests, for the lift per day. Load: the
caller (``homefeed.readout``) analyses the pandas frames; ``write_users`` publishes the table.

    homefeed experiment readout NAME [--raw RAW] [--out OUT]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from homefeed import arms, schema, segments, storage
from homefeed.errors import PermanentError
from homefeed.event_log import SERVED

from jobs.build_instances import read_table

DAY_MS = segments.DAY_MS
COUNTED_ACTIONS = {"repin": "repins", "click": "clicks", "closeup": "closeups", "hide": "hides"}
ACTION_KEY = list(schema.RAW_KEYS[schema.ACTIONS])


class NoExposures(PermanentError, LookupError):
    """Nothing was served in the experiment's window: nothing to read out."""


@dataclass(frozen=True)
class Window:
    """What the readout reads: the experiment's assignment and its time span."""

    name: str
    holdout_fraction: float
    holdout_salt: str
    traffic: float
    salt: str
    start_ms: int
    end_ms: int
    pre_period_days: int


@dataclass(frozen=True)
class UserTables:
    users: pd.DataFrame  # one row per exposed user
    daily: pd.DataFrame  # one row per (user, day exposed)
    mismatched: int  # users served in another arm than assigned (a challenger that failed to load)


# =========================================================================== extract
def _present(root: str, table: str) -> bool:
    return any(storage.local_path(root).joinpath(table).glob(f"{schema.DT}=*/*.parquet"))


def read_exposures(spark: SparkSession, log_root: str, window: Window) -> DataFrame:
    if not _present(log_root, SERVED):
        raise NoExposures(f"no exposure log under {log_root}/{SERVED}: the service has answered no /rank yet")
    served = spark.read.option("basePath", f"{log_root}/{SERVED}").parquet(f"{log_root}/{SERVED}")
    return served.select("request_id", "user_id", "ts", "arm", "experiment")


def read_actions(spark: SparkSession, roots: list[str]) -> DataFrame:
    """Every action of the given roots (the raw log and the service's event log), each once."""
    frames = [read_table(spark, root, schema.ACTIONS).select(*schema.columns(schema.ACTIONS))
              for root in roots if _present(root, schema.ACTIONS)]
    if not frames:
        return spark.createDataFrame([], schema.spark_schema(schema.ACTIONS))
    union = frames[0]
    for frame in frames[1:]:
        union = union.unionByName(frame)
    return union.dropDuplicates(ACTION_KEY)


# =========================================================================== transform
def in_experiment(exposures: DataFrame, window: Window) -> DataFrame:
    """The answers served under the experiment between its start and the readout's end."""
    return exposures.where((F.col("experiment") == window.name) & F.col("ts").between(window.start_ms, window.end_ms))


def exposed_users(mine: DataFrame, window: Window) -> DataFrame:
    """One row per user exposed during the experiment (``mine``: :func:`in_experiment`): assigned
    arm, first exposure, requests, days."""
    assigned = arms.arm_column(F.col("user_id"), window.holdout_fraction, window.holdout_salt, window.traffic, window.salt)
    return (
        mine.groupBy("user_id")
        .agg(F.min("ts").alias("first_exposure_ts"), F.countDistinct("request_id").alias("requests"),
             F.countDistinct(F.floor(F.col("ts") / DAY_MS)).alias("active_days"),
             F.max(F.when(F.col("arm") != assigned, 1).otherwise(0)).alias("served_other_arm"))
        .withColumn("arm", assigned)
    )


def action_counts(users: DataFrame, actions: DataFrame, window: Window) -> DataFrame:
    """Per user: each counted action after the first exposure, and before the start (the pre-period)."""
    pre_start = window.start_ms - window.pre_period_days * DAY_MS
    joined = actions.join(users.select("user_id", "first_exposure_ts"), "user_id")
    post = F.col("ts").between(F.col("first_exposure_ts"), F.lit(window.end_ms))
    pre = (F.col("ts") >= F.lit(pre_start)) & (F.col("ts") < F.lit(window.start_ms))
    aggregates = []
    for action, name in COUNTED_ACTIONS.items():
        aggregates.append(F.sum(F.when(post & (F.col("action") == action), 1).otherwise(0)).alias(name))
        aggregates.append(F.sum(F.when(pre & (F.col("action") == action), 1).otherwise(0)).alias(f"{name}_pre"))
    return joined.groupBy("user_id").agg(*aggregates)


def pre_period_requests(spark: SparkSession, exposures: DataFrame, raw_root: str | None, users: DataFrame, window: Window) -> DataFrame:
    """Per user: requests in the pre-period, from earlier exposures and the raw impressions."""
    pre_start = window.start_ms - window.pre_period_days * DAY_MS
    requests = exposures.select("user_id", "request_id", "ts")
    if raw_root and _present(raw_root, schema.IMPRESSIONS):
        requests = requests.unionByName(read_table(spark, raw_root, schema.IMPRESSIONS).select("user_id", "request_id", "ts"))
    before = requests.where((F.col("ts") >= pre_start) & (F.col("ts") < window.start_ms))
    return before.join(users.select("user_id"), "user_id").groupBy("user_id").agg(F.countDistinct("request_id").alias("requests_pre"))


def with_segments(spark: SparkSession, users: DataFrame, raw_root: str | None) -> DataFrame:
    """``segment`` by homefeed.segments' rule at the first exposure, from the latest users snapshot."""
    if not raw_root or not _present(raw_root, schema.USERS):
        return users.withColumn("segment", F.lit(None).cast("string"))
    snapshot = read_table(spark, raw_root, schema.USERS)
    latest = snapshot.agg(F.max(schema.DT)).first()[0]
    snapshot = snapshot.where(F.col(schema.DT) == latest).withColumn(
        "_snapshot_ts", F.unix_timestamp(F.to_date(F.col(schema.DT))).cast("bigint") * 1000)
    joined = users.join(snapshot.select("user_id", "signup_ts", "last_active_ts", "actions_28d", "_snapshot_ts"), "user_id", "left")
    segment = segments.segment_column(F.col("first_exposure_ts"), F.col("signup_ts"), F.col("last_active_ts"),
                                      F.col("_snapshot_ts"), F.col("actions_28d"))
    return joined.withColumn("segment", F.when(F.col("signup_ts").isNull(), F.lit(None)).otherwise(segment)).drop(
        "signup_ts", "last_active_ts", "actions_28d", "_snapshot_ts")


def daily_rows(mine: DataFrame, actions: DataFrame, users: DataFrame, window: Window) -> DataFrame:
    """One row per (user, day the user was exposed; ``mine``: :func:`in_experiment`): the day's requests and repins."""
    days = mine.groupBy("user_id", F.floor(F.col("ts") / DAY_MS).alias("day")).agg(F.countDistinct("request_id").alias("requests"))
    repins = (actions.where((F.col("action") == "repin") & F.col("ts").between(window.start_ms, window.end_ms))
              .groupBy("user_id", F.floor(F.col("ts") / DAY_MS).alias("day")).agg(F.count("*").alias("repins")))
    return (days.join(repins, ["user_id", "day"], "left").fillna(0, ["repins"])
            .join(users.select("user_id", "arm"), "user_id"))


def user_tables(spark: SparkSession, log_root: str, raw_root: str | None, window: Window) -> UserTables:
    """The whole transform: the per-user and per-(user, day) frames, collected for the statistics."""
    exposures = read_exposures(spark, log_root, window).cache()
    mine = in_experiment(exposures, window)
    users = exposed_users(mine, window).cache()
    if users.limit(1).count() == 0:
        exposures.unpersist()
        raise NoExposures(f"experiment {window.name}: no /rank answer recorded between its start and the readout's end")
    actions = read_actions(spark, [root for root in (raw_root, log_root) if root])
    actions = actions.where(F.col("ts") >= window.start_ms - window.pre_period_days * DAY_MS).cache()
    counts = action_counts(users, actions, window)
    pre_requests = pre_period_requests(spark, exposures, raw_root, users, window)
    table = (users.join(counts, "user_id", "left").join(pre_requests, "user_id", "left")
             .fillna(0, [*COUNTED_ACTIONS.values(), *[f"{n}_pre" for n in COUNTED_ACTIONS.values()], "requests_pre"]))
    table = with_segments(spark, table, raw_root)
    users_frame = table.toPandas()
    daily = daily_rows(mine, actions, users, window).toPandas()
    for frame in (exposures, users, actions):
        frame.unpersist()
    mismatched = int(users_frame.pop("served_other_arm").sum())
    return UserTables(users_frame.sort_values("user_id", ignore_index=True), daily, mismatched)


# =========================================================================== load
def write_users(users: pd.DataFrame, out: Path) -> Path:
    """The per-user table as Parquet, published atomically (the readout's evidence)."""
    with storage.publish_dataset(out / "users") as staging:
        users.to_parquet(staging / "part-0.parquet", index=False)
    return out / "users"
