"""What Airflow tasks share, kept light: DAG files import it while they parse."""

from __future__ import annotations

import functools


def fail_fast(stage):
    """Wrap a task body: bad input and refusals fail the task at once, without its retries.

    A :class:`homefeed.errors.PermanentError` gives the same answer on every try; retries are
    kept for transient trouble (a busy database, a lost Spark executor, a network hiccup).
    """

    @functools.wraps(stage)
    def run_stage(*args, **kwargs):
        from airflow.sdk.exceptions import AirflowFailException

        from homefeed.errors import PermanentError

        try:
            return stage(*args, **kwargs)
        except PermanentError as error:
            raise AirflowFailException(f"{type(error).__name__}: {error}") from error

    return run_stage


CHAMPION_STALE = "homefeed_champion_stale"

# The embedded Airflow keeps its metadata in SQLite, one writer at a time. Its scheduler, API
# server, task runners and a `homefeed backfill` all write; on a busy machine a writer waits
# longer than sqlite3's default 5 s and failed with "database is locked". Read by Airflow through
# [database] sql_alchemy_connect_args (see homefeed.airflow_setup.airflow_env).
SQLITE_CONNECT_ARGS = {"timeout": 120}


def champion_stale_asset():
    """The asset the monitor emits when the champion has decayed; it triggers homefeed_retrain."""
    from airflow.sdk import Asset

    return Asset(name=CHAMPION_STALE)
