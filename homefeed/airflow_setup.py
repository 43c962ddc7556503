"""An embedded Airflow's environment and commands, shared by the local platform (`homefeed run`,
`homefeed airflow`, `homefeed backfill`) and the one-machine stack: SQLite metadata and a login
under the storage root, the project's DAGs, the components `airflow standalone` would run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from homefeed.config import Config

REPO_ROOT = Path(__file__).resolve().parents[1]


class PlatformError(RuntimeError):
    """A platform process failed; ``exit_code`` is its status."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def airflow_env(cfg: Config, config_files: list[Path] | None = None) -> dict[str, str]:
    """Environment for an embedded Airflow: SQLite metadata under the storage root, our DAGs.

    Config overlay files travel to the tasks through HOMEFEED_CONFIG.
    """
    from homefeed import storage
    from homefeed.config import CONFIG_FILES_ENV

    home = (storage.local_path(cfg.storage.root) / "airflow").resolve()
    storage.private_file(home / "airflow.db")
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        # Airflow starts its components as `airflow …` by name: the venv's must come first.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "homefeed.orchestration.SQLITE_CONNECT_ARGS",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "GX_ANALYTICS_ENABLED": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_LOGGING_LEVEL": os.environ.get("MLFLOW_LOGGING_LEVEL", "WARNING"),
        "SPARK_LOCAL_IP": "127.0.0.1",
        CONFIG_FILES_ENV: ":".join(
            [f for f in os.environ.get(CONFIG_FILES_ENV, "").split(":") if f] + [str(Path(f).resolve()) for f in config_files or []]
        ),
    }


def airflow_bin() -> str:
    """The venv's airflow, beside this interpreter (not whichever is first on PATH)."""
    return str(Path(sys.executable).with_name("airflow"))


def run_airflow(env: dict[str, str], *args: str) -> None:
    """``airflow ARGS`` in ``env``; a failure raises PlatformError with airflow's status."""
    completed = subprocess.run([airflow_bin(), *args], env=env)
    if completed.returncode != 0:
        raise PlatformError(f"airflow {' '.join(args[:2])} failed (exit {completed.returncode})", completed.returncode)


# `airflow backfill create` creates each run inside a SAVEPOINT: on SQLite a deferred transaction
# that reads before it writes. When the scheduler commits in between, SQLite answers "database is
# locked" at once (no busy timeout helps a stale read), after the backfill's own row was committed.
# Airflow removes such a half-made backfill itself only on Postgres/MySQL lock errors; on SQLite its
# scheduler marks it complete after 2 minutes, until when a new one is refused as "Another backfill
# is running". So a lock is retried for a little longer than that, and that refusal only after one.
BACKFILL_LOCKED = "database is locked"
BACKFILL_RUNNING = "Another backfill is running"
BACKFILL_RETRY_S = 240.0
BACKFILL_WAIT_S = 10.0


def create_backfill(env: dict[str, str], dag_id: str, from_date: str, to_date: str, conf: str, say,
                    retry_for_s: float = BACKFILL_RETRY_S, wait_s: float = BACKFILL_WAIT_S) -> None:
    """``airflow backfill create`` (one run at a time) that outlasts a busy embedded SQLite: retried
    with tenacity while Airflow says the database is locked (then also while the half-made backfill
    of that failure blocks a new one); any other failure, or a lock for ``retry_for_s``, raises
    PlatformError with Airflow's last lines."""
    import tenacity

    args = ["backfill", "create", "--dag-id", dag_id, "--from-date", from_date, "--to-date", to_date,
            "--dag-run-conf", conf, "--max-active-runs", "1"]

    def attempt() -> subprocess.CompletedProcess:
        return subprocess.run([airflow_bin(), *args], env=env, stderr=subprocess.PIPE, text=True)

    def transient(state: tenacity.RetryCallState) -> bool:
        done = state.outcome.result()
        if done.returncode == 0:
            return False
        # Only a lock is retried first, so any later attempt follows one: its half-made backfill may
        # be what still blocks this one.
        return BACKFILL_LOCKED in done.stderr or (state.attempt_number > 1 and BACKFILL_RUNNING in done.stderr)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        why = "locked by the scheduler" if BACKFILL_LOCKED in state.outcome.result().stderr else "still holding the half-made backfill"
        say(f"Airflow's SQLite database was {why}; retrying in {wait_s:.0f} s (attempt {state.attempt_number + 1})")

    done = tenacity.Retrying(
        retry=transient,
        stop=tenacity.stop_after_delay(retry_for_s),
        wait=tenacity.wait_fixed(wait_s),
        before_sleep=before_sleep,
        retry_error_callback=lambda state: state.outcome.result(),
    )(attempt)
    if done.returncode != 0:
        last_lines = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise PlatformError(f"airflow backfill create failed (exit {done.returncode}):\n{last_lines}", done.returncode)


def migrate_airflow_db(env: dict[str, str]) -> None:
    """``airflow db migrate`` under an exclusive lock in AIRFLOW_HOME: two runs started together on
    a fresh root otherwise both create the tables, and one dies ("table … already exists")."""
    import fcntl

    with open(Path(env["AIRFLOW_HOME"]) / "migrate.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        migrated = subprocess.run([airflow_bin(), "db", "migrate"], env=env, capture_output=True, text=True)
    if migrated.returncode != 0:
        raise PlatformError(f"airflow db migrate failed: {migrated.stderr[-2000:]}")


def airflow_login(home: Path) -> tuple[str, str]:
    """The embedded Airflow's one user and its password, made once and kept in AIRFLOW_HOME."""
    import secrets

    from homefeed import storage

    passwords = home / "passwords.json"
    if not passwords.exists():
        storage.write_secret(passwords, json.dumps({"admin": secrets.token_urlsafe(12)}))
    return "admin", json.loads(passwords.read_text())["admin"]


def api_server_env(home: Path, port: int) -> dict[str, str]:
    """Airflow's api-server on 127.0.0.1:``port``, with the one ``admin`` login whose password is
    kept in ``home``/passwords.json."""
    return {
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
    }


def standalone_env(cfg: Config, port: int, config_files: list[Path] | None = None) -> tuple[dict[str, str], str, str]:
    """(environment, user, password) of `airflow standalone` on 127.0.0.1:``port`` with LocalExecutor."""
    env = airflow_env(cfg, config_files)
    home = Path(env["AIRFLOW_HOME"])
    user, password = airflow_login(home)
    env.update({
        **api_server_env(home, port),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
    })
    return env, user, password


def airflow_components(port: int) -> dict[str, list[str]]:
    """What `airflow standalone` runs, as separate commands. The scheduler's and the triggerer's log
    servers are not started: Airflow binds them to every interface (no setting changes it), and the
    api-server on this machine reads the task logs from its disk."""
    airflow = airflow_bin()
    return {
        "api-server": [airflow, "api-server", "--port", str(port)],
        "scheduler": [airflow, "scheduler", "--skip-serve-logs"],
        "dag-processor": [airflow, "dag-processor"],
        "triggerer": [airflow, "triggerer", "--skip-serve-logs"],
    }
