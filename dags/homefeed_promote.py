"""
### homefeed_promote

Manual registry operations for ML engineers, through the same functions as `homefeed promote`
and `homefeed rollback`: point `champion` at a version (the old one becomes `previous`), stage a
version as `challenger`, roll back to `previous`, or start an online experiment of a version
against the champion (`start_experiment`, with `traffic`; read out daily by `homefeed_experiment`). Every change is audited (version tags + `registry/audit.jsonl`). A forced
promotion, or a change of the holdout group, needs a reason.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from homefeed.orchestration import fail_fast


@dag(
    dag_id="homefeed_promote",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["homefeed", "registry"],
    default_args={"owner": "homefeed", "retries": 1, "retry_delay": timedelta(seconds=30)},
    params={
        "version": Param(None, type=["null", "string"], pattern="^[0-9]+$", description="Version to point the alias at; empty with rollback"),
        "alias": Param("champion", type="string", enum=["champion", "challenger"],
                       description="champion: promote (the old champion becomes previous); challenger: stage a candidate"),
        "rollback": Param(False, type="boolean", description="Instead: champion ← previous"),
        "reason": Param("", type="string", description="Why; required for force, rollback and holdout changes"),
        "force": Param(False, type="boolean", description="Promote without a passing gate (recorded)"),
        "change_holdout": Param(False, type="boolean", description="Allow a holdout configuration change"),
        "start_experiment": Param(False, type="boolean",
                                  description="Instead: start an online A/B test of the version against the champion (homefeed experiment start)"),
        "traffic": Param(0.2, type="number", exclusiveMinimum=0, maximum=1,
                         description="With start_experiment: share of the non-holdout users in the experiment, split evenly"),
    },
)
def homefeed_promote():
    @task
    @fail_fast  # a refusal is a decision, not a transient error: retrying cannot change it
    def change_registry():
        from homefeed import registry
        from homefeed.config import load_config

        params = dict(get_current_context()["params"])
        if params.get("start_experiment"):
            from homefeed import experiments

            return experiments.start(load_config(), str(params["version"]), traffic=params["traffic"], reason=params["reason"],
                                     actor="airflow:homefeed_promote").to_json()
        return registry.apply_manual_change(load_config(), params, actor="airflow:homefeed_promote")

    change_registry()


homefeed_promote()
