"""The service's append-only log of the events it acknowledged, in the raw contract's ``actions`` form.

Served feeds lead to actions, and actions are the next training data: every event ``POST /events``
acknowledges is kept here, laid out as a raw root's ``actions`` table
(``<log>/actions/dt=YYYY-MM-DD/part-*.parquet``), so a retraining or ``homefeed sequences load``
can read it as it reads any raw log.

Writing one Parquet file per event would be absurd, and buffering in memory loses what a crash
catches in the buffer. So each process appends JSON lines to its own journal under ``_journal/``
(written and flushed before the event is acknowledged: a killed service loses nothing the kernel
holds) and rolls it into Parquet parts, published atomically, every ``roll_events`` events, on a
clean stop, and, for the journals of processes that died, on the next start. A process holds an
exclusive ``flock`` on its journal, so a journal nobody holds belongs to a dead writer; a part is
named after its journal, so rolling one twice (a crash between publishing and deleting) rewrites
the same part instead of duplicating it.

The same journal publishes the **exposure log** (:class:`ExposureLog`): every ``/rank`` answer,
with its arm, experiment, model version and the served pins with their positions and scores, as
``<log>/served/dt=YYYY-MM-DD/part-*.parquet`` (journal under ``served/_journal/``). An online
experiment's readout counts it as exposure (``jobs/experiment_readout.py``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from homefeed import schema

log = logging.getLogger(__name__)
JOURNAL_DIR = "_journal"
SERVED = "served"
# One row per answered /rank request; positions are the list index (0 = top of the feed).
SERVED_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("user_id", pa.int64()), ("ts", pa.int64()), ("arm", pa.string()),
    ("experiment", pa.string()), ("model_version", pa.string()),
    ("pin_ids", pa.list_(pa.int64())), ("scores", pa.list_(pa.float64())),
])


class EventLogError(RuntimeError):
    """The log cannot be written (disk full, permissions): the event is not acknowledged."""


def log_root(event_log: str, storage_root: str) -> Path:
    """``serving.event_log``, or ``<storage root>/events`` when it is empty."""
    return Path(event_log) if event_log else Path(storage_root) / "events"


def _dt(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d")


def _read_journal(path: Path) -> list[dict]:
    """Complete lines only: a line cut by a crash was never acknowledged."""
    events = []
    for line in path.read_bytes().split(b"\n"):
        if not line:
            continue
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


@dataclass(frozen=True)
class Table:
    """A journaled table: where its parts go, their schema, and the key a retried record repeats."""

    name: str
    schema: pa.Schema
    key: tuple[str, ...]
    journal: str  # the journal folder, relative to the log root

    def directory(self, root: Path) -> Path:
        return root / self.name


ACTIONS_TABLE = Table(schema.ACTIONS, schema.arrow_schema(schema.ACTIONS, with_dt=False), schema.RAW_KEYS[schema.ACTIONS], JOURNAL_DIR)
SERVED_TABLE = Table(SERVED, SERVED_SCHEMA, ("request_id",), f"{SERVED}/{JOURNAL_DIR}")


QUARANTINE_DIR = "_quarantine"


def _conforms(records: list[Any], table: Table) -> bool:
    """Every record is one the table's schema takes (every column, each of its type)."""
    try:
        if any(not isinstance(r, dict) or set(r) != set(table.schema.names) for r in records):
            return False
        pa.Table.from_pylist(records, schema=table.schema)
        for record in records:
            _dt(record["ts"])
    except (pa.ArrowException, TypeError, ValueError, OverflowError, OSError):
        return False
    return True


def _quarantine(root: Path, journal: Path, table: Table, bad: list[Any]) -> None:
    """Lines no writer of this code produced (a damaged or foreign journal): moved aside, said once."""
    directory = root / table.journal / QUARANTINE_DIR
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f"{journal.stem}.jsonl", "a") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in bad)
    log.warning("%s log: %d invalid journal line(s) of %s quarantined in %s; the rest is published",
                table.name, len(bad), journal.name, directory)


def roll_journal(root: Path, journal: Path, table: Table = ACTIONS_TABLE) -> int:
    """Publish the journal's records as Parquet parts (one per dt), then delete it; the count.
    Records the schema does not take are quarantined, never published and never fatal."""
    lines = _read_journal(journal)
    good, bad = lines, []
    if not _conforms(lines, table):  # the whole journal at once first; line by line only when it fails
        verdicts = [_conforms([e], table) for e in lines]
        good = [e for e, ok in zip(lines, verdicts) if ok]
        bad = [e for e, ok in zip(lines, verdicts) if not ok]
    if bad:
        _quarantine(root, journal, table, bad)
    records = list({tuple(e[k] for k in table.key): e for e in good}.values())
    by_dt: dict[str, list[dict]] = {}
    for record in records:  # a retried record appears once
        by_dt.setdefault(_dt(record["ts"]), []).append(record)
    for dt, rows in sorted(by_dt.items()):
        directory = table.directory(root) / f"{schema.DT}={dt}"
        directory.mkdir(parents=True, exist_ok=True)
        part = directory / f"part-{journal.stem}.parquet"
        staging = directory / f".{part.name}.{uuid.uuid4().hex}.tmp"
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), staging)
        os.replace(staging, part)  # readers see the whole part or none of it
    journal.unlink(missing_ok=True)
    return len(records)


