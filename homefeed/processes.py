"""Stopping a process and everything it started, by process id (Linux ``/proc``).

Airflow's task runners move to process groups of their own, so signalling a launcher's process
group leaves them running; a tree walked through parent ids finds them.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import time
from pathlib import Path


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PORT = 10_000


def _ephemeral_start() -> int:
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def _binds(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, below the kernel's ephemeral range.

    A port the kernel hands out (bind to 0) comes from the ephemeral range, so any outgoing
    connection opened before the server binds it may take it (a stack starting eight servers one
    after another lost its Airflow port that way). Ports below that range are only ever taken by an
    explicit bind, so a chosen port stays free until its server binds it.
    """
    top = _ephemeral_start()
    for _ in range(200):  # bounded: ~20k candidates, almost all free
        port = random.randrange(LOWEST_PORT, max(top, LOWEST_PORT + 1))
        if _binds(port):
            return port
    with socket.socket() as probe:  # a machine with that range full: the kernel's choice
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _parents() -> dict[int, int]:
    """Every live process's parent id."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # gone meanwhile
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    return parents


def descendants(pid: int) -> list[int]:
    """The live processes started by ``pid``, at any depth."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def alive(pids: list[int]) -> list[int]:
    live = _parents()
    return [p for p in pids if p in live]


def stop_tree(pid: int, signum: int = signal.SIGTERM, grace_s: float = 30.0) -> list[int]:
    """Send ``signum`` to ``pid`` and its descendants, wait up to ``grace_s``, then SIGKILL the
    survivors; the pids that needed SIGKILL."""
    tree = [pid, *descendants(pid)]
    for member in tree:
        try:
            os.kill(member, signum)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while alive(tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    stubborn = alive(tree)
    for member in stubborn:
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return stubborn
