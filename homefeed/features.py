"""Online features: the instance row for one (user, candidate, request time), without Spark.

The Spark job (``jobs/build_instances.py``) computes the same columns over whole logs; this module
computes them for one request from a feature snapshot and a user's event history, so the service
and the closed-loop simulator score exactly what the model was trained on. The rules both follow:

- the sequence holds the actions strictly before ``request_ts - delay_ms``, newest first, ordered
  by (ts, pin_id, action code) like the job's window, truncated to ``seq_len``;
- interaction counts (``user_prior_actions``, positives on the candidate's category / owner) count
  the same actions;
- counts get ``log1p`` (negatives and nulls → 0), then every dense feature is standardised with the
  training window's statistics (``feature_stats`` of the instances manifest; nulls → the mean);
- categoricals: unknown → 0. Unknown pins and users (cold start) take exactly these defaults.

``tests/homefeed/test_features.py`` proves equality with the Spark job's rows for the same events.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from homefeed import schema, storage
from homefeed.embeddings import PinVectors, list_column
from homefeed.errors import PermanentError

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
POSITIVE_CODES = frozenset(schema.ACTION_CODES[a] for a in schema.POSITIVE_ACTIONS)


class FeatureSnapshotMissing(PermanentError, FileNotFoundError):
    """No pins/users snapshot where the champion's instances were built from."""


# --------------------------------------------------------------------------- the snapshot
def _latest_partition(table_dir: Path) -> Path:
    partitions = sorted(p for p in table_dir.glob(f"{schema.DT}=*") if p.is_dir())
    if not partitions:
        raise FeatureSnapshotMissing(f"no {schema.DT}=… snapshot under {table_dir}")
    return partitions[-1]


def _read_partition(directory: Path) -> pa.Table:
    files = storage.list_files(directory)
    if not files:
        raise FeatureSnapshotMissing(f"no Parquet files under {directory}")
    return pa.concat_tables(pq.ParquetFile(f).read() for f in files)


@dataclass
class FeatureSnapshot:
    """The latest pins and users snapshot of a raw root, indexed by id."""

    pins: dict[int, dict]
    users: dict[int, dict]
    pin_snapshot_dt: str = ""
    user_snapshot_dt: str = ""

    @classmethod
    def load(cls, raw_root: str | Path) -> "FeatureSnapshot":
        root = storage.local_path(raw_root)
        pins_dir, users_dir = _latest_partition(root / schema.PINS), _latest_partition(root / schema.USERS)
        pins = _read_partition(pins_dir).to_pylist()
        users = _read_partition(users_dir).to_pylist()
        return cls(
            pins={int(p["pin_id"]): p for p in pins},
            users={int(u["user_id"]): u for u in users},
            pin_snapshot_dt=pins_dir.name.split("=", 1)[1],
            user_snapshot_dt=users_dir.name.split("=", 1)[1],
        )

    def content_vectors(self, pin_ids: np.ndarray) -> np.ndarray:
        """(N, D) float32: each pin's content vector, zeros for a pin the snapshot lacks (as the
        job's left join gives)."""
        dim = next((len(p["embedding"]) for p in self.pins.values() if p.get("embedding") is not None), schema.EMBEDDING_DIM)
        vectors = [(self.pins.get(int(i)) or {}).get("embedding") or [0.0] * dim for i in pin_ids]
        return np.asarray(vectors, dtype=np.float32).reshape(len(vectors), dim)

    def pin_keys(self, pin_id: int) -> tuple[int | None, int | None]:
        """(category, owner_id) of a pin; (None, None) when unknown, as the job's left join gives."""
        pin = self.pins.get(int(pin_id))
        return (None, None) if pin is None else (pin["category"], pin["owner_id"])


# --------------------------------------------------------------------------- user histories
@dataclass(frozen=True, order=True)
class Event:
    ts: int
    pin_id: int
    action_code: int
    category: int | None = field(compare=False, default=None)
    owner_id: int | None = field(compare=False, default=None)


