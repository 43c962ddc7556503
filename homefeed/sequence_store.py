"""Where the service keeps each user's realtime action sequence, and how it is filled from the log.

Two stores, one rule set (:class:`homefeed.features.UserHistory`: the newest ``seq_len + margin``
actions of a user, ordered by (ts, pin, action), plus the counts of the actions evicted before
them; an action already held is not added twice):

- :class:`SqliteSequenceStore`, the embedded default (``serving.sequence_store`` empty): one
  SQLite file in WAL mode under the storage root. Chosen over a Redis server that ``homefeed
  serve`` would start itself because a committed transaction survives a crash of the service
  with no second process to supervise, adopt after a crash, or stop; several worker processes
  share it through SQLite's write lock.
- :class:`RedisSequenceStore` (``serving.sequence_store: redis://host:port/db``): per user a sorted
  set of the kept actions and a hash of the evicted counts, changed by one Lua script per event,
  so concurrent appends from several service workers can neither lose nor reorder one.

:func:`load_actions` bootstraps either from a raw root's ``actions`` table, so a user's history at
serve time is the one the instance job computes for a request at that time. Loading is
idempotent: each file is recorded in the store with its content digest and the time it was
loaded up to, and a re-load adds only what is new.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pyarrow.compute as pc
import pyarrow.parquet as pq

from homefeed import schema, storage
from homefeed.config import Config
from homefeed.errors import PermanentError
from homefeed.features import POSITIVE_CODES, Event, FeatureSnapshot, UserHistory, make_event

log = logging.getLogger(__name__)

DEFAULT_FILE = "serving/sequences.sqlite"
LOAD_BATCH = 50_000  # events turned into Python objects and written at once by load_actions


class SequenceStoreUnavailable(RuntimeError):
    """The store cannot be read or written now (server down, disk locked): retry later."""


class SequenceStoreCorrupt(SequenceStoreUnavailable, PermanentError):
    """The store's file is damaged (not a database, malformed): no retry helps; rebuild it."""


def _store_error(store: str, exc: sqlite3.Error) -> SequenceStoreUnavailable:
    text = str(exc)
    if isinstance(exc, sqlite3.DatabaseError) and ("not a database" in text or "malformed" in text):
        return SequenceStoreCorrupt(f"sequence store {store} is damaged ({text}); rebuild it from the logs with "
                                    "`homefeed sequences load --raw RAW --reset` (the damaged file is moved aside, not deleted)")
    return SequenceStoreUnavailable(f"sequence store {store}: {text}")


def move_aside(location: str) -> list[Path]:
    """A damaged SQLite store's files renamed ``*.damaged-<UTC time>``; the paths they now have."""
    if not location.startswith("sqlite:///"):
        return []
    path = Path(location[len("sqlite:///"):])
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    moved = []
    for part in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if part.exists():
            target = part.with_name(f"{part.name}.damaged-{stamp}")
            part.rename(target)
            moved.append(target)
    return moved


class SequenceLoadError(PermanentError, ValueError):
    """A log cannot be loaded as it stands (changed since it was loaded, or missing)."""


@dataclass(frozen=True)
class SourceState:
    """What the store holds of one log file: its digest, and the time loaded up to (None: all)."""

    digest: str
    until: int | None


class SequenceStore(Protocol):
    snapshot: FeatureSnapshot

    def describe(self) -> str: ...

    def append(self, user_id: int, pin_id: int, action: str, ts: int) -> bool: ...

    def extend(self, events: Iterable[tuple[int, Event]]) -> int: ...

    def history(self, user_id: int) -> UserHistory | None: ...

    def source_state(self, source: str) -> SourceState | None: ...

    def record_source(self, source: str, state: SourceState) -> None: ...

    def reset(self) -> None: ...

    def replaced(self) -> bool: ...

    def reopen(self) -> None: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- SQLite (embedded)
def _encode(history: UserHistory) -> str:
    return json.dumps({
        "e": [[e.ts, e.pin_id, e.action_code, e.category, e.owner_id] for e in history.events],
        "t": history.evicted_total,
        "c": list(history.evicted_category.items()),
        "o": list(history.evicted_owner.items()),
    }, separators=(",", ":"))


