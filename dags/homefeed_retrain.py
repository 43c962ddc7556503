"""
### homefeed_retrain

Retrains the home-feed ranker on the latest window of impression logs and, when it beats the
serving champion on the same evaluation data, promotes it in the MLflow registry.

Runs **twice a week** (Monday and Thursday, 03:00 UTC): realtime-sequence models go stale within
days; and whenever `homefeed_monitor` finds the champion stale (the `homefeed_champion_stale`
asset), with the reason in the run's report. Trigger it from the UI to retrain on demand; the form sets the window, the architecture,
the sampling rates, the repin AUC floor and whether to promote automatically.

Unpausing the DAG makes Airflow schedule the latest past Monday/Thursday slot at once; such a
run (more than an hour late) skips every stage and says so instead of retraining by surprise.

Tasks: check raw data → validate raw (GX) → build instances (Spark) → validate instances (GX) →
train → evaluate challenger and champion → gate → register → promote → report. A failed gate
skips registration and promotion and says why; the report is written either way.
Every task writes under `<storage root>/runs/<run>/` and is idempotent on retry.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task, teardown

from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.trigger import CronTriggerTimetable

from homefeed import orchestration, pipeline
from homefeed.airflow_links import LINKS
from homefeed.config import load_config
from homefeed.orchestration import champion_stale_asset, fail_fast
from models import MODEL_NAMES

SEMIWEEKLY = "0 3 * * 1,4"
# Airflow's DAG list shows an asset-or-time schedule as the asset alone; its tags are shown there too.
SCHEDULE_TAG = "Mon+Thu 03:00 UTC or when stale"
# The form says what "empty" means: the config's values (defaults and overlays), read once here.
DEFAULTS = load_config()


def _context() -> "pipeline.RunContext":
    """The run context of the task being executed: config (with the run's params), run
    directory, raw root, data window and whether to promote."""
    context = get_current_context()
    params = dict(context["params"])
    cfg = orchestration.config_from_params(params)
    directory = pipeline.run_dir(cfg, params.get("run_label") or context["run_id"])
    logical = context.get("logical_date") or pendulum.now("UTC")
    start, end = orchestration.data_window(params, logical.date())
    return pipeline.RunContext(cfg, directory, orchestration.raw_root(cfg, params), start, end, bool(params.get("auto_promote", True)))


def _on_failure(context) -> None:
    """A task that failed before or around its stage (a bad config, a timeout): say so in the run
    directory for the report; a stage that raised was recorded by the runner already."""
    task_id = context["task_instance"].task_id
    try:
        params = dict(context["params"])
        directory = pipeline.run_dir(orchestration.config_from_params(params), params.get("run_label") or context["run_id"])
    except Exception as error:  # a bad config must not hide the failure
        import logging

        logging.getLogger("homefeed").error("homefeed task %s failed: %s (%s)", task_id, context.get("exception"), error)
        return
    if not pipeline.failure_record(directory, task_id).exists():
        pipeline.record_failure(directory, task_id, context.get("exception"))


@dag(
    dag_id="homefeed_retrain",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable(SEMIWEEKLY, timezone="UTC"), assets=[champion_stale_asset()]),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    description=f"Retrain the ranker: Mon and Thu 03:00 UTC (cron {SEMIWEEKLY}), and when homefeed_monitor finds the champion stale",
    doc_md=__doc__,
    tags=["homefeed", "retraining", SCHEDULE_TAG],
    default_args={
        "owner": "homefeed",
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": True,
        "on_failure_callback": _on_failure,
    },
    params={
        "raw": Param(None, type=["null", "string"], description="Raw data root; empty: <storage root>/raw"),
        "end_date": Param(None, type=["null", "string"], format="date", description="Last day of the window; empty: the day before the run"),
        "window_days": Param(7, type="integer", minimum=3, maximum=90, description="Days of impressions to train and evaluate on"),
        "model": Param(None, type=["null", "string"], enum=[None, *MODEL_NAMES],
                       values_display={None: f"(the config's: {DEFAULTS.train.model})"},  # not a bare "null" in the dropdown
                       description=f"Architecture to train; empty: the config's ({DEFAULTS.train.model})"),
        "epochs": Param(None, type=["null", "integer"], minimum=1, description=f"Training epochs; empty: the config's ({DEFAULTS.train.epochs})"),
        "positive_rate": Param(None, type=["null", "number"], exclusiveMinimum=0, maximum=1,
                               description="Share of impressions with any positive label kept for training; "
                                           f"empty: the config's ({DEFAULTS.instances.positive_rate})"),
        "negative_rate": Param(None, type=["null", "number"], exclusiveMinimum=0, maximum=1,
                               description="Share of the other impressions kept for training (train split only; evaluation keeps all); "
                                           f"empty: the config's ({DEFAULTS.instances.negative_rate})"),
        "embeddings_method": Param(None, type=["null", "string"], enum=[None, "none", "word2vec", "als"],
                                   values_display={None: f"(the config's: {DEFAULTS.embeddings.method})"},
                                   description="Pin vectors: none (content), word2vec or als (learned before the first validation day); "
                                               f"empty: the config's ({DEFAULTS.embeddings.method})"),
        "min_auc_repin": Param(None, type=["null", "number"], minimum=0, maximum=1,
                               description=f"Gate: absolute repin AUC floor; empty: the config's ({DEFAULTS.gates.min_auc.get('repin')})"),
        "auto_promote": Param(True, type="boolean", description="Promote to champion when the gate passes"),
        "run_label": Param(None, type=["null", "string"], pattern="^[A-Za-z0-9._-]+$", description="Names the run directory; empty: the Airflow run id"),
    },
)
def homefeed_retrain():
    # One task per stage of homefeed.pipeline.STAGES, in its order; each task body is one call.
    tasks = [_stage_task(step) for step in pipeline.STAGES]
    for upstream, downstream in zip(tasks, tasks[1:]):
        upstream >> downstream
    tasks >> _report_task()  # all done, whatever the outcome: a failed or gated run is reported too


def _stage_task(step: "pipeline.Stage"):
    @task(task_id=step.name)
    @fail_fast
    def run_stage():
        from airflow.sdk.exceptions import AirflowSkipException

        if step is pipeline.STAGES[0]:
            _skip_a_missed_slot()
        result = pipeline.run_stage(step, _context())
        reason = step.stops_run(result)
        if reason:
            raise AirflowSkipException(reason)  # the stages after it are skipped too, and say why
        return step.name  # the stages hand over through the run directory, not XCom

    return _with_links(run_stage())


def _report_task():
    # A teardown runs once everything upstream is done, whatever the outcome, and (unlike an
    # ALL_DONE leaf) leaves the run's state to the stages: a run stopped by bad data shows failed.
    @teardown
    def report():  # the task id is the function's name: pipeline.REPORT.name
        return pipeline.run_stage(pipeline.REPORT, _context()).report

    return _with_links(report())


def _with_links(task_output):
    """The task's buttons to the run's MLflow run and report in the UI (empty until they exist)."""
    task_output.operator.operator_extra_links = LINKS
    return task_output


def _skip_a_missed_slot() -> None:
    from airflow.sdk.exceptions import AirflowSkipException

    context = get_current_context()
    slot = context.get("logical_date") or context["dag_run"].run_after
    reason = orchestration.missed_slot(context["dag_run"].run_type, slot, pendulum.now("UTC"))
    if reason:
        raise AirflowSkipException(reason)  # the whole run is skipped, and says why


homefeed_retrain()
