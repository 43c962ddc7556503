"""`homefeed stack`: the deployed topology on one machine, run for real (issue 24)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from homefeed.config import load_config
from homefeed.stack import Stack, postgres_bin

DOCKER = Path(__file__).resolve().parents[2] / "docker"
ENV_EXAMPLE = dict(line.split("=", 1) for line in (DOCKER / ".env.example").read_text().splitlines() if line and not line.startswith("#"))
COMPOSE_ONLY = {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}  # MinIO's own login; the stack's S3 (SeaweedFS) takes the AWS keys
HOMEFEED = str(Path(sys.executable).with_name("homefeed"))


def test_the_stack_and_the_compose_file_read_the_same_variables(tmp_path):
    environment = Stack(load_config(overrides={"storage": {"root": str(tmp_path)}})).environment()
    assert set(environment) == set(ENV_EXAMPLE) - COMPOSE_ONLY
    assert all("127.0.0.1" in v for k, v in environment.items() if v.startswith(("http://", "spark://", "postgresql")))


def test_credentials_are_made_once_and_kept_private_and_ports_stay(tmp_path):
    stack = Stack(load_config(overrides={"storage": {"root": str(tmp_path)}}))
    first, ports = stack.credentials(), stack.ports()
    assert Stack(stack.cfg).credentials() == first and Stack(stack.cfg).ports() == ports
    assert stat.S_IMODE((stack.home / "credentials.json").stat().st_mode) == 0o600
    assert len(set(ports.values())) == len(ports)


def test_down_with_nothing_recorded_stops_nothing(tmp_path):
    assert Stack(load_config(overrides={"storage": {"root": str(tmp_path)}})).down(print) == []


def _call(base: str, path: str, token: str | None = None, method: str = "GET", body: dict | None = None):
    request = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def _listening_beyond_loopback(recorded: dict[int, str]) -> list[str]:
    """Sockets of the stack's processes listening on anything but 127.0.0.1 (/proc/net/tcp{,6})."""
    groups = set(recorded)
    inodes = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getpgid(int(proc.name)) not in groups:
                continue
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = f"{recorded[os.getpgid(int(proc.name))]} (pid {proc.name})"
        except OSError:
            continue
    wide = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            address = local.split(":")[0]
            if state == "0A" and inode in inodes and address not in ("0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"):
                wide.append(f"{inodes[inode]} listens on {local}")
    return wide


def _left_behind(recorded: dict[int, str]) -> list[str]:
    """Recorded components with a process left: the postmaster by pid, the rest by process group
    (a group keeps living while any process up started in it does)."""
    left = []
    for pid, name in recorded.items():
        try:
            os.kill(pid, 0) if name == "postgres" else os.killpg(pid, 0)
            left.append(name)
        except ProcessLookupError:
            pass
    return left


