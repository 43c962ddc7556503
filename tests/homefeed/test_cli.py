import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from homefeed.cli import app
from models import MODEL_NAMES

runner = CliRunner()
HOMEFEED = str(Path(sys.executable).with_name("homefeed"))


def test_installed_console_script_lists_the_commands():
    out = subprocess.run([HOMEFEED, "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("generate", "import-kuairand", "build-instances", "validate", "models", "train", "evaluate", "promote", "rollback", "registry", "run", "backfill"):
        assert command in out


def test_models_lists_every_model_name():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert result.output.split() == list(MODEL_NAMES)


def test_bad_config_exits_non_zero_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: many\n")
    result = runner.invoke(app, ["generate", "--out", str(tmp_path / "raw"), "--config", str(bad)])
    assert result.exit_code == 2
    assert "train.epochs" in result.output
    assert not (tmp_path / "raw").exists()


def test_unknown_env_key_exits_non_zero(tmp_path, monkeypatch):
    monkeypatch.setenv("HOMEFEED__SIMULATOR__IMPRESSION", "5")
    result = runner.invoke(app, ["generate", "--out", str(tmp_path / "raw")])
    assert result.exit_code == 2 and "simulator.impression" in result.output


def test_generate_writes_the_contract(tmp_path):
    result = runner.invoke(app, ["generate", "--out", str(tmp_path / "raw"), "--impressions", "2000", "--days", "3"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "raw" / "_SUCCESS").exists()


def test_backfill_refuses_a_reversed_range_or_a_conf_that_is_not_an_object(tmp_path, monkeypatch):
    monkeypatch.setenv("HOMEFEED__STORAGE__ROOT", str(tmp_path))
    reversed_range = runner.invoke(app, ["backfill", "--from-date", "2026-01-09", "--to-date", "2026-01-08"])
    assert reversed_range.exit_code == 2 and "after --to-date" in reversed_range.output
    not_an_object = runner.invoke(app, ["backfill", "--from-date", "2026-01-08", "--to-date", "2026-01-09", "--conf", "[1]"])
    assert not_an_object.exit_code == 2 and "JSON object" in not_an_object.output
    assert not (tmp_path / "airflow").exists()  # refused before Airflow was touched


def test_embedded_airflow_waits_for_the_sqlite_lock(tmp_path, monkeypatch):
    """Airflow imports the connect args by name: the name must resolve to a busy timeout."""
    from airflow.configuration import conf

    from homefeed.cli.common import config as _config
    from homefeed.airflow_setup import airflow_env

    monkeypatch.setenv("HOMEFEED__STORAGE__ROOT", str(tmp_path))
    key = "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS"
    monkeypatch.setenv(key, airflow_env(_config(None))[key])
    assert conf.getimport("database", "sql_alchemy_connect_args")["timeout"] >= 30


def test_instances_show_prints_the_joined_view_and_refuses_bad_input(instances_dir, tmp_path):
    result = runner.invoke(app, ["instances", "show", str(instances_dir), "--split", "test", "--limit", "3"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "split=test" in lines[0] and "sequences" in lines[0]
    assert "seq_pin_id" in lines[1] and len(lines) == 2 + 3
    assert runner.invoke(app, ["instances", "show", str(instances_dir), "--split", "holdout"]).exit_code == 2
    assert runner.invoke(app, ["instances", "show", str(instances_dir), "--columns", "nope"]).exit_code == 2
    missing = runner.invoke(app, ["instances", "show", str(tmp_path / "missing")])
    assert missing.exit_code == 1 and "not found" in missing.output


def test_secrets_are_written_owner_only_whatever_the_umask(tmp_path):
    import json
    import os

    from homefeed import storage
    from homefeed.airflow_setup import airflow_login

    old = os.umask(0)
    try:
        secret = tmp_path / "s" / "secret.json"
        secret.parent.mkdir()
        secret.write_text("{}")
        secret.chmod(0o644)  # a copy written before the fix
        storage.write_secret(secret, json.dumps({"k": "v"}))
        assert (secret.stat().st_mode & 0o777) == 0o600 and json.loads(secret.read_text()) == {"k": "v"}
        user, password = airflow_login(tmp_path / "airflow")
        assert ((tmp_path / "airflow" / "passwords.json").stat().st_mode & 0o777) == 0o600 and password
        assert airflow_login(tmp_path / "airflow") == (user, password)  # made once
    finally:
        os.umask(old)


def test_sequences_load_is_idempotent_and_show_reads_the_user_back(raw_dir, tmp_path, monkeypatch):
    import json

    import pyarrow.parquet as pq

    monkeypatch.setenv("HOMEFEED__STORAGE__ROOT", str(tmp_path))
    first = runner.invoke(app, ["sequences", "load", "--raw", str(raw_dir), "--until", "2026-01-07"])
    assert first.exit_code == 0, first.output
    loaded = json.loads(first.stdout.strip().splitlines()[-1])
    actions = pq.read_table(raw_dir / "actions").to_pandas()
    cut = 1_767_744_000_000  # 2026-01-07T00:00Z
    assert loaded["events_added"] == int((actions["ts"] < cut).sum()) > 0
    assert "events read" in first.stderr  # progress
    rest = json.loads(runner.invoke(app, ["sequences", "load", "--raw", str(raw_dir)]).stdout.strip().splitlines()[-1])
    assert rest["events_added"] == int((actions["ts"] >= cut).sum())
    again = json.loads(runner.invoke(app, ["sequences", "load", "--raw", str(raw_dir)]).stdout.strip().splitlines()[-1])
    assert again["events_added"] == 0 and again["files_loaded"] == 0
    user = int(actions["user_id"].iloc[0])
    shown = json.loads(runner.invoke(app, ["sequences", "show", "--user", str(user), "--limit", "3"]).stdout)
    assert shown["kept"] + shown["evicted"] == int((actions["user_id"] == user).sum())
    assert [e["ts"] for e in shown["newest"]] == sorted(actions[actions["user_id"] == user]["ts"], reverse=True)[:3]


def test_sequences_load_refuses_bad_input(tmp_path, monkeypatch):
    monkeypatch.setenv("HOMEFEED__STORAGE__ROOT", str(tmp_path))
    bad_time = runner.invoke(app, ["sequences", "load", "--raw", str(tmp_path), "--until", "yesterday-ish"])
    assert bad_time.exit_code == 2 and "ISO date/time" in bad_time.output
    missing = runner.invoke(app, ["sequences", "load", "--raw", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "error:" in missing.output


@pytest.mark.slow
def test_two_runs_migrating_a_fresh_airflow_db_at_once_both_succeed(base_config, tmp_path):
    # Before: two `homefeed run` on a fresh root; one died in `airflow db migrate` with "table
    # dagrun_asset_event already exists" (issue 21, item 4). The migration is now under a lock.
    import threading

    from homefeed.airflow_setup import airflow_env, migrate_airflow_db

    env = airflow_env(base_config.with_overrides({"storage": {"root": str(tmp_path)}}))
    errors = []

    def migrate():
        try:
            migrate_airflow_db(env)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors and (tmp_path / "airflow" / "airflow.db").exists()


def test_the_sqlite_stores_are_owner_only_whatever_the_umask(base_config, tmp_path, monkeypatch):
    # Before: mlflow.db and airflow.db were 0644 (issue 21, item 16).
    import os

    from homefeed import features, registry
    from homefeed.airflow_setup import airflow_env
    from homefeed.sequence_store import SqliteSequenceStore

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = base_config.with_overrides({"storage": {"root": str(tmp_path)}})
    (tmp_path / "mlflow.db").touch(mode=0o644)  # made before the fix
    old = os.umask(0)
    try:
        registry.client(cfg)
        airflow_env(cfg)
        store = SqliteSequenceStore(tmp_path / "serving" / "sequences.sqlite", features.FeatureSnapshot({}, {}))
        store.append(1, 2, "click", 3)  # writes the WAL beside it
        store.close()
    finally:
        os.umask(old)
    for name in ("mlflow.db", "airflow/airflow.db", "serving/sequences.sqlite"):
        assert ((tmp_path / name).stat().st_mode & 0o777) == 0o600, name


def test_the_run_summary_gives_intervals_hit_counts_and_no_vnone():
    # Before: "gate: gate passed", "previous=vNone", no intervals or HIT@3 (issue 22).
    from homefeed.local_platform import run_summary
    from homefeed.pipeline import Evaluated, Gated
    from homefeed.registry import RegistryState

    head = {"auc": 0.74, "hit": 0.5, "hit_requests": 120}
    evaluation = Evaluated({"hit_k": 3, "overall": {"repin": head, "hide": {**head, "hit": float("nan"), "hit_requests": 0}},
                            "intervals": {"overall": {"repin": {"auc": [0.73, 0.75]}, "hide": {"auc": [0.70, 0.78]}}}}, None, None, None)
    state = RegistryState(champion="2", challenger="2", previous=None, holdout={})
    lines = run_summary(evaluation, Gated(True, "gate passed (4 checks, against champion v1)"), state, "ranker")
    assert lines[0] == "test AUC per head (95% interval): repin 0.7400 [0.7300, 0.7500], hide 0.7400 [0.7000, 0.7800]"
    assert lines[1] == "test HIT@3: repin 0.500 over 120 requests"
    assert lines[2] == "gate passed (4 checks, against champion v1)"
    assert lines[3] == "registry: ranker champion=v2 challenger=v2 previous=none"
    assert run_summary(None, None, RegistryState(None, None, None, {}), "ranker") == [
        "gate: did not run", "registry: ranker champion=none challenger=none previous=none"]


def test_experiment_commands_on_an_empty_registry_say_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("HOMEFEED__STORAGE__ROOT", str(tmp_path / "root"))
    for args, expected in ((["experiment", "start", "--challenger", "99"], "refused: homefeed-ranker has no version 99"),
                           (["experiment", "start", "--challenger", "1", "--traffic", "1.5"], "refused: --traffic must be in (0, 1]"),
                           (["experiment", "readout", "nope"], "error: no experiment 'nope'"),
                           (["experiment", "stop", "nope"], "error: no experiment 'nope'")):
        result = subprocess.run([HOMEFEED, *args], capture_output=True, text=True, timeout=120)
        assert result.returncode == 1, (args, result.stderr)
        assert expected in result.stderr and "Traceback" not in result.stderr
    status = subprocess.run([HOMEFEED, "experiment", "status"], capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "no experiment is running" in status.stderr


def test_a_failed_train_marks_its_mlflow_run_failed_with_the_reason(tmp_path, monkeypatch):
    from homefeed import registry
    from homefeed.config import load_config

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("HOMEFEED__STORAGE__ROOT", str(tmp_path / "root"))
    result = subprocess.run([HOMEFEED, "train", "--instances", str(tmp_path / "missing"), "--model", "lr"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "marked FAILED" in result.stderr and "Traceback" not in result.stderr
    run_id = result.stderr.split("MLflow run ")[-1].split(" ")[0]
    status, tags = registry.run_state(load_config(), run_id)
    assert status == "FAILED" and "missing" in tags["homefeed.error"]


def test_embed_pins_refuses_a_bad_day_and_an_end_without_engagement(raw_dir, tmp_path):
    bad = runner.invoke(app, ["embed-pins", "--raw", str(raw_dir), "--end", "07/01/2026", "--out", str(tmp_path / "e")])
    assert bad.exit_code == 2 and "is not a date" in bad.output
    early = runner.invoke(app, ["embed-pins", "--raw", str(raw_dir), "--end", "2025-12-31", "--out", str(tmp_path / "e"),
                                "--method", "word2vec"])
    assert early.exit_code == 1 and "no positive actions up to 2025-12-31" in early.output
    assert not (tmp_path / "e").exists()


def test_simulate_experiment_sizes_the_users_for_the_case_and_refuses_bad_input(tmp_path, monkeypatch):
    from homefeed import experiment_sim

    seen = []
    monkeypatch.setattr(experiment_sim, "run", lambda cfg, out, settings, say: seen.append(settings) or {"decision": {"verdict": "continue", "reasons": []}})
    for extra in ([], ["--drop-treatment-users", "0.1"], ["--drop-treatment-users", "0.1", "--users", "500"]):
        assert runner.invoke(app, ["simulate-experiment", "--out", str(tmp_path / "x"), "--challenger", "same", *extra]).exit_code == 0
    assert [s.users for s in seen] == [7000, 14000, 500]  # a logging loss needs twice the users for its SRM alarm
    for bad in (["--challenger", "nope"], ["--challenger", "same", "--users", "0"], ["--challenger", "same", "--traffic", "1.5"],
                ["--challenger", "same", "--drop-treatment-users", "1"]):
        assert runner.invoke(app, ["simulate-experiment", "--out", str(tmp_path / "x"), *bad]).exit_code == 2
    assert len(seen) == 3 and not (tmp_path / "x").exists()
