"""Arm assignment: the same arm in Python (the service) and in Spark (the readout), and the configured shares."""

import numpy as np
import pytest
from pyspark.sql import functions as F

from homefeed import arms, holdout

SETTINGS = dict(holdout_fraction=0.05, holdout_salt="homefeed-holdout-v1", traffic=0.4, salt="exp-7f3a")


def test_python_and_spark_give_every_one_of_100k_users_the_same_arm(spark):
    ids = np.random.default_rng(3).integers(0, 2**62, size=100_000)
    ids[:1000] = np.arange(1000)  # small ids too
    frame = spark.createDataFrame([(int(u),) for u in ids], "user_id bigint")
    by_spark = dict(frame.select("user_id", arms.arm_column(F.col("user_id"), **SETTINGS).alias("arm")).toPandas().itertuples(index=False))
    mismatched = [u for u in ids if by_spark[int(u)] != arms.arm_of(int(u), **SETTINGS)]
    assert mismatched == []
    scores = dict(frame.select("user_id", arms.score_column(F.col("user_id"), "s").alias("u")).limit(2000).toPandas().itertuples(index=False))
    assert all(scores[u] == holdout.holdout_score(u, "s") for u in scores)  # bit for bit, not merely the same side of a threshold


def test_the_shares_follow_the_configuration_and_holdout_users_stay_out():
    users = range(200_000)
    assigned = [arms.arm_of(u, **SETTINGS) for u in users]
    share = {arm: assigned.count(arm) / len(assigned) for arm in arms.ARMS}
    inside = 1 - SETTINGS["holdout_fraction"]
    assert share["holdout"] == pytest.approx(0.05, abs=0.003)
    assert share["control"] == pytest.approx(inside * 0.2, abs=0.004) and share["treatment"] == pytest.approx(inside * 0.2, abs=0.004)
    held_out = [u for u in users if holdout.is_holdout(u, SETTINGS["holdout_fraction"], SETTINGS["holdout_salt"])]
    assert {assigned[u] for u in held_out} == {"holdout"}


def test_a_new_salt_reshuffles_the_arms_independently_of_the_holdout_salt():
    users = range(20_000)
    first = [arms.arm_of(u, 0.0, "h", 1.0, "salt-a") for u in users]
    second = [arms.arm_of(u, 0.0, "h", 1.0, "salt-b") for u in users]
    same = sum(a == b for a, b in zip(first, second)) / len(first)
    assert same == pytest.approx(0.5, abs=0.02)  # independent: agreement by chance only
    assert first == [arms.arm_of(u, 0.0, "other-holdout-salt", 1.0, "salt-a") for u in users]
