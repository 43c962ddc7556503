"""Which arm of an online experiment a user is in, computed the same way in Python and in Spark.

A user's place is decided by two salted hashes, never by a stored list, so every service replica,
every restart and the Spark readout agree without talking to each other:

1. the **holdout group** (``holdout.fraction``, ``holdout.salt``; :mod:`homefeed.holdout`): users
   who never get a model; they stay out of every experiment;
2. of everyone else, the experiment's own hash (its salt, drawn at start) puts a share
   ``traffic / 2`` in ``control`` (the champion) and ``traffic / 2`` in ``treatment`` (the
   challenger); the rest are ``none`` (the champion, outside the experiment).

The experiment's salt is independent of the holdout salt, so the split inside the experiment is
uniform whatever the holdout group is, and a new experiment reshuffles its arms.
"""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F

from homefeed.holdout import holdout_score

HOLDOUT, CONTROL, TREATMENT, NONE = "holdout", "control", "treatment", "none"
ARMS = (HOLDOUT, CONTROL, TREATMENT, NONE)
_SCALE = float(1 << 64)


def arm_of(user_id: int, holdout_fraction: float, holdout_salt: str, traffic: float, salt: str) -> str:
    """The arm of one user (the service calls this per request)."""
    if holdout_score(user_id, holdout_salt) < holdout_fraction:
        return HOLDOUT
    score = holdout_score(user_id, salt)
    if score < traffic / 2:
        return CONTROL
    return TREATMENT if score < traffic else NONE


def score_column(user_id: Column, salt: str) -> Column:
    """:func:`homefeed.holdout.holdout_score` as a Spark column: the first 8 bytes of
    sha256("salt:user_id") as an unsigned integer over 2^64. The integer reaches a double through
    its decimal text in both languages (Python's int → float and Java's parseDouble both round to
    nearest), so the two agree bit for bit."""
    digest = F.sha2(F.concat(F.lit(f"{salt}:"), user_id.cast("bigint").cast("string")), 256)
    unsigned = F.conv(F.substring(digest, 1, 16), 16, 10)
    return unsigned.cast("double") / F.lit(_SCALE)


def arm_column(user_id: Column, holdout_fraction: float, holdout_salt: str, traffic: float, salt: str) -> Column:
    """:func:`arm_of` as a Spark column."""
    score = score_column(user_id, salt)
    return (
        F.when(score_column(user_id, holdout_salt) < F.lit(holdout_fraction), F.lit(HOLDOUT))
        .when(score < F.lit(traffic / 2), F.lit(CONTROL))
        .when(score < F.lit(traffic), F.lit(TREATMENT))
        .otherwise(F.lit(NONE))
    )