@dataclass
class UserHistory:
    """A user's newest events (sorted oldest → newest) and the counts of the events evicted before them.

    Exact as long as fewer than ``keep`` events are newer than any request's cut-off (the delay
    is seconds; ``keep`` is the sequence length plus a margin).
    """

    keep: int
    events: list[Event] = field(default_factory=list)
    evicted_total: int = 0
    evicted_category: Counter = field(default_factory=Counter)
    evicted_owner: Counter = field(default_factory=Counter)

    def add(self, event: Event) -> bool:
        """Insert in order; False for an event already held (the same ts, pin and action).

        The raw contract keys actions by (user, pin, ts, action), so a repeat is a retry or a
        re-load, never a second action. An event older than every kept one is still counted (it
        is inserted, then evicted at once), as the Spark job counts a late action.
        """
        at = bisect.bisect_left(self.events, event)
        if at < len(self.events) and self.events[at] == event:
            return False
        self.events.insert(at, event)
        while len(self.events) > self.keep:
            old = self.events.pop(0)
            self.evicted_total += 1
            if old.action_code in POSITIVE_CODES:
                self.evicted_category[old.category] += 1
                self.evicted_owner[old.owner_id] += 1
        return True

    def before(self, cutoff_ts: int) -> list[Event]:
        """Events strictly before the cut-off, oldest first."""
        return self.events[: bisect.bisect_left([e.ts for e in self.events], cutoff_ts)]


def make_event(snapshot: FeatureSnapshot, pin_id: int, action: str, ts: int) -> Event:
    """An action as stores keep it, with the pin's category and owner as of the snapshot."""
    if action not in schema.ACTION_CODES:
        raise ValueError(f"unknown action {action!r}; expected one of {list(schema.ACTION_NAMES)}")
    category, owner = snapshot.pin_keys(pin_id)
    return Event(int(ts), int(pin_id), schema.ACTION_CODES[action], category, owner)


class InMemorySequenceStore:
    """Histories in a dict, for tests and one-off replays; the service uses a durable store
    (:mod:`homefeed.sequence_store`), which follows the same rules."""

    def __init__(self, snapshot: FeatureSnapshot, seq_len: int = schema.SEQ_LEN, margin: int = 100):
        self.snapshot, self.keep = snapshot, seq_len + margin
        self.users: dict[int, UserHistory] = {}
        self.sources: dict[str, object] = {}
        # The HTTP service appends and reads from a thread pool; an insert + eviction is not atomic.
        self._lock = threading.Lock()

    def describe(self) -> str:
        return "memory"

    def append(self, user_id: int, pin_id: int, action: str, ts: int) -> bool:
        return self.extend([(int(user_id), make_event(self.snapshot, pin_id, action, ts))]) == 1

    def extend(self, events) -> int:
        added = 0
        with self._lock:
            for user_id, event in events:
                added += self.users.setdefault(int(user_id), UserHistory(self.keep)).add(event)
        return added

    def history(self, user_id: int) -> UserHistory | None:
        """A copy: the caller reads it while other requests keep appending."""
        with self._lock:
            history = self.users.get(int(user_id))
            if history is None:
                return None
            return UserHistory(history.keep, list(history.events), history.evicted_total,
                               Counter(history.evicted_category), Counter(history.evicted_owner))

    def source_state(self, source: str):
        return self.sources.get(source)

    def record_source(self, source: str, state) -> None:
        self.sources[source] = state

    def reset(self) -> None:
        with self._lock:
            self.users.clear()
            self.sources.clear()

    def replaced(self) -> bool:
        return False  # it lives in this process: nothing outside can empty or swap it

    def reopen(self) -> None:
        pass

    def close(self) -> None:
        pass


def history_from_events(snapshot: FeatureSnapshot, events: list[dict], seq_len: int = schema.SEQ_LEN) -> UserHistory:
    """A history from an explicit list of {pin_id, action, ts} (the request's optional sequence)."""
    store = InMemorySequenceStore(snapshot, seq_len, margin=max(len(events), 1))
    for e in events:
        store.append(0, e["pin_id"], e["action"], e["ts"])
    return store.history(0) or UserHistory(store.keep)


# --------------------------------------------------------------------------- one request
@dataclass(frozen=True)
class Candidate:
    pin_id: int
    ts: int
    source: str
    position: int = 0


@dataclass(frozen=True)
class VisibleHistory:
    """What a request may see of a history: the actions before its cut-off, and their counts."""

    newest_first: list[Event]
    prior_actions: int
    positives_by_category: Counter
    positives_by_owner: Counter


