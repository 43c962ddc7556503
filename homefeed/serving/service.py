"""The ranking service without HTTP: load the served model, build features, score, order.

The FastAPI app (``homefeed.serving.app``) and the closed-loop simulator both rank through
:class:`RankingService`, so what the simulation measures is what the service does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from homefeed import features, holdout, schema, sequence_store
from homefeed.config import Config
from homefeed.event_log import EventLog, log_root
from homefeed.metrics import ranking_utility
from homefeed.registry import NoServableModel, ServedModel, load_served_model  # noqa: F401 - the service's model, re-exported for its users

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranking:
    model_version: str
    holdout: bool
    ranked: list[dict[str, Any]]
    sequence_length: int = 0  # actions the model saw for the user
    sequence_degraded: bool = False  # the store was unreachable: ranked without the user's history
    store_read_s: float = 0.0
    sequence_actions: dict[int, int] = field(default_factory=dict)  # action code → count in the sequence seen

    def to_dict(self) -> dict[str, Any]:
        return {"model_version": self.model_version, "holdout": self.holdout, "sequence_length": self.sequence_length,
                "sequence_degraded": self.sequence_degraded, "ranked": self.ranked}


@dataclass(frozen=True)
class History:
    """What a request read of a user's history, and how."""

    history: features.UserHistory | None
    degraded: bool = False
    read_s: float = 0.0


def bootstrap(store: sequence_store.SequenceStore, raw_root: str) -> None:
    """Load what the store does not hold yet of the raw action log; serve regardless (said loudly)."""
    log.info("sequence store %s: loading the action log of %s", store.describe(), raw_root)
    try:
        totals = sequence_store.load_actions(store, raw_root)
    except (sequence_store.SequenceStoreUnavailable, sequence_store.SequenceLoadError) as exc:
        log.warning("sequence store not bootstrapped, users' histories may be missing: %s", exc)
        return
    log.info("sequence store %s: %d of %d log files were new, %d events added",
             store.describe(), totals["files_loaded"], totals["files"], totals["events_added"])


class RankingService:
    """One served model, its feature snapshot, the sequence store and the event log; safe to reload while serving."""

    def __init__(self, model: ServedModel, snapshot: features.FeatureSnapshot, store, position: int = 0,
                 events: EventLog | None = None):
        self.model, self.snapshot, self.store, self.position, self.events = model, snapshot, store, position, events
        self._lock = threading.Lock()

    @classmethod
    def from_registry(cls, cfg: Config) -> "RankingService":
        """The champion, its snapshot, the configured store (filled from the log) and the event log."""
        model = load_served_model(cfg, cfg.serving.alias)
        raw_root = cfg.serving.features_root or model.raw_root
        snapshot = features.FeatureSnapshot.load(raw_root)
        store = sequence_store.open_configured(cfg, snapshot, model.seq_len)
        if cfg.serving.bootstrap:
            bootstrap(store, raw_root)
        events = EventLog(log_root(cfg.serving.event_log, cfg.storage.root), cfg.serving.event_log_roll_events)
        if events.recovered:
            log.info("event log: %d events of a previous run published from its journal", events.recovered)
        return cls(model, snapshot, store, cfg.serving.position, events)

    def reload(self, cfg: Config) -> bool:
        """Swap in the version the alias points at now; True when it changed. Histories are kept."""
        from homefeed import registry

        if registry.alias_version(cfg, cfg.serving.alias) == self.model.version:
            return False
        model = load_served_model(cfg, cfg.serving.alias)
        root = cfg.serving.features_root or model.raw_root
        if root != (cfg.serving.features_root or self.model.raw_root):
            self.use_snapshot(features.FeatureSnapshot.load(root))
        with self._lock:
            self.model = model
        return True

    def use_snapshot(self, snapshot: features.FeatureSnapshot) -> None:
        """Serve with a newer pins/users snapshot (a new day's pins); histories are kept."""
        with self._lock:
            self.snapshot = snapshot
            self.store.snapshot = snapshot

    def close(self) -> None:
        """Publish the event journal and close the store."""
        if self.events is not None:
            self.events.close()
        self.store.close()

    def is_holdout(self, user_id: int) -> bool:
        return holdout.is_holdout(user_id, self.model.holdout_fraction, self.model.holdout_salt)

    def record_event(self, user_id: int, pin_id: int, action: str, ts: int) -> bool:
        """Store, then log; True when the store did not hold it yet. Raises when either fails: the
        caller does not acknowledge it, and its retry is de-duplicated by the store and the log."""
        added = self.store.append(user_id, pin_id, action, ts)
        if self.events is not None:
            self.events.append(user_id, pin_id, action, ts)
        return added

    def history(self, user_id: int, sequence: list[dict] | None = None) -> History:
        """The request's explicit sequence, else the store's; an unreachable store gives none, flagged."""
        if sequence is not None:
            return History(features.history_from_events(self.snapshot, sequence, self.model.seq_len))
        started = time.perf_counter()
        try:
            history = self.store.history(user_id)
        except sequence_store.SequenceStoreUnavailable as exc:
            log.warning("ranking user %d without a sequence: %s", user_id, exc)
            return History(None, True, time.perf_counter() - started)
        return History(history, False, time.perf_counter() - started)

    def score(self, user_id: int, request_ts: int, candidates: list[features.Candidate], sequence: list[dict] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(per-head probabilities (N, H), utility scores (N,)) for the candidates, in input order."""
        probs, utility, _ = self._score(user_id, request_ts, candidates, self.history(user_id, sequence))
        return probs, utility

    def _score(self, user_id: int, request_ts: int, candidates: list[features.Candidate], read: History) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """(probabilities, utilities, the action codes of the sequence the model saw)."""
        with self._lock:
            model, snapshot = self.model, self.snapshot
        rows = features.raw_rows(snapshot, read.history, user_id, request_ts, candidates, model.delay_ms, model.seq_len)
        probs = model.scorer.predict(features.instance_table(rows, model.feature_stats))
        return probs, ranking_utility(probs, schema.HEADS, model.utility), rows[0][schema.SEQ_ACTION] if rows else []

    def rank(self, user_id: int, request_ts: int, candidates: list[features.Candidate], sequence: list[dict] | None = None) -> Ranking:
        """Model order by utility; holdout users get reverse-chronological order (still scored, for logging)."""
        candidates = [features.Candidate(c.pin_id, c.ts, c.source, self.position) for c in candidates]
        read = self.history(user_id, sequence)
        probs, utility, seen = self._score(user_id, request_ts, candidates, read)
        held_out = self.is_holdout(user_id)
        if held_out:
            order = sorted(range(len(candidates)), key=lambda i: (-candidates[i].ts, i))
        else:
            order = sorted(range(len(candidates)), key=lambda i: (-utility[i], i))
        ranked = [
            {"pin_id": candidates[i].pin_id, "score": float(utility[i]),
             "scores": {h: float(probs[i, j]) for j, h in enumerate(schema.HEADS)}}
            for i in order
        ]
        return Ranking(self.model.version, held_out, ranked, len(seen), read.degraded, read.read_s, dict(Counter(seen)))
