"""
### homefeed_monitor

Every day at 06:00 UTC, scores the serving champion, unchanged, on each day of impressions that
landed after its training window, and records AUC and HIT@3 per head and slice against the
model's age (`<storage root>/monitor/`, plot `decay.png`). When the decay passes the limits in
`monitor.*` (AUC drop against the first day after training, or age), the champion is tagged
stale and the `homefeed_champion_stale` asset is emitted, which triggers `homefeed_retrain`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from homefeed import orchestration
from homefeed.orchestration import champion_stale_asset, fail_fast


def _config_and_raw():
    params = dict(get_current_context()["params"])
    cfg = orchestration.config_from_params(params)
    return cfg, orchestration.raw_root(cfg, params)


@dag(
    dag_id="homefeed_monitor",
    schedule="0 6 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["homefeed", "monitoring"],
    default_args={"owner": "homefeed", "retries": 2, "retry_delay": timedelta(minutes=1)},
    params={"raw": Param(None, type=["null", "string"], description="Raw data root; empty: <storage root>/raw")},
)
def homefeed_monitor():
    @task
    @fail_fast
    def score_new_days() -> dict:
        from homefeed import pipeline

        cfg, raw = _config_and_raw()
        return pipeline.monitor_champion(cfg, raw)

    @task.short_circuit
    def champion_is_stale(decision: dict) -> bool:
        return bool(decision["stale"])

    @task(outlets=[champion_stale_asset()])
    def request_retraining(decision: dict) -> str:
        return f"champion v{decision['model_version']} is stale: {decision['reason']}"

    decision = score_new_days()
    champion_is_stale(decision) >> request_retraining(decision)


homefeed_monitor()
