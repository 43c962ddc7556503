"""What Airflow's DAGs and tasks share, kept light: DAG files import it while they parse.

The orchestrator's side of a run lives here, beside the DAGs and apart from the pipeline: the
trigger form's params as config, the data window from the logical date, the raw root (fetched
from S3 when it is there), and why a scheduled run must not retrain (a missed slot).
"""

from __future__ import annotations

import functools
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from homefeed.config import Config


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


# --------------------------------------------------------------------------- a run's inputs from Airflow
# Params of the retraining DAG's trigger form → config keys.
PARAM_TO_CONFIG = {
    "model": ("train", "model"),
    "epochs": ("train", "epochs"),
    "positive_rate": ("instances", "positive_rate"),
    "negative_rate": ("instances", "negative_rate"),
    "embeddings_method": ("embeddings", "method"),
    "min_auc_repin": ("gates", "min_auc"),
}


def config_from_params(params: dict[str, Any], base: "Config | None" = None) -> "Config":
    """The typed config for a run: defaults and overlays, then the run's params."""
    from homefeed import schema
    from homefeed.config import load_config

    cfg = base or load_config()
    overrides: dict[str, Any] = {}
    for param, (section, key) in PARAM_TO_CONFIG.items():
        value = params.get(param)
        if value is None:
            continue
        if param == "min_auc_repin":
            value = {**cfg.gates.min_auc, schema.PRIMARY_HEAD: value}
        overrides.setdefault(section, {})[key] = value
    return cfg.with_overrides(overrides)


def data_window(params: dict[str, Any], logical_date: date) -> tuple[date, date]:
    """The training window: ``window_days`` ending at ``end_date`` (default: the day before the run).

    Airflow 3 cron schedules carry no data interval, so the window comes from the logical date here.
    """
    end = date.fromisoformat(params["end_date"]) if params.get("end_date") else logical_date - timedelta(days=1)
    return end - timedelta(days=int(params.get("window_days") or 7) - 1), end


def raw_root(cfg: "Config", params: dict[str, Any]) -> str:
    """The raw data to read, as a local path: an ``s3://`` root is fetched into a local cache first
    (once per published version), since the stages read it with local Spark."""
    from homefeed import storage

    raw = params.get("raw") or str(storage.local_path(cfg.storage.root) / "raw")
    if raw.startswith(("s3://", "s3a://")):
        from homefeed import s3

        return str(s3.fetch_cached(raw, storage.local_path(cfg.storage.root) / "s3-cache"))
    return raw


# A scheduled run that starts this long after its slot was created by unpausing the DAG (Airflow
# then schedules the latest past slot at once), not by the clock: it must not retrain by surprise.
MISSED_SLOT_AFTER = timedelta(hours=1)


def missed_slot(run_type: Any, slot: datetime, now: datetime) -> str | None:
    """Why a run must not retrain (a missed scheduled slot), or None. ``run_type``: "scheduled",
    "manual", … or Airflow's enum of them (the Task SDK's prints as "DagRunType.SCHEDULED")."""
    if getattr(run_type, "value", run_type) != "scheduled" or now - slot <= MISSED_SLOT_AFTER:
        return None
    return (f"scheduled slot {slot.isoformat()} was missed (the DAG was paused then; it started {now - slot} late): "
            "not retraining by surprise; trigger a run to retrain now")