def _decode(text: str, keep: int) -> UserHistory:
    data = json.loads(text)
    return UserHistory(keep, [Event(*e) for e in data["e"]], data["t"], Counter(dict(map(tuple, data["c"]))),
                       Counter(dict(map(tuple, data["o"]))))


class SqliteSequenceStore:
    """Histories as one JSON row per user in a WAL-mode SQLite file.

    ``synchronous=NORMAL``: a committed event survives a crash of the service (the WAL is in the
    OS's hands); an OS crash or power loss may lose the last second, as Redis' AOF ``everysec``.
    """

    def __init__(self, path: str | Path, snapshot: FeatureSnapshot, seq_len: int = schema.SEQ_LEN, margin: int = 100,
                 timeout_s: float = 10.0):
        self.path, self.snapshot, self.keep = storage.private_file(Path(path)), snapshot, seq_len + margin
        # How long a write waits for another writer's lock (serving.store_timeout_s for the service:
        # a locked file must cost /events a quick 503, not SQLite's default wait).
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._create()

    def _create(self) -> None:
        with self._transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS histories (user_id INTEGER PRIMARY KEY, history TEXT NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS sources (source TEXT PRIMARY KEY, digest TEXT NOT NULL, until INTEGER)")
        self._identity = self._file_identity()

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return None
        return stat.st_dev, stat.st_ino

    def replaced(self) -> bool:
        """The file this store writes is gone or another one (``rm sequences.sqlite*`` while serving):
        writes would land in an unlinked file nobody reads again. One ``stat``: cheap per request."""
        return self._file_identity() != self._identity

    def reopen(self) -> None:
        """Open the file at the path again (created empty when it is gone)."""
        self.close()
        storage.private_file(self.path)
        self._create()

    def describe(self) -> str:
        return f"sqlite:///{self.path}"

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as exc:
                raise _store_error(self.describe(), exc) from exc
            self._local.db = db
            with self._connections_lock:
                self._connections.append(db)
        return db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")  # the write lock first: read-modify-write per user is atomic
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise _store_error(self.describe(), exc) from exc

    def _read(self, db: sqlite3.Connection, user_id: int) -> UserHistory | None:
        row = db.execute("SELECT history FROM histories WHERE user_id = ?", (int(user_id),)).fetchone()
        return None if row is None else _decode(row[0], self.keep)

    def append(self, user_id: int, pin_id: int, action: str, ts: int) -> bool:
        return self.extend([(int(user_id), make_event(self.snapshot, pin_id, action, ts))]) == 1

    def extend(self, events: Iterable[tuple[int, Event]]) -> int:
        """Add many events in one transaction; the number that were new."""
        by_user: dict[int, list[Event]] = defaultdict(list)
        for user_id, event in events:
            by_user[int(user_id)].append(event)
        added = 0
        with self._transaction() as db:
            for user_id, user_events in by_user.items():
                history = self._read(db, user_id) or UserHistory(self.keep)
                fresh = sum(history.add(e) for e in user_events)  # in arrival order, as one by one
                if fresh:
                    db.execute("INSERT OR REPLACE INTO histories VALUES (?, ?)", (user_id, _encode(history)))
                added += fresh
        return added

    def history(self, user_id: int) -> UserHistory | None:
        try:
            return self._read(self._db(), user_id)
        except sqlite3.Error as exc:
            raise SequenceStoreUnavailable(f"sequence store {self.describe()}: {exc}") from exc

    def source_state(self, source: str) -> SourceState | None:
        row = self._db().execute("SELECT digest, until FROM sources WHERE source = ?", (source,)).fetchone()
        return None if row is None else SourceState(row[0], row[1])

    def record_source(self, source: str, state: SourceState) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO sources VALUES (?, ?, ?)", (source, state.digest, state.until))

    def reset(self) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM histories")
            db.execute("DELETE FROM sources")

    def close(self) -> None:
        with self._connections_lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()


# --------------------------------------------------------------------------- Redis
# One event, atomically: skip it when the (ts, pin, action) prefix is held, else add it and evict
# the oldest beyond `keep` into the counts. Members sort as (ts, pin, action) because every score
# is 0 (ties order by bytes) and the numbers are zero-padded to a fixed width.
# KEYS: the user's sorted set, the user's counts hash. ARGV: prefix, member, keep, ",positive,codes,".
APPEND_SCRIPT = r"""
local held = redis.call('ZRANGEBYLEX', KEYS[1], '[' .. ARGV[1], '(' .. ARGV[1] .. '\255', 'LIMIT', 0, 1)
if #held > 0 then return 0 end
redis.call('ZADD', KEYS[1], 0, ARGV[2])
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
if over > 0 then
  local popped = redis.call('ZPOPMIN', KEYS[1], over)
  for i = 1, #popped, 2 do
    local _, _, code, category, owner = string.match(popped[i], '^(%d+)|(%d+)|(%d+)|([^|]*)|([^|]*)$')
    redis.call('HINCRBY', KEYS[2], 't', 1)
    if string.find(ARGV[4], ',' .. tonumber(code) .. ',', 1, true) then
      redis.call('HINCRBY', KEYS[2], 'c:' .. category, 1)
      redis.call('HINCRBY', KEYS[2], 'o:' .. owner, 1)
    end
  end
end
return 1
"""
# A user's kept actions and counts in one consistent read, as two flat strings: one reply of two
# bulk strings parses ~5x faster in redis-py than 200 members and a hash as separate elements.
READ_SCRIPT = r"""#!lua flags=no-writes
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
local counts = redis.call('HGETALL', KEYS[2])
return {table.concat(members, ';'), table.concat(counts, ';')}
"""
KEY_PREFIX = "homefeed:"
MARKER_KEY = f"{KEY_PREFIX}store"  # a token per filling: gone or changed, the server lost what was filled
POSITIVE_ARG = "," + ",".join(str(c) for c in sorted(POSITIVE_CODES)) + ","


def _member_prefix(event: Event) -> str:
    return f"{event.ts:020d}|{event.pin_id:020d}|{event.action_code:03d}|"


def _member(event: Event) -> str:
    blank = lambda v: "" if v is None else str(int(v))  # noqa: E731
    return f"{_member_prefix(event)}{blank(event.category)}|{blank(event.owner_id)}"


def _optional_int(raw: bytes) -> int | None:
    return int(raw) if raw else None


def _parse_member(raw: bytes) -> Event:
    ts, pin, code, category, owner = raw.split(b"|")
    return Event(int(ts), int(pin), int(code), _optional_int(category), _optional_int(owner))


class RedisSequenceStore:
    """Histories on a Redis server; keys ``homefeed:seq:{user}`` and ``homefeed:cnt:{user}``.

    The braces are a cluster hash tag: both keys of a user live on one shard, as the script needs.
    Timeouts are short (``serving.store_timeout_s``) and there is one retry: a request waiting
    on a dead server would otherwise wait for seconds before answering without the sequence.
    """

    def __init__(self, url: str, snapshot: FeatureSnapshot, seq_len: int = schema.SEQ_LEN, margin: int = 100, timeout_s: float = 0.25):
        import redis
        from redis.backoff import ConstantBackoff
        from redis.retry import Retry

        self.url, self.snapshot, self.keep = url, snapshot, seq_len + margin
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                           retry=Retry(ConstantBackoff(0.01), 1))
        self._errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.BusyLoadingError)
        self._append = self._redis.register_script(APPEND_SCRIPT)
        self._read = self._redis.register_script(READ_SCRIPT)
        self._identity: bytes | None = None  # the marker's value this store last filled under
        with contextlib.suppress(SequenceStoreUnavailable):  # a server down now is noticed by replaced() later
            self._mark()

    def _mark(self) -> None:
        """Adopt the server's marker, writing one first where there is none (a fresh or emptied server)."""
        with self._reachable():
            self._redis.set(MARKER_KEY, secrets.token_hex(8), nx=True)
            self._identity = self._redis.get(MARKER_KEY)

    def replaced(self) -> bool:
        """The server lost what this store filled (restarted empty, flushed, reset by another
        process): its marker is gone or another. One GET; False while the server is unreachable,
        which the next read or write reports itself."""
        try:
            with self._reachable():
                return self._redis.get(MARKER_KEY) != self._identity or self._identity is None
        except SequenceStoreUnavailable:
            return False

    def reopen(self) -> None:
        """Mark the (empty) server again; the caller refills it."""
        self._mark()

    def describe(self) -> str:
        return self.url

    @contextlib.contextmanager
    def _reachable(self) -> Iterator[None]:
        try:
            yield
        except self._errors as exc:
            raise SequenceStoreUnavailable(f"sequence store at {self.url} is unreachable: {exc}") from exc

    @staticmethod
    def _keys(user_id: int) -> list[str]:
        return [f"{KEY_PREFIX}seq:{{{int(user_id)}}}", f"{KEY_PREFIX}cnt:{{{int(user_id)}}}"]

    def _args(self, event: Event) -> list:
        return [_member_prefix(event), _member(event), self.keep, POSITIVE_ARG]

    def append(self, user_id: int, pin_id: int, action: str, ts: int) -> bool:
        event = make_event(self.snapshot, pin_id, action, ts)
        with self._reachable():
            return bool(self._append(keys=self._keys(user_id), args=self._args(event)))

    def extend(self, events: Iterable[tuple[int, Event]], batch: int = 2000) -> int:
        """Pipelined appends (one script call per event, in batches); the number that were new."""
        added, pending = 0, 0
        with self._reachable():
            with self._redis.pipeline(transaction=False) as pipe:
                for user_id, event in events:
                    self._append(keys=self._keys(user_id), args=self._args(event), client=pipe)
                    pending += 1
                    if pending == batch:
                        added, pending = added + sum(pipe.execute()), 0
                if pending:
                    added += sum(pipe.execute())
        return added

    def history(self, user_id: int) -> UserHistory | None:
        with self._reachable():
            members, counts = self._read(keys=self._keys(user_id))
        if not members and not counts:
            return None
        fields = counts.split(b";") if counts else []
        by_category, by_owner, total = Counter(), Counter(), 0
        for field, value in zip(fields[::2], fields[1::2]):
            if field.startswith(b"c:"):
                by_category[_optional_int(field[2:])] = int(value)
            elif field.startswith(b"o:"):
                by_owner[_optional_int(field[2:])] = int(value)
            elif field == b"t":
                total = int(value)
        events = [_parse_member(m) for m in members.split(b";")] if members else []
        return UserHistory(self.keep, events, total, by_category, by_owner)

    def source_state(self, source: str) -> SourceState | None:
        with self._reachable():
            raw = self._redis.hget(f"{KEY_PREFIX}sources", source)
        return None if raw is None else SourceState(**json.loads(raw))

    def record_source(self, source: str, state: SourceState) -> None:
        with self._reachable():
            self._redis.hset(f"{KEY_PREFIX}sources", source, json.dumps({"digest": state.digest, "until": state.until}))

    def reset(self) -> None:
        with self._reachable():
            keys = list(self._redis.scan_iter(match=f"{KEY_PREFIX}*", count=1000))
            for start in range(0, len(keys), 1000):
                self._redis.delete(*keys[start : start + 1000])
        self._mark()  # a new marker: a service filled under the old one sees the store emptied

    def close(self) -> None:
        self._redis.close()


