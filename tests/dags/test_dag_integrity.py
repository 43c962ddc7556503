"""Every DAG file imports cleanly and quickly, follows the house policy, and validates its params."""

import subprocess
import sys
import time

import pytest

from tests.dags.conftest import DAGS_FOLDER

HEAVY_MODULES = ("torch", "pyspark", "mlflow", "great_expectations", "sklearn", "lightgbm")


def test_dag_files_import_without_errors_fast(dagbag):
    assert dagbag.import_errors == {}
    assert "homefeed_retrain" in dagbag.dags
    started = time.perf_counter()
    from airflow.dag_processing.dagbag import DagBag

    DagBag(dag_folder=str(DAGS_FOLDER))
    assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize("dag_file", sorted(p.name for p in DAGS_FOLDER.glob("*.py")))
def test_dag_files_import_no_heavy_modules(dag_file):
    probe = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('d', {str(DAGS_FOLDER / dag_file)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        f"print('HEAVY:' + ','.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    heavy = [line for line in out.stdout.splitlines() if line.startswith("HEAVY:")]
    assert heavy == ["HEAVY:"], f"{dag_file} imports heavy modules at parse time: {heavy}"


def test_policy_tags_owner_retries_and_docs(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.doc_md, f"{dag_id} has no doc_md"
        for task in dag.tasks:
            assert task.owner == "homefeed", f"{dag_id}.{task.task_id} owner"
            assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"


def test_retrain_runs_twice_a_week_without_catchup(dagbag):
    dag = dagbag.dags["homefeed_retrain"]
    assert dag.timetable.timetable.serialize()["expression"] == "0 3 * * 1,4"
    # …and whenever the staleness monitor emits its asset.
    assert [asset.name for asset in dag.timetable.asset_condition.objects] == ["homefeed_champion_stale"]
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    order = [t.task_id for t in dag.topological_sort()]
    assert order.index("build_instances") < order.index("validate_instances") < order.index("train") < order.index("gate") < order.index("promote")


def test_params_defaults_validate_and_bad_values_are_rejected(dagbag):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    dag = dagbag.dags["homefeed_retrain"]
    defaults = dag.params.validate()
    assert defaults["model"] is None and defaults["auto_promote"] is True  # None: the config's model
    for bad in ({"model": "resnet"}, {"window_days": 1}, {"negative_rate": 0}, {"end_date": "next tuesday"}, {"embeddings_method": "pinsage"}):
        params = ParamsDict({k: v for k, v in dag.params.items()})
        with pytest.raises((ParamValidationError, ValueError)):
            params.update(bad)
            params.validate()


def test_monitor_runs_daily_and_only_a_stale_champion_requests_retraining(dagbag):
    dag = dagbag.dags["homefeed_monitor"]
    tasks = {t.task_id: t for t in dag.tasks}
    assert set(tasks) == {"score_new_days", "champion_is_stale", "request_retraining"}
    assert tasks["request_retraining"].upstream_task_ids >= {"champion_is_stale"}
    assert [o.name for o in tasks["request_retraining"].outlets] == ["homefeed_champion_stale"]
    assert all(not t.outlets for name, t in tasks.items() if name != "request_retraining")


def test_a_missed_scheduled_slot_is_not_a_reason_to_retrain():
    # Unpausing the DAG schedules the latest past slot at once (issue 22): such a run is skipped;
    # on-time scheduled runs and every triggered, backfilled or asset-triggered run retrain.
    from datetime import datetime, timedelta, timezone

    from homefeed.orchestration import missed_slot

    slot = datetime(2026, 11, 30, 3, tzinfo=timezone.utc)
    assert "was missed" in missed_slot("scheduled", slot, slot + timedelta(hours=3))
    assert missed_slot("scheduled", slot, slot + timedelta(minutes=5)) is None
    for run_type in ("manual", "backfill", "asset_triggered"):
        assert missed_slot(run_type, slot, slot + timedelta(days=3)) is None


def test_the_missed_slot_check_takes_the_task_sdks_run_type():
    # The UI test found the first version comparing str(run_type), which is "DagRunType.SCHEDULED"
    # for the Task SDK's enum: the missed slot still retrained.
    from datetime import datetime, timedelta, timezone

    from airflow.sdk.api.datamodels._generated import DagRunType

    from homefeed.orchestration import missed_slot

    slot = datetime(2026, 11, 30, 3, tzinfo=timezone.utc)
    assert missed_slot(DagRunType.SCHEDULED, slot, slot + timedelta(hours=3)) is not None
    assert missed_slot(DagRunType.MANUAL, slot, slot + timedelta(hours=3)) is None


def test_the_retrain_dag_is_the_pipeline_stage_list_in_its_order(dagbag):
    """One place for the stage order (issue 23): the DAG's tasks are pipeline.STAGES, then the report."""
    from homefeed import pipeline

    dag = dagbag.dags["homefeed_retrain"]
    assert [t.task_id for t in dag.topological_sort()] == [*pipeline.STAGE_NAMES, pipeline.REPORT.name]
    report = dag.get_task(pipeline.REPORT.name)
    assert report.is_teardown and report.upstream_task_ids == set(pipeline.STAGE_NAMES)


def test_a_new_stage_in_the_list_is_a_new_task_in_its_place(monkeypatch):
    """Adding a stage is one function and one entry (docs/architecture.md): the DAG follows."""
    from airflow.dag_processing.dagbag import DagBag

    from homefeed import pipeline
    from tests.homefeed.test_pipeline import RowsCounted, count_rows

    new = pipeline.Stage("count_rows", count_rows, RowsCounted, ("build_instances.json",), ("count_rows.json",))
    stages = list(pipeline.STAGES)
    stages.insert(pipeline.STAGE_NAMES.index("build_instances") + 1, new)
    monkeypatch.setattr(pipeline, "STAGES", tuple(stages))
    dag = DagBag(dag_folder=str(DAGS_FOLDER / "homefeed_retrain.py")).dags["homefeed_retrain"]
    order = [t.task_id for t in dag.topological_sort()]
    assert order.index("count_rows") == order.index("build_instances") + 1


def test_the_embeddings_param_reaches_the_config():
    from homefeed.orchestration import config_from_params

    assert config_from_params({"embeddings_method": "als"}).embeddings.method == "als"
    assert config_from_params({}).embeddings.method == "none"
