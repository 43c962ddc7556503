"""`homefeed stack up|down|status`: the deployed topology of ``docker/compose.yaml`` on one
machine, without containers, from the same packages.

Each component is its own process (its own process group), bound to 127.0.0.1, with its data
and log under ``<storage root>/stack/``: PostgreSQL (Debian's server binaries as a private
cluster: ``initdb`` / ``pg_ctl``), SeaweedFS (S3), the MLflow tracking server (Postgres backend
store, artifacts on S3), a Spark standalone master and two workers, Airflow's api-server,
scheduler, dag-processor and triggerer (LocalExecutor on Postgres), and ``homefeed serve``
against the MLflow server once a champion exists. The configuration is the compose file's: the
same variable names (``docker/.env.example``), with loopback addresses.

``up`` starts what is not running yet and waits until each answers; ``down`` stops exactly the
process groups ``up`` recorded in ``state.json``; ``status`` lists each component with its port.
Ports are chosen once and kept (``ports.json``); credentials are generated once (0600).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from homefeed import processes, storage
from homefeed.airflow_setup import REPO_ROOT
from homefeed.config import Config

BUCKET = "homefeed"
USER = "homefeed"
PORTS = ("postgres", "mlflow", "spark_master", "spark_master_ui", "spark_worker_1", "spark_worker_2", "airflow", "serve")
Say = Callable[[str], None]
ORDER = ("postgres", "s3", "mlflow", "spark-master", "spark-worker-1", "spark-worker-2", "airflow-api-server",
         "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "serve")


class StackError(RuntimeError):
    """A component did not start; the message says which and ends with its log."""


@dataclass(frozen=True)
class Component:
    name: str
    port: int | None
    pid: int | None  # the process group up started (its leader's pid)
    url: str = ""

    def running(self) -> bool:
        return self.pid is not None and _alive(self.pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _gone(pid: int, timeout_s: float) -> bool:
    """True once ``pid`` has exited (a stopped server may take a moment after saying so)."""
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except Exception:
        return False


def postgres_bin(program: str) -> Path:
    """A program of Debian's newest PostgreSQL server (postgresql-NN), or StackError."""
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{program}"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if found:
        return found[-1]
    raise StackError(f"PostgreSQL's {program} is missing: install Debian's postgresql (scripts/install_test_servers.sh does)")


