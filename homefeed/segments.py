"""The user-segment rule, in one place (seed: gains were largest for non-core users).

- ``new``: the account is younger than ``NEW_ACCOUNT_DAYS`` at request time;
- ``resurrected``: inactive for more than ``DORMANT_DAYS`` before the snapshot;
- ``casual``: fewer than ``CASUAL_MAX_ACTIONS_28D`` actions in the 28 days before the snapshot;
- ``core``: everybody else.
"""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F

DAY_MS = 86_400_000
NEW_ACCOUNT_DAYS = 30
DORMANT_DAYS = 28
CASUAL_MAX_ACTIONS_28D = 10


def segment_of(account_age_days: float, days_inactive: float, actions_28d: int) -> str:
    """The segment of one user (serving and simulations call this)."""
    if account_age_days < NEW_ACCOUNT_DAYS:
        return "new"
    if days_inactive > DORMANT_DAYS:
        return "resurrected"
    if actions_28d < CASUAL_MAX_ACTIONS_28D:
        return "casual"
    return "core"


def segment_column(request_ts: Column, signup_ts: Column, last_active_ts: Column, snapshot_ts: Column, actions_28d: Column) -> Column:
    """The same rule as :func:`segment_of`, as a Spark column."""
    age_days = (request_ts - signup_ts) / F.lit(DAY_MS)
    inactive_days = (snapshot_ts - last_active_ts) / F.lit(DAY_MS)
    return (
        F.when(age_days < NEW_ACCOUNT_DAYS, F.lit("new"))
        .when(inactive_days > DORMANT_DAYS, F.lit("resurrected"))
        .when(actions_28d < CASUAL_MAX_ACTIONS_28D, F.lit("casual"))
        .otherwise(F.lit("core"))
    )