# --------------------------------------------------------------------------- choosing one
def store_location(sequence_store: str, storage_root: str) -> str:
    """``serving.sequence_store`` as a URL: empty → the SQLite file under the storage root."""
    if not sequence_store:
        return f"sqlite:///{(Path(storage_root) / DEFAULT_FILE).resolve()}"
    return sequence_store


def open_store(location: str, snapshot: FeatureSnapshot, seq_len: int, margin: int = 100, timeout_s: float = 0.25) -> SequenceStore:
    if location.startswith(("redis://", "rediss://", "unix://")):
        return RedisSequenceStore(location, snapshot, seq_len, margin, timeout_s)
    if location.startswith("sqlite:///"):
        return SqliteSequenceStore(location[len("sqlite:///") :], snapshot, seq_len, margin, timeout_s)
    raise ValueError(f"sequence store {location!r}: expected redis://host:port/db or sqlite:////path (empty: the embedded default)")


def open_configured(cfg: Config, snapshot: FeatureSnapshot, seq_len: int, timeout_s: float | None = None) -> SequenceStore:
    """The store ``serving.*`` names, keeping ``seq_len`` actions (+ the margin) per user; requests
    wait ``serving.store_timeout_s`` (a batch load may pass a longer ``timeout_s``)."""
    location = store_location(cfg.serving.sequence_store, cfg.storage.root)
    return open_store(location, snapshot, seq_len, cfg.serving.sequence_margin, timeout_s or cfg.serving.store_timeout_s)