class Stack:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.home = (storage.local_path(cfg.storage.root) / "stack").resolve()
        self.state_file = self.home / "state.json"
        self.logs = self.home / "logs"

    # ----------------------------------------------------------------------- what is kept
    def _kept(self, name: str, make: Callable[[], dict[str, Any]], secret: bool = False) -> dict[str, Any]:
        path = self.home / name
        if not path.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            text = json.dumps(make(), indent=2)
            storage.write_secret(path, text) if secret else path.write_text(text)
        return json.loads(path.read_text())

    def ports(self) -> dict[str, int]:
        return self._kept("ports.json", lambda: {name: processes.free_port() for name in PORTS})

    def credentials(self) -> dict[str, str]:
        return self._kept("credentials.json", lambda: {
            "postgres_password": secrets.token_urlsafe(18), "s3_access_key": f"homefeed-{secrets.token_hex(4)}",
            "s3_secret_key": secrets.token_urlsafe(24), "airflow_password": secrets.token_urlsafe(12),
            "jwt_secret": secrets.token_urlsafe(32), "serving_token": secrets.token_urlsafe(24),
        }, secret=True)

    def _state(self) -> dict[str, dict[str, Any]]:
        return json.loads(self.state_file.read_text()) if self.state_file.exists() else {}

    def _record(self, name: str, pid: int | None, port: int | None, url: str = "", **extra: Any) -> None:
        state = self._state()
        state[name] = {"pid": pid, "port": port, "url": url, **extra}
        storage.write_json(self.state_file, state)

    def _forget(self, name: str) -> None:
        state = self._state()
        state.pop(name, None)
        storage.write_json(self.state_file, state)

    # ----------------------------------------------------------------------- the configuration
    def environment(self) -> dict[str, str]:
        """The compose file's variables (docker/.env.example), for this machine's loopback stack."""
        ports, keys = self.ports(), self.credentials()
        postgres = f"postgresql+psycopg2://{USER}:{keys['postgres_password']}@127.0.0.1:{ports['postgres']}"
        s3_endpoint = self._state().get("s3", {}).get("url", "")
        airflow = f"http://127.0.0.1:{ports['airflow']}"
        return {
            "POSTGRES_USER": USER,
            "POSTGRES_PASSWORD": keys["postgres_password"],
            "HOMEFEED_BUCKET": BUCKET,
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"{postgres}/airflow",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{airflow}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt_secret"],
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['mlflow']}",
            "MLFLOW_BACKEND_STORE_URI": f"{postgres}/mlflow",
            "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
            "AWS_ENDPOINT_URL": s3_endpoint,
            "AWS_ACCESS_KEY_ID": keys["s3_access_key"],
            "AWS_SECRET_ACCESS_KEY": keys["s3_secret_key"],
            "AWS_DEFAULT_REGION": "us-east-1",
            "HOMEFEED__STORAGE__ROOT": str(storage.local_path(self.cfg.storage.root).resolve()),
            "HOMEFEED__STORAGE__S3_URI": f"s3://{BUCKET}",
            "HOMEFEED_SPARK_MASTER": f"spark://127.0.0.1:{ports['spark_master']}",
            "HOMEFEED_SPARK_DRIVER_HOST": "127.0.0.1",
            "HOMEFEED__SERVING__HOST": "127.0.0.1",
            "HOMEFEED__SERVING__PORT": str(ports["serve"]),
            "HOMEFEED__SERVING__TOKEN": keys["serving_token"],
            "HOMEFEED__SERVING__SEQUENCE_STORE": "",  # the embedded SQLite store (compose: its redis service)
            "HOMEFEED__TRAIN__NUM_PROCESSES": "2",  # torchrun, as on a cluster
        }

    # ----------------------------------------------------------------------- starting one
    def _spawn(self, name: str, command: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("a") as log:  # the child keeps its own descriptor
            return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd)

    def _wait(self, name: str, ready: Callable[[], bool], process: subprocess.Popen | None, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ready():
                return
            if process is not None and process.poll() is not None:
                break
            time.sleep(0.5)
        log = self.logs / f"{name}.log"
        tail = log.read_text(errors="replace")[-2500:] if log.exists() else ""
        raise StackError(f"{name} did not become ready within {timeout_s:.0f} s; the end of {log}:\n{tail}")

    def _run_as_postgres(self, command: list[str], **kwargs) -> subprocess.CompletedProcess:
        # PostgreSQL refuses to run as root: as root, its cluster runs as Debian's postgres user.
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run(prefix + command, capture_output=True, text=True, **kwargs)

    def _start_postgres(self, say: Say) -> None:
        directory, port = self.home / "postgres", self.ports()["postgres"]
        data, sockets = directory / "data", directory / "sockets"
        if not (data / "PG_VERSION").exists():
            sockets.mkdir(parents=True, exist_ok=True)
            password_file = directory / "initdb.pw"
            storage.write_secret(password_file, self.credentials()["postgres_password"])
            if os.geteuid() == 0:
                shutil.chown(directory, "postgres", "postgres")
                shutil.chown(sockets, "postgres", "postgres")
                shutil.chown(password_file, "postgres", "postgres")
            done = self._run_as_postgres([str(postgres_bin("initdb")), "-D", str(data), "-U", USER, f"--pwfile={password_file}",
                                          "-A", "scram-sha-256", "--no-instructions", "-E", "UTF8"])
            password_file.unlink(missing_ok=True)
            if done.returncode != 0:
                raise StackError(f"initdb failed: {done.stderr[-2000:]}" + self._traversal_hint(directory))
        self.logs.mkdir(parents=True, exist_ok=True)
        log = directory / "postgres.log"
        done = self._run_as_postgres([str(postgres_bin("pg_ctl")), "-D", str(data), "-l", str(log), "-w", "-t", "60",
                                      "-o", f"-p {port} -h 127.0.0.1 -k {sockets}", "start"])
        if done.returncode != 0:
            raise StackError(f"pg_ctl start failed: {done.stdout[-1000:]} {done.stderr[-1000:]}; see {log}")
        pid = int((data / "postmaster.pid").read_text().split()[0])
        self._record("postgres", pid, port, f"postgresql://127.0.0.1:{port}", data=str(data))
        for database in ("airflow", "mlflow"):
            self._create_database(database)

    def _traversal_hint(self, directory: Path) -> str:
        if os.geteuid() != 0:
            return ""
        return (f"\n(as root the cluster runs as the postgres user, which must be able to reach {directory}: "
                "every directory above it needs o+x)")

    def _create_database(self, name: str) -> None:
        import psycopg2

        ports, keys = self.ports(), self.credentials()
        connection = psycopg2.connect(host="127.0.0.1", port=ports["postgres"], user=USER, password=keys["postgres_password"], dbname="postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cursor.fetchone() is None:
                cursor.execute(f'CREATE DATABASE "{name}"')
        connection.close()

    def _start_s3(self, say: Say) -> None:
        from homefeed.local_s3 import SeaweedServer

        keys = self.credentials()
        server = SeaweedServer(self.home / "s3", keys["s3_access_key"], keys["s3_secret_key"], BUCKET).start()
        self._record("s3", server.process.pid, server.ports["s3"], server.endpoint)

    def _start_mlflow(self, say: Say) -> None:
        # Its job runner (MLflow's GenAI jobs: eight worker processes, 2 GiB) serves nothing homefeed does.
        env, port = {**os.environ, **self.environment(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, self.ports()["mlflow"]
        command = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", env["MLFLOW_BACKEND_STORE_URI"],
                   "--artifacts-destination", f"s3://{BUCKET}/mlflow", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        process = self._spawn("mlflow", command, env)
        self._wait("mlflow", lambda: _http_ok(f"http://127.0.0.1:{port}/health"), process, 180)
        self._record("mlflow", process.pid, port, f"http://127.0.0.1:{port}")

    def _spark_env(self) -> dict[str, str]:
        return {**os.environ, **self.environment(), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(self.logs),
                "SPARK_WORKER_DIR": str(self.home / "spark-work"), "PYSPARK_PYTHON": sys.executable,
                "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}

    def _start_spark(self, say: Say) -> None:
        import pyspark

        spark_class = str(Path(pyspark.__file__).parent / "bin" / "spark-class")
        ports, env = self.ports(), self._spark_env()
        master = self._spawn("spark-master", [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                              "--port", str(ports["spark_master"]), "--webui-port", str(ports["spark_master_ui"])], env)
        self._wait("spark-master", lambda: _listening(ports["spark_master"]), master, 120)
        url = f"spark://127.0.0.1:{ports['spark_master']}"
        self._record("spark-master", master.pid, ports["spark_master"], url)
        for i in (1, 2):
            name, port = f"spark-worker-{i}", ports[f"spark_worker_{i}"]
            worker = self._spawn(name, [spark_class, "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1", "--port", str(port),
                                        "--webui-port", "0", "--cores", "1", "--memory", "1g"], env)
            self._wait(name, lambda port=port: _listening(port), worker, 120)
            self._record(name, worker.pid, port)

    def airflow_env(self) -> dict[str, str]:
        from homefeed.airflow_setup import airflow_env, api_server_env

        home = self.home / "airflow"
        home.mkdir(parents=True, exist_ok=True)
        env = {**airflow_env(self.cfg), **self.environment(), "AIRFLOW_HOME": str(home),
               **api_server_env(home, self.ports()["airflow"]), "AIRFLOW__API__WORKERS": "1", "PYTHONPATH": str(REPO_ROOT)}
        env.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS", None)  # SQLite's lock timeout: not for Postgres
        storage.write_secret(home / "passwords.json", json.dumps({"admin": self.credentials()["airflow_password"]}))
        return env

    def _start_airflow(self, say: Say) -> None:
        from homefeed.airflow_setup import PlatformError, airflow_components, migrate_airflow_db

        env, port = self.airflow_env(), self.ports()["airflow"]
        try:
            migrate_airflow_db(env)
        except PlatformError as exc:
            raise StackError(str(exc)) from None
        components = airflow_components(port)
        api = self._spawn("airflow-api-server", components.pop("api-server"), env)
        self._wait("airflow-api-server", lambda: _http_ok(f"http://127.0.0.1:{port}/api/v2/monitor/health"), api, 180)
        self._record("airflow-api-server", api.pid, port, f"http://127.0.0.1:{port}")
        for part, command in components.items():
            process = self._spawn(f"airflow-{part}", command, env)
            self._record(f"airflow-{part}", process.pid, None)
        self._wait("airflow-scheduler", lambda: self._airflow_healthy(port), None, 180)

    @staticmethod
    def _airflow_healthy(port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=3) as response:
                health = json.load(response)
        except Exception:
            return False
        parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
        return all(health.get(part, {}).get("status") == "healthy" for part in parts)

    def _start_serve(self, say: Say) -> bool:
        from homefeed import registry

        env = {**os.environ, **self.environment()}
        cfg = self.cfg.with_overrides({"registry": {"tracking_uri": env["MLFLOW_TRACKING_URI"]}})
        if registry.alias_version(cfg, registry.CHAMPION) is None:
            say("    serve: waiting for a champion (run homefeed_retrain, then `homefeed stack up` again)")
            return False
        port = self.ports()["serve"]
        process = self._spawn("serve", [str(Path(sys.executable).with_name("homefeed")), "serve", "--port", str(port)], env)
        self._wait("serve", lambda: _http_ok(f"http://127.0.0.1:{port}/ready"), process, 300)
        self._record("serve", process.pid, port, f"http://127.0.0.1:{port}")
        return True

    # ----------------------------------------------------------------------- the commands
    STARTERS = (("postgres", "_start_postgres"), ("s3", "_start_s3"), ("mlflow", "_start_mlflow"),
                ("spark-master", "_start_spark"), ("airflow-api-server", "_start_airflow"), ("serve", "_start_serve"))

    def up(self, say: Say) -> dict[str, float]:
        """Start what is not running, in dependency order; seconds each took."""
        timings = {}
        for name, starter in self.STARTERS:
            current = self.components().get(name)
            if current is not None and current.running():
                say(f"    {name}: already running (pid {current.pid})")
                continue
            started = time.monotonic()
            say(f"==> starting {name}")
            if getattr(self, starter)(say) is not False:
                timings[name] = time.monotonic() - started
                say(f"    {name}: ready in {timings[name]:.1f} s")
        return timings

    def components(self) -> dict[str, Component]:
        """What up recorded, in start order."""
        state = self._state()
        ordered = sorted(state, key=lambda name: ORDER.index(name) if name in ORDER else len(ORDER))
        return {name: Component(name, state[name].get("port"), state[name].get("pid"), state[name].get("url", "")) for name in ordered}

    def status(self) -> list[Component]:
        return list(self.components().values())

    def down(self, say: Say) -> list[str]:
        """Stop every process group ``up`` recorded, newest first (Postgres through pg_ctl)."""
        stopped = []
        for name, component in reversed(list(self.components().items())):
            if name == "postgres":
                data = self._state()["postgres"].get("data")
                if component.running() and data:
                    self._run_as_postgres([str(postgres_bin("pg_ctl")), "-D", data, "-m", "fast", "-w", "-t", "60", "stop"])
            elif component.pid is not None:
                _stop_group(component.pid)
            if component.pid is not None and not _gone(component.pid, 15):
                raise StackError(f"{name} (pid {component.pid}) did not stop")
            self._forget(name)
            stopped.append(name)
            say(f"    stopped {name}")
        return stopped


def _stop_group(pgid: int, grace_s: float = 20.0) -> None:
    """SIGTERM to the group, then SIGKILL after ``grace_s``."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + (grace_s if signum == signal.SIGTERM else 5)
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            try:  # reap it when it is our child (a test that ran up in-process)
                os.waitpid(pgid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.2)
