"""What an operator watches while work runs: a line per stage (duration, key figure) and a plain
progress line at least every ``EVERY_S`` seconds during long work.

Lines go to the ``homefeed.progress`` logger, so they read the same in an Airflow task log, in
``homefeed run``'s terminal (which shows homefeed's own lines and keeps the rest in a file) and
under pytest. Work with its own measure of progress (training batches) reports it with
``report``; a ``heartbeat`` covers the rest (Spark jobs, GX suites), saying only what it knows.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

log = logging.getLogger("homefeed.progress")
live_log = logging.getLogger("homefeed.progress.live")  # superseded by the next line: a terminal overwrites it

EVERY_S = 10.0
# Libraries that log every step at INFO (GX: ~300 lines per run): WARNING and above only.
NOISY_LIBRARIES = ("py4j", "mlflow", "great_expectations", "alembic", "urllib3", "httpx", "cloudpickle")
_last_report = [0.0]  # monotonic time of the last progress line, any thread


def duration(seconds: float) -> str:
    """12.3 s, 4 min 05 s, 1 h 02 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def eta(done: float, total: float, elapsed: float) -> str:
    """Time left at the rate so far; "?" before any work is done."""
    if done <= 0 or elapsed <= 0:
        return "?"
    return duration(max(total - done, 0) * elapsed / done)


def quiet_libraries() -> None:
    import os

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow sets its own level when imported
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per model download
    for name in NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)


def report(message: str, *args, live: bool = False) -> None:
    """One progress line (and the heartbeat stays quiet for a while). ``live``: a moving figure
    (batches done, time running) that the next line supersedes."""
    _last_report[0] = time.monotonic()
    (live_log if live else log).info(message, *args)


class Ticker:
    """True from ``due()`` at most once per ``every_s``: progress lines from a hot loop."""

    def __init__(self, every_s: float = EVERY_S):
        self.every_s = every_s
        self._next = time.monotonic() + every_s

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.every_s
        return True


@contextmanager
def heartbeat(what: str, detail: Callable[[], str | None] | None = None, every_s: float = EVERY_S) -> Iterator[None]:
    """Say ``what`` is still running every ``every_s`` (with ``detail()`` when it has one), unless
    the work reported its own progress meanwhile. A failing ``detail`` never stops the work."""
    stop = threading.Event()
    started = time.monotonic()

    def beat() -> None:
        while not stop.wait(every_s):
            if time.monotonic() - _last_report[0] < every_s:
                continue
            try:
                extra = detail() if detail else None
            except Exception:  # noqa: BLE001 - a progress probe is best effort
                extra = None
            report("%s: running for %s%s", what, duration(time.monotonic() - started), f" ({extra})" if extra else "", live=True)

    thread = threading.Thread(target=beat, name=f"heartbeat-{what}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=1.0)


# --------------------------------------------------------------------------- a terminal view of a log
# homefeed's own lines in a task log: structlog's "<time> [info     ] message   [homefeed.x] key=…"
# (Airflow), or "message [homefeed.x]" (a torchrun worker).
_OWN_LINE = re.compile(r"^(?:\S+Z\s+)?(?:\[(?P<level>[a-z]+)\s*\]\s+)?(?P<message>.*?)\s+\[(?P<logger>homefeed(?:\.[\w.]+)?)\]")


def own_line(line: str) -> tuple[str, str, bool] | None:
    """(level, message, live) of one of homefeed's own log lines, None for anything else."""
    match = _OWN_LINE.match(line.rsplit("\r", 1)[-1].strip())  # after a progress bar's last \r: the line itself
    if match is None:
        return None
    return match["level"] or "info", match["message"], match["logger"] == live_log.name


def follow(lines: Iterable[str], log_file: TextIO, out: TextIO, verbose: bool = False) -> None:
    """Every line into ``log_file``; to ``out`` only homefeed's own (all with ``verbose``), with
    the time since the start. On a terminal a live line is overwritten by the next one."""
    started, terminal, pending_live = time.monotonic(), out.isatty(), False
    for line in lines:
        log_file.write(line)
        log_file.flush()
        if verbose:
            out.write(line)
            continue
        own = own_line(line)
        if own is None:
            continue
        level, message, live = own
        minutes, seconds = divmod(int(time.monotonic() - started), 60)
        text = f"[{minutes:2d}:{seconds:02d}] {'' if level == 'info' else level.upper() + ': '}{message}"
        if terminal and pending_live:
            out.write("\r\033[K")
        out.write(text if terminal and live else text + "\n")
        pending_live = terminal and live
        out.flush()
    if pending_live:
        out.write("\n")


def run_logged(command: list[str], env: dict[str, str], log_path: Path, out: TextIO, verbose: bool = False) -> int:
    """Run ``command`` with its output followed into ``log_path`` (see ``follow``); its exit status."""
    import subprocess

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log_file, subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
    ) as process:
        follow(process.stdout, log_file, out, verbose)
        return process.wait()