# --------------------------------------------------------------------------- bootstrap
def load_actions(
    store: SequenceStore, raw_root: str | Path, until: int | None = None,
    progress: Callable[[str], None] = log.info, progress_every_s: float = 5.0,
) -> dict[str, int]:
    """Add the raw root's actions with ``ts < until`` (all when None) to the store, file by file.

    A file already loaded up to ``until`` is skipped; one loaded up to an earlier time adds only
    the rest. A file whose content changed since it was loaded is refused: its evicted actions are
    already counted, so adding it again would count them twice (``--reset`` starts over).
    """
    root = storage.local_path(raw_root)
    files = storage.list_files(root / schema.ACTIONS) if (root / schema.ACTIONS).exists() else []
    if not files:
        raise SequenceLoadError(f"no actions under {root / schema.ACTIONS}: nothing to load the sequence store from")
    totals = {"files": len(files), "files_loaded": 0, "events_read": 0, "events_added": 0}
    started = last_report = time.monotonic()
    for number, path in enumerate(files, 1):
        source = str(path.resolve())  # the full location: /a/raw/actions/… ≠ /b/raw/actions/… (the folder name alone clashed)
        digest, state = storage.file_digest(path), store.source_state(source)
        if state is not None and state.digest != digest:
            raise SequenceLoadError(f"{path} changed since it was loaded into the sequence store; "
                                    "reload everything with `homefeed sequences load --reset`")
        if state is not None and (state.until is None or (until is not None and state.until >= until)):
            continue
        table = pq.read_table(path, columns=list(schema.columns(schema.ACTIONS)))
        mask = None
        if state is not None:
            mask = pc.greater_equal(table["ts"], state.until)
        if until is not None:
            below = pc.less(table["ts"], until)
            mask = below if mask is None else pc.and_(mask, below)
        if mask is not None:
            table = table.filter(mask)
        table = table.sort_by([("ts", "ascending")])
        for at in range(0, table.num_rows, LOAD_BATCH):  # Python objects for one batch at a time
            batch = table.slice(at, LOAD_BATCH)
            events = [(u, make_event(store.snapshot, p, a, t)) for u, p, t, a in
                      zip(*(batch[c].to_pylist() for c in ("user_id", "pin_id", "ts", "action")))]
            totals["events_added"] += store.extend(events)
            totals["events_read"] += len(events)
            if time.monotonic() - last_report >= progress_every_s:
                last_report = _report(progress, totals, number, len(files), started)
        totals["files_loaded"] += 1
        # Recorded once the whole file is in: a load killed mid-file reloads the file, and the
        # events it still holds are not added twice (those already evicted are counted again).
        store.record_source(source, SourceState(digest, until))
        if number == len(files):
            _report(progress, totals, number, len(files), started)
    return totals


def _report(progress: Callable[[str], None], totals: dict[str, int], number: int, files: int, started: float) -> float:
    now = time.monotonic()
    rate = totals["events_read"] / max(now - started, 1e-9)
    progress(f"sequences: file {number}/{files}, {totals['events_read']:,} events read, {totals['events_added']:,} new ({rate:,.0f} events/s)")
    return now
