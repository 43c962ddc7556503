"""The experiment DAG through dag.test(): with no experiment running it skips, saying so."""


def test_no_running_experiment_skips_the_readout(airflow_db, dagbag, monkeypatch, tmp_path):
    monkeypatch.setenv("HOMEFEED__STORAGE__ROOT", str(tmp_path / "store"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    dag = dagbag.dags["homefeed_experiment"]
    assert dag.timetable.expression == "0 7 * * *" and dag.catchup is False
    dagrun = dag.test()
    assert {ti.task_id: ti.state for ti in dagrun.get_task_instances()} == {"read_out": "skipped", "promote_on_verdict": "skipped"}