def recover(root: Path, table: Table = ACTIONS_TABLE) -> int:
    """Roll the journals no live process holds (their writers died); the records recovered."""
    recovered = 0
    for journal in sorted((root / table.journal).glob("*.jsonl")):
        with open(journal, "ab") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer's
            recovered += roll_journal(root, journal, table)
    return recovered


def read_events(root: str | Path) -> pa.Table:
    """Every published event (rolled parts only), as the raw ``actions`` table."""
    files = sorted(Path(root, schema.ACTIONS).glob(f"{schema.DT}=*/part-*.parquet"))
    if not files:
        return schema.arrow_schema(schema.ACTIONS, with_dt=False).empty_table()
    return pa.concat_tables(pq.read_table(f, columns=list(schema.columns(schema.ACTIONS))) for f in files)


def read_served(root: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Every published exposure (rolled parts only); ``columns``: only these (the pin lists are the bulk)."""
    files = sorted(Path(root, SERVED).glob(f"{schema.DT}=*/part-*.parquet"))
    if not files:
        return SERVED_SCHEMA.empty_table().select(columns or SERVED_SCHEMA.names)
    return pa.concat_tables(pq.read_table(f, schema=SERVED_SCHEMA, columns=columns) for f in files)


class JournaledLog:
    """This process's journal of one table; thread-safe. ``close()`` publishes what it holds."""

    def __init__(self, root: str | Path, table: Table, roll_records: int = 10_000, roll_in_background: bool = False):
        self.root, self.table, self.roll_records = Path(root), table, roll_records
        # Rolling 10,000 answers of 500 pins into Parquet takes seconds: off the request's path,
        # in a thread that holds the journal's lock until its part is published.
        self.roll_in_background = roll_in_background
        self._rolling: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.recovered = recover(self.root, table) if (self.root / table.journal).exists() else 0
        self._handle = None
        self._count = 0

    def _open(self) -> None:
        journal_dir = self.root / self.table.journal
        journal_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        self._handle = open(journal_dir / f"{stamp}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl", "ab")
        fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._count = 0

    def write(self, record: dict) -> None:
        """Journal one record (written and flushed before this returns), rolling when due."""
        line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            try:
                if self._handle is None:
                    self._open()
                self._handle.write(line)
                self._handle.flush()
                self._count += 1
                if self._count >= self.roll_records:
                    self._roll(background=self.roll_in_background)
            except OSError as exc:
                raise EventLogError(f"{self.table.name} log at {self.root}: {exc}") from exc

    def pending(self) -> list[dict]:
        """The records this process journaled and has not published yet."""
        with self._lock:
            if self._handle is None:
                return []
            self._handle.flush()
            return [r for r in _read_journal(Path(self._handle.name)) if _conforms([r], self.table)]

    def _roll(self, background: bool = False) -> None:
        handle, self._handle = self._handle, None
        if handle is None:
            return
        if background:
            self._rolling = [t for t in self._rolling if t.is_alive()]
            thread = threading.Thread(target=self._publish, args=(handle,), name=f"roll-{self.table.name}", daemon=True)
            thread.start()
            self._rolling.append(thread)
        else:
            self._publish(handle)

    def _publish(self, handle) -> None:
        try:
            roll_journal(self.root, Path(handle.name), self.table)  # still under its lock: no recovery races it
        finally:
            handle.close()

    def close(self) -> None:
        with self._lock:
            self._roll()
            for thread in self._rolling:
                thread.join()
            self._rolling = []


class EventLog(JournaledLog):
    """The acknowledged events, as the raw ``actions`` table."""

    def __init__(self, root: str | Path, roll_events: int = 10_000):
        super().__init__(root, ACTIONS_TABLE, roll_events)

    def append(self, user_id: int, pin_id: int, action: str, ts: int) -> None:
        self.write({"user_id": int(user_id), "pin_id": int(pin_id), "ts": int(ts), "action": action})


class ExposureLog(JournaledLog):
    """What the service answered to each ``/rank``: who got which model's feed, in which arm."""

    def __init__(self, root: str | Path, roll_requests: int = 10_000):
        super().__init__(root, SERVED_TABLE, roll_requests, roll_in_background=True)

    def append(self, request_id: str, user_id: int, ts: int, arm: str, experiment: str, model_version: str,
               pin_ids: list[int], scores: list[float]) -> None:
        self.write({"request_id": request_id, "user_id": int(user_id), "ts": int(ts), "arm": arm, "experiment": experiment,
                    "model_version": model_version, "pin_ids": pin_ids, "scores": scores})
