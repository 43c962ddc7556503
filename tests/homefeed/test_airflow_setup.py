"""`homefeed backfill`'s call of `airflow backfill create`, against a stand-in airflow that answers
as the real one does when the embedded SQLite is locked (the real race is in tests/dags/test_ui.py)."""

import os
import stat

import pytest

from homefeed import airflow_setup
from homefeed.airflow_setup import PlatformError, create_backfill

LOCKED = "sqlite3.OperationalError: database is locked"
RUNNING = "airflow.models.backfill.AlreadyRunningBackfill: Another backfill is running for Dag homefeed_retrain."


@pytest.fixture
def airflow_answering(tmp_path, monkeypatch):
    """An `airflow` whose n-th call prints the n-th answer (the last one repeats) and records its args."""

    def install(*answers: str) -> tuple[dict, list]:
        script = tmp_path / "airflow"
        script.write_text(
            "#!/usr/bin/env python3\n"
            "import json, os, sys\n"
            "calls = os.environ['CALLS']\n"
            "seen = json.load(open(calls)) if os.path.exists(calls) else []\n"
            "seen.append(sys.argv[1:]); json.dump(seen, open(calls, 'w'))\n"
            f"answers = {list(answers)!r}\n"
            "answer = answers[min(len(seen), len(answers)) - 1]\n"
            "if answer == 'ok':\n"
            "    print('created'); sys.exit(0)\n"
            "print('Traceback (most recent call last):', file=sys.stderr)\n"
            "print(answer, file=sys.stderr); sys.exit(1)\n"
        )
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        monkeypatch.setattr(airflow_setup, "airflow_bin", lambda: str(script))
        calls = tmp_path / "calls.json"
        return {**os.environ, "CALLS": str(calls)}, calls

    return install


def _calls(path) -> list:
    import json

    return json.loads(path.read_text())


def test_a_locked_database_and_the_half_made_backfill_it_leaves_are_retried_until_created(airflow_answering):
    env, calls = airflow_answering(LOCKED, RUNNING, "ok")
    said = []
    create_backfill(env, "homefeed_retrain", "2026-01-08", "2026-01-09", '{"window_days": 3}', said.append, wait_s=0.01)
    assert len(_calls(calls)) == 3
    assert _calls(calls)[0] == ["backfill", "create", "--dag-id", "homefeed_retrain", "--from-date", "2026-01-08",
                                "--to-date", "2026-01-09", "--dag-run-conf", '{"window_days": 3}', "--max-active-runs", "1"]
    assert "locked by the scheduler" in said[0] and "half-made backfill" in said[1] and len(said) == 2


def test_another_running_backfill_without_a_lock_before_is_refused_at_once(airflow_answering):
    env, calls = airflow_answering(RUNNING, "ok")
    with pytest.raises(PlatformError, match="Another backfill is running"):
        create_backfill(env, "homefeed_retrain", "2026-01-08", "2026-01-09", "{}", print, wait_s=0.01)
    assert len(_calls(calls)) == 1


def test_any_other_failure_is_not_retried(airflow_answering):
    env, calls = airflow_answering("airflow.exceptions.DagNotFound: Could not find dag homefeed_retrain", "ok")
    with pytest.raises(PlatformError, match="DagNotFound") as raised:
        create_backfill(env, "homefeed_retrain", "2026-01-08", "2026-01-09", "{}", print, wait_s=0.01)
    assert raised.value.exit_code == 1 and len(_calls(calls)) == 1


def test_a_lock_that_outlasts_the_retry_window_fails_naming_it(airflow_answering):
    env, calls = airflow_answering(LOCKED)
    with pytest.raises(PlatformError, match="database is locked"):
        create_backfill(env, "homefeed_retrain", "2026-01-08", "2026-01-09", "{}", lambda _: None, retry_for_s=0.5, wait_s=0.1)
    assert 2 <= len(_calls(calls)) <= 8
