"""A real Redis server on this machine (Debian's ``redis-server``), for the tests and benchmarks of
the Redis sequence store. Loopback only, its data under a directory of the caller's, AOF on
(``appendfsync everysec``), as a deployment of the store would run it; stopped by process id.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from homefeed.processes import free_port


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


class RedisServer:
    def __init__(self, directory: str | Path, port: int | None = None):
        binary = redis_server_binary()
        if binary is None:
            raise FileNotFoundError("redis-server is not installed: `bash scripts/install_test_servers.sh` (Debian's redis-server)")
        self.binary, self.directory, self.port = binary, Path(directory), port or free_port()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30) -> "RedisServer":
        command = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory),
                   "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--protected-mode", "yes",
                   "--logfile", str(self.directory / "redis.log")]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        log = self.directory / "redis.log"
        raise RuntimeError(f"redis-server did not start on port {self.port}: {log.read_text()[-2000:] if log.exists() else ''}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
