"""
### homefeed_experiment

Every day at 07:00 UTC, while an online experiment runs (`homefeed experiment start`), reads it
out of the ranking service's exposure and event logs and the raw action log: per arm the users
and requests, per metric the effect with its 95% interval with and without CUPED, the SRM check,
the lift per day, core vs non-core users, the holdout group against the champion, and the verdict
(`promote`, `keep champion`, `continue`). The report is `<storage root>/experiments/<name>/readout.html`
and the figures are MLflow metrics on the challenger's version run.

Starting an experiment stays a human decision. Only with `experiments.auto_promote: true` does a
`promote` verdict stop the experiment and make the challenger champion (audited as any promotion).
With no experiment running the run skips, saying so.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from homefeed import orchestration
from homefeed.orchestration import fail_fast


@dag(
    dag_id="homefeed_experiment",
    schedule="0 7 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["homefeed", "experiments"],
    default_args={"owner": "homefeed", "retries": 2, "retry_delay": timedelta(minutes=1)},
    params={"raw": Param(None, type=["null", "string"], description="Raw root with the action log; empty: the champion's training data")},
)
def homefeed_experiment():
    @task
    @fail_fast
    def read_out() -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from homefeed import readout

        params = dict(get_current_context()["params"])
        result = readout.read_out(orchestration.config_from_params(params), raw_root=params.get("raw"))
        if result is None:
            raise AirflowSkipException("no experiment is running: nothing to read out (start one with `homefeed experiment start`)")
        return {"experiment": result["experiment"], "decision": result["decision"], "end": result["end"], "report": result["report"]}

    @task
    @fail_fast
    def promote_on_verdict(readout: dict) -> str:
        from homefeed import experiments

        outcome = experiments.promote_on_verdict(orchestration.config_from_params(dict(get_current_context()["params"])), readout,
                                                 actor="airflow:homefeed_experiment")
        return "promoted" if outcome else f"left running: {readout['decision']['verdict']} (experiments.auto_promote decides)"

    promote_on_verdict(read_out())


homefeed_experiment()
