"""The monitor DAG through dag.test(): a fresh champion asks for nothing, a stale one asks for retraining."""

import pytest

from tests.conftest import register_and_promote

pytestmark = pytest.mark.slow  # two DAG runs, each building instances with Spark


@pytest.fixture()
def monitor_env(monkeypatch, tmp_path, instances_dir):
    from homefeed import train as trainer
    from homefeed.config import load_config

    monkeypatch.setenv("HOMEFEED__STORAGE__ROOT", str(tmp_path / "store"))
    monkeypatch.setenv("HOMEFEED__INSTANCES__SHUFFLE_PARTITIONS", "2")
    monkeypatch.setenv("HOMEFEED__MONITOR__MIN_IMPRESSIONS", "100")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config()
    model_dir = trainer.train(str(instances_dir), str(tmp_path / "lr"), cfg.with_overrides({"train": {"model": "lr"}})).model_dir
    register_and_promote(cfg, model_dir, instances_dir, {"data.window": "2026-01-05..2026-01-08"})
    return cfg


def run_monitor(dagbag, raw_dir):
    dagrun = dagbag.dags["homefeed_monitor"].test(run_conf={"raw": str(raw_dir)})
    return {ti.task_id: ti.state for ti in dagrun.get_task_instances()}


def test_only_a_stale_champion_requests_retraining(airflow_db, dagbag, raw_dir, monitor_env, monkeypatch):
    from homefeed import monitor, monitor_records

    # One new day (the 9th), the champion one day old: within the default limits.
    states = run_monitor(dagbag, raw_dir)
    assert states == {"score_new_days": "success", "champion_is_stale": "success", "request_retraining": "skipped"}
    assert [r["day"] for r in monitor.records(monitor_env, "1")] == ["2026-01-09"]

    # The same record judged with a stricter age limit: stale, so the asset is emitted.
    monkeypatch.setenv("HOMEFEED__MONITOR__MAX_AGE_DAYS", "0")
    states = run_monitor(dagbag, raw_dir)
    assert states["request_retraining"] == "success"
    assert "1 days old" in monitor_records.stale_notice(monitor_env, "1")["reason"]