@pytest.mark.slow
def test_the_stack_retrains_on_its_spark_cluster_and_mlflow_server_then_serves_the_champion(raw_dir):
    """stack up → two homefeed_retrain runs triggered at once through the REST API (they run one
    after the other: max_active_runs=1; the second, on raw data that is not there, fails on its
    first stage) → the champion served by the stack's homefeed serve →
    stack down leaves no process behind."""
    try:
        postgres_bin("pg_ctl")
    except Exception as exc:
        pytest.skip(str(exc))
    # As root the Postgres cluster runs as the postgres user, which must reach the storage root.
    home = Path(tempfile.mkdtemp(prefix="homefeed-stack-", dir="/tmp"))
    home.chmod(0o755)
    env = {**os.environ, "HOMEFEED__STORAGE__ROOT": str(home / "store")}
    env.pop("MLFLOW_TRACKING_URI", None)
    stack = Stack(load_config(overrides={"storage": {"root": str(home / "store")}}))
    recorded: dict[int, str] = {}
    try:
        started = time.monotonic()
        up = subprocess.run([HOMEFEED, "stack", "up"], env=env, capture_output=True, text=True, timeout=600)
        assert up.returncode == 0, up.stdout + up.stderr
        up_seconds = time.monotonic() - started
        running = stack.components()
        recorded.update({c.pid: c.name for c in running.values()})
        assert {"postgres", "s3", "mlflow", "spark-master", "spark-worker-1", "spark-worker-2", "airflow-api-server",
                "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"} <= set(running)
        assert "waiting for a champion" in up.stderr
        assert _listening_beyond_loopback(recorded) == []
        assert subprocess.run([HOMEFEED, "stack", "status"], env=env, capture_output=True).returncode == 0

        base = running["airflow-api-server"].url
        token = _call(base, "/auth/token", method="POST", body={"username": "admin", "password": stack.credentials()["airflow_password"]})["access_token"]
        deadline = time.monotonic() + 120
        while True:  # the dag-processor parses the DAGs after start
            try:
                _call(base, "/api/v2/dags/homefeed_retrain", token)
                break
            except Exception:
                assert time.monotonic() < deadline, "homefeed_retrain never appeared"
                time.sleep(2)
        _call(base, "/api/v2/dags/homefeed_retrain", token, "PATCH", {"is_paused": False})
        conf = {"raw": str(raw_dir), "end_date": "2026-01-09", "window_days": 5, "model": "avgpool", "epochs": 1, "min_auc_repin": 0.0}
        # The second run names raw data that is not there: it must wait for the first (one run at
        # a time), then fail on its first stage, cheaply, leaving the first run's champion alone.
        runs = [_call(base, "/api/v2/dags/homefeed_retrain/dagRuns", token, "POST", {"logical_date": None, "conf": {**conf, "run_label": label, **extra}})
                for label, extra in (("first", {}), ("second", {"raw": str(home / "no-such-raw")}))]
        deadline, finished = time.monotonic() + 900, {}
        while len(finished) < 2 and time.monotonic() < deadline:
            for run in runs:
                state = _call(base, f"/api/v2/dags/homefeed_retrain/dagRuns/{run['dag_run_id']}", token)
                if state["state"] in ("success", "failed"):
                    finished[run["dag_run_id"]] = state
            time.sleep(5)
        assert len(finished) == 2, f"runs still going after 15 min: {finished}"
        first, second = (finished[r["dag_run_id"]] for r in runs)
        assert first["state"] == "success" and second["state"] == "failed", (first, second)
        second_tasks = _call(base, f"/api/v2/dags/homefeed_retrain/dagRuns/{second['dag_run_id']}/taskInstances", token)["task_instances"]
        assert {t["task_id"]: t["state"] for t in second_tasks}["check_raw"] == "failed"
        ordered = sorted((first, second), key=lambda r: r["start_date"])
        assert ordered[1]["start_date"] >= ordered[0]["end_date"]  # one after the other, never interleaved

        # The instance job ran on the cluster (both workers), training logged to the MLflow server,
        # the run directories went to S3, and a champion was promoted.
        applications = list((stack.home / "spark-work").glob("app-*"))
        assert applications and all(len(list(a.iterdir())) == 2 for a in applications)
        from homefeed import registry, s3

        stack_env = stack.environment()
        cfg = stack.cfg.with_overrides({"registry": {"tracking_uri": stack_env["MLFLOW_TRACKING_URI"]}})
        os.environ.update({k: stack_env[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")})
        champion = registry.alias_version(cfg, registry.CHAMPION)
        assert champion is not None
        assert registry.client(cfg).get_run(json.loads((home / "store" / "runs" / "first" / "mlflow_run.json").read_text())["run_id"]).info.status == "FINISHED"
        assert s3.list_keys(s3.client(), "s3://homefeed/runs/first") and s3.list_keys(s3.client(), "s3://homefeed/runs/second")

        # A second `up` starts what is missing: the service, now that there is a champion.
        again = subprocess.run([HOMEFEED, "stack", "up"], env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "postgres: already running" in again.stderr
        recorded.update({c.pid: c.name for c in stack.components().values()})
        serve = stack.components()["serve"].url
        assert str(_call(serve, "/ready")["model_version"]) == champion
        now = int(time.time() * 1000)
        ranked = _call(serve, "/rank", method="POST", body={"user_id": 1, "request_ts": now, "candidates": [{"pin_id": 1, "ts": now, "source": "pfy"}]})
        assert ranked["model_version"] == champion and len(ranked["ranked"]) == 1

        # The monitor DAG runs on its schedule's trigger: unpaused, the scheduler itself starts
        # its latest daily slot (on the default raw root, which it scores against the champion).
        shutil.copytree(raw_dir, home / "store" / "raw")
        _call(base, "/api/v2/dags/homefeed_monitor", token, "PATCH", {"is_paused": False})
        deadline, monitored = time.monotonic() + 300, []
        while time.monotonic() < deadline:
            monitored = _call(base, "/api/v2/dags/homefeed_monitor/dagRuns?run_type=scheduled", token)["dag_runs"]
            if monitored and monitored[0]["state"] in ("success", "failed"):
                break
            time.sleep(5)
        assert monitored and monitored[0]["state"] == "success", monitored
        print(f"stack up: {up_seconds:.0f} s")
    finally:
        down = subprocess.run([HOMEFEED, "stack", "down"], env=env, capture_output=True, text=True, timeout=300)
        assert down.returncode == 0, down.stdout + down.stderr
        assert _left_behind(recorded) == []
        assert stack.components() == {}