def visible_history(history: UserHistory | None, cutoff_ts: int) -> VisibleHistory:
    if history is None:
        return VisibleHistory([], 0, Counter(), Counter())
    visible = history.before(cutoff_ts)
    positive = [e for e in visible if e.action_code in POSITIVE_CODES]
    return VisibleHistory(
        visible[::-1],
        history.evicted_total + len(visible),
        history.evicted_category + Counter(e.category for e in positive),
        history.evicted_owner + Counter(e.owner_id for e in positive),
    )


def _code(value, vocabulary: tuple[str, ...]) -> int:
    return vocabulary.index(value) + 1 if value in vocabulary else 0


def raw_rows(
    snapshot: FeatureSnapshot, history: UserHistory | None, user_id: int, request_ts: int,
    candidates: list[Candidate], delay_ms: int, seq_len: int,
) -> list[dict]:
    """Instance rows before log1p and standardisation, one per candidate."""
    user = snapshot.users.get(int(user_id), {})
    signup = user.get("signup_ts")
    seen = visible_history(history, request_ts - delay_ms)
    newest = seen.newest_first[:seq_len]
    sequence = {
        schema.SEQ_PIN_ID: [e.pin_id for e in newest],
        schema.SEQ_ACTION: [e.action_code for e in newest],
        schema.SEQ_TS: [e.ts for e in newest],
    }
    rows = []
    for c in candidates:
        pin = snapshot.pins.get(int(c.pin_id), {})
        category, owner = snapshot.pin_keys(c.pin_id)
        created = pin.get("created_ts")
        rows.append({
            "user_id": int(user_id), "pin_id": int(c.pin_id), "ts": int(request_ts), "source": c.source, "position": c.position,
            "pin_repin_count": pin.get("repin_count"),
            "pin_click_count": pin.get("click_count"),
            "pin_impression_count": pin.get("impression_count"),
            "pin_age_hours": None if created is None else max((request_ts - created) / HOUR_MS, 0.0),
            "pin_spam_score": pin.get("spam_score"),
            "user_board_count": user.get("board_count"),
            "user_follower_count": user.get("follower_count"),
            "user_pin_count": user.get("pin_count"),
            "user_account_age_days": None if signup is None else max((request_ts - signup) / DAY_MS, 0.0),
            "user_category_engagements": seen.positives_by_category[category],
            "user_owner_engagements": seen.positives_by_owner[owner],
            "user_prior_actions": seen.prior_actions,
            "feed_position": float(c.position),
            "pin_category": (category or 0) % schema.NUM_CATEGORIES,
            "source_id": _code(c.source, schema.SOURCES),
            "user_gender": _code(user.get("gender"), schema.GENDERS),
            schema.PIN_EMBEDDING: list(pin.get("embedding") or [0.0] * schema.EMBEDDING_DIM),
            **sequence,
        })
    return rows


def with_pin_vectors(rows: list[dict], vectors: PinVectors | None) -> None:
    """Each row's candidate vector as the model was trained with it: the learned one, or the
    snapshot's content vector projected for a pin the model's table lacks (a newer pin)."""
    if vectors is None or not rows:
        return
    content = np.asarray([r[schema.PIN_EMBEDDING] for r in rows], dtype=np.float32)
    for row, vector in zip(rows, vectors.lookup(np.array([r["pin_id"] for r in rows]), content)):
        row[schema.PIN_EMBEDDING] = vector.tolist()


def with_vectors_trained_on(table: pa.Table, vectors: PinVectors | None, snapshot: FeatureSnapshot) -> pa.Table:
    """``table``'s candidate vectors (``pin_embedding``) replaced by those a model trained with
    ``vectors`` reads: its learned ones (the snapshot's content vector projected for a pin they
    lack), or with None the snapshot's content vectors; zeros for a pin the snapshot lacks, as the
    job's left join gives. Rows built with another model's vectors are otherwise read in the wrong space."""
    rows = vectors_read_by(vectors, table.column("pin_id").to_numpy().astype(np.int64), snapshot)
    return table.set_column(table.schema.get_field_index(schema.PIN_EMBEDDING), schema.PIN_EMBEDDING, list_column(rows))


