"""The instance job on a real Spark standalone cluster (a master and two 1-core workers on
127.0.0.1, started from the pyspark install), submitted with spark-submit as in deployment, and
compared row for row with the local result."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import pyspark

from homefeed.processes import free_port

pytestmark = pytest.mark.slow

SPARK_BIN = Path(pyspark.__file__).parent / "bin"
REPO = Path(__file__).resolve().parents[2]


def wait_for_port(port: int, process: subprocess.Popen, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(1)
    pytest.fail(f"{what} did not listen on {port} within {timeout} s")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    logs = tmp_path_factory.mktemp("spark-cluster")
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(logs), "SPARK_WORKER_DIR": str(logs / "work")}
    master_port, web_port = free_port(), free_port()
    processes = []

    def start(name: str, *args: str) -> subprocess.Popen:
        log = (logs / f"{name}.log").open("w")
        process = subprocess.Popen([str(SPARK_BIN / "spark-class"), *args], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        processes.append(process)
        return process

    try:
        master = start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(master_port), "--webui-port", str(web_port))
        wait_for_port(master_port, master, "spark master")
        url = f"spark://127.0.0.1:{master_port}"
        for i in range(2):
            worker_port = free_port()
            worker = start(f"worker{i}", "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1", "--port", str(worker_port),
                           "--webui-port", str(free_port()), "--cores", "1", "--memory", "1g")
            wait_for_port(worker_port, worker, f"spark worker {i}")
        yield url, logs
    finally:
        for process in processes:  # each started in its own process group
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def read_instances(path: Path):
    """Every split's per-impression view (sequences joined back), in one key order."""
    import pandas as pd

    from homefeed import data, schema

    frames = [data.read_instances(path, split).to_pandas().assign(split=split) for split in schema.SPLITS]
    return pd.concat(frames).sort_values(["request_id", "pin_id"]).reset_index(drop=True)


def test_spark_submit_to_a_standalone_cluster_matches_the_local_run(cluster, raw_dir, instances_dir, base_config, tmp_path):
    url, logs = cluster
    overlay = tmp_path / "instances.yaml"
    overlay.write_text(yaml.safe_dump({"instances": base_config.instances.model_dump(mode="json"),
                                       "spark": {"master": url, "driver_memory": "1g"}}))
    out = tmp_path / "cluster-instances"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1",
           "PYTHONPATH": str(REPO)}
    env.pop("HOMEFEED_SPARK_MASTER", None)
    submitted = subprocess.run(
        [str(SPARK_BIN / "spark-submit"), "--master", url, "--conf", "spark.executor.memory=900m", "--conf", "spark.cores.max=2",
         str(REPO / "jobs" / "build_instances.py"), "--raw", str(raw_dir), "--out", str(out), "--config", str(overlay)],
        env=env, capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    assert "wrote" in submitted.stdout
    # Both executors took part: the master handed the application to both workers.
    executors = list((logs / "work").glob("app-*/*/stderr"))
    assert len(executors) == 2, executors

    local, remote = read_instances(instances_dir), read_instances(out)
    assert len(remote) == len(local) > 0
    for column in ("user_id", "ts", "label_repin", "label_hide", "sample_weight", "split", "user_prior_actions"):
        assert (remote[column].to_numpy() == local[column].to_numpy()).all(), column
    assert all((a == b).all() for a, b in zip(remote["seq_ts"], local["seq_ts"]))