def vectors_read_by(vectors: PinVectors | None, pin_ids: np.ndarray, snapshot: FeatureSnapshot) -> np.ndarray:
    """(N, D): the vectors a model trained with ``vectors`` reads for ``pin_ids``: its learned ones
    (the snapshot's content vector projected for a pin they lack), or with None the content vectors."""
    content = snapshot.content_vectors(pin_ids)  # (N, C)
    return vectors.lookup(pin_ids, content) if vectors is not None else content


def add_snapshot_pins(model: Any, snapshot: FeatureSnapshot) -> int:
    """The snapshot's pins that ``model``'s pin table lacks (pins newer than its training), with the
    vectors it reads: learned (its ``pin_vectors``, content projected for a pin they lack) or the
    content vectors. Without this a neural model reads a newer pin as padding. Returns how many."""
    add = getattr(model.scorer, "add_pins", None)
    if add is None or not snapshot.pins:
        return 0
    pin_ids = np.fromiter(snapshot.pins, dtype=np.int64, count=len(snapshot.pins))
    return add(pin_ids, vectors_read_by(getattr(model, "pin_vectors", None), pin_ids, snapshot))


def transform_dense(rows: list[dict], feature_stats: dict[str, dict[str, float]]) -> dict[str, np.ndarray]:
    """log1p on counts, then standardisation: the job's ``log_transform`` + ``standardize``."""
    out = {}
    for name in schema.DENSE_FEATURES:
        values = np.array([np.nan if r[name] is None else float(r[name]) for r in rows], dtype=np.float64)
        if name in schema.LOG1P_FEATURES:
            values = np.log1p(np.maximum(np.nan_to_num(values, nan=0.0), 0.0))
        stats = feature_stats[name]
        values = np.where(np.isnan(values), stats["mean"], values)
        out[name] = ((values - stats["mean"]) / stats["std"]).astype(np.float32)
    return out


def instance_table(rows: list[dict], feature_stats: dict[str, dict[str, float]]) -> pa.Table:
    """Rows → an Arrow table in the instance format every scorer reads."""
    dense = transform_dense(rows, feature_stats)
    columns = {
        "user_id": pa.array([r["user_id"] for r in rows], pa.int64()),
        "pin_id": pa.array([r["pin_id"] for r in rows], pa.int64()),
        "ts": pa.array([r["ts"] for r in rows], pa.int64()),
        "source": pa.array([r["source"] for r in rows], pa.string()),
        "position": pa.array([r["position"] for r in rows], pa.int32()),
        **{name: pa.array(values, pa.float32()) for name, values in dense.items()},
        **{name: pa.array([r[name] for r in rows], pa.int32()) for name in schema.CATEGORICAL_FEATURES},
        schema.PIN_EMBEDDING: pa.array([r[schema.PIN_EMBEDDING] for r in rows], pa.list_(pa.float32())),
        schema.SEQ_PIN_ID: pa.array([r[schema.SEQ_PIN_ID] for r in rows], pa.list_(pa.int64())),
        schema.SEQ_ACTION: pa.array([r[schema.SEQ_ACTION] for r in rows], pa.list_(pa.int32())),
        schema.SEQ_TS: pa.array([r[schema.SEQ_TS] for r in rows], pa.list_(pa.int64())),
    }
    return pa.table(columns)
def score_candidates(model: Any, snapshot: FeatureSnapshot, history: UserHistory | None, user_id: int, request_ts: int,
                     candidates: list[Candidate]) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """The one scoring path of the service and of pool scoring: raw rows → the instance table with
    the model's standardisation → per-head probabilities (N, H) → the feed utility (N,); and the rows.

    ``model``: what a served version carries (``scorer``, ``utility``, ``feature_stats``,
    ``delay_ms``, ``seq_len``, and ``pin_vectors`` when it was trained on learned pin vectors),
    e.g. :class:`homefeed.registry.ServedModel`."""
    from homefeed.metrics import ranking_utility

    rows = raw_rows(snapshot, history, user_id, request_ts, candidates, model.delay_ms, model.seq_len)
    with_pin_vectors(rows, getattr(model, "pin_vectors", None))
    probs = model.scorer.predict(instance_table(rows, model.feature_stats))
    return probs, ranking_utility(probs, schema.HEADS, model.utility), rows


