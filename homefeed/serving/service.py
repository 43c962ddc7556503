"""The ranking service without HTTP: load the served model, build features, score, order.

The FastAPI app (``homefeed.serving.app``) and the closed-loop simulator both rank through
:class:`RankingService`, so what the simulation measures is what the service does.

While an online experiment runs (:mod:`homefeed.experiments`), the service holds the challenger
beside the champion and ranks each user with their arm's model (:mod:`homefeed.arms`); a
challenger that cannot be loaded sends everyone to the champion (arm ``none``) and says why. Every
answer is recorded in the exposure log (:class:`homefeed.event_log.ExposureLog`).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from homefeed import arms, experiments, features, holdout, schema, sequence_store
from homefeed.config import Config
from homefeed.event_log import EventLog, ExposureLog, log_root
from homefeed.registry import NoServableModel, ServedModel, load_served_model  # noqa: F401 - the service's model, re-exported for its users

log = logging.getLogger(__name__)
STORE_CHECK_EVERY_S = 1.0  # how often ranking alone checks that the store still holds what was filled


@dataclass(frozen=True)
class Ranking:
    model_version: str
    holdout: bool
    ranked: list[dict[str, Any]]
    sequence_length: int = 0  # actions the model saw for the user
    sequence_degraded: bool = False  # the store was unreachable: ranked without the user's history
    store_read_s: float = 0.0
    sequence_actions: dict[int, int] = field(default_factory=dict)  # action code → count in the sequence seen
    arm: str = arms.NONE
    experiment: str = ""
    request_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "model_version": self.model_version, "arm": self.arm, "experiment": self.experiment,
                "holdout": self.holdout, "sequence_length": self.sequence_length,
                "sequence_degraded": self.sequence_degraded, "ranked": self.ranked}


@dataclass(frozen=True)
class ExperimentState:
    """The running experiment as this process serves it: the challenger loaded, or why not."""

    experiment: experiments.Experiment | None = None
    challenger: ServedModel | None = None
    error: str = ""  # the challenger could not be loaded: everyone gets the champion

    @property
    def active(self) -> bool:
        return self.experiment is not None and self.challenger is not None


@dataclass(frozen=True)
class History:
    """What a request read of a user's history, and how."""

    history: features.UserHistory | None
    degraded: bool = False
    read_s: float = 0.0


def fill_store(store: sequence_store.SequenceStore, roots: list[str]) -> None:
    """Load each root's action log (the raw log, then the service's own event log) that exists."""
    for root in roots:
        if (Path(root) / schema.ACTIONS).exists():
            bootstrap(store, root)


def compiled(cfg: Config, model: ServedModel, role: str) -> ServedModel:
    """With ``serving.compile``, the model's TransAct compiled and warmed before it serves
    (seconds, said in the log with where its kernels are cached, or why it stays eager)."""
    if cfg.serving.compile:
        from models.compilation import compile_cache_dir

        outcome = model.scorer.compile(compile_cache_dir(cfg.storage.root))
        log.info("%s", outcome.describe(f"{role} v{model.version}"))
    return model


def with_snapshot_pins(model: ServedModel, snapshot: features.FeatureSnapshot, role: str) -> ServedModel:
    """The model with the snapshot's pins newer than its training in its pin table (said in the log)."""
    added = features.add_snapshot_pins(model, snapshot)
    if added:
        log.info("%s v%s: %d pins newer than its training read with their %s vectors", role, model.version, added,
                 "projected content" if model.pin_vectors is not None else "content")
    return model


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
                 events: EventLog | None = None, exposures: ExposureLog | None = None):
        self.model, self.snapshot, self.store, self.position, self.events = model, snapshot, store, position, events
        with_snapshot_pins(model, snapshot, "model")
        self.exposures = exposures
        self.experiment = ExperimentState()
        self.challenger_load_failures = 0
        self.reload_error = ""  # the last reload's failure (the loaded version keeps serving), for /ready
        self.store_sources: list[str] = []  # the logs that refill a store rebuilt from nothing
        self.store_rebuilds = 0
        self._store_checked = time.monotonic()
        self._store_lock = threading.Lock()
        self._lock = threading.Lock()

    @classmethod
    def from_registry(cls, cfg: Config) -> "RankingService":
        """The champion, its snapshot, the configured store (filled from the log) and the event log."""
        model = compiled(cfg, load_served_model(cfg, cfg.serving.alias), cfg.serving.alias)
        raw_root = cfg.serving.features_root or model.raw_root
        snapshot = features.FeatureSnapshot.load(raw_root)
        store = sequence_store.open_configured(cfg, snapshot, model.seq_len)
        root = log_root(cfg.serving.event_log, cfg.storage.root)
        events = EventLog(root, cfg.serving.event_log_roll_events)  # a dead writer's journal is published first…
        if events.recovered:
            log.info("event log: %d events of a previous run published from its journal", events.recovered)
        sources = [raw_root, str(root)] if cfg.serving.bootstrap else []
        fill_store(store, sources)  # …so a store rebuilt from nothing holds every event ever acknowledged
        exposures = ExposureLog(root, cfg.serving.event_log_roll_events)
        if exposures.recovered:
            log.info("exposure log: %d answers of a previous run published from its journal", exposures.recovered)
        service = cls(model, snapshot, store, cfg.serving.position, events, exposures)
        service.store_sources = sources
        service.follow_experiment(cfg)
        return service

    def ensure_store(self) -> bool:
        """Reopen and refill a store lost under the service (its SQLite file deleted or replaced, its
        Redis server restarted empty); True when it was (counted in ``store_rebuilds``). Called before
        each append, on /ready, and at most once a second from ranking."""
        self._store_checked = time.monotonic()
        if not self.store.replaced():
            return False
        with self._store_lock:
            if not self.store.replaced():
                return False
            log.error("sequence store %s lost what it held while serving: reopening it and reloading the logs", self.store.describe())
            self.store.reopen()
            fill_store(self.store, self.store_sources)
            if self.events is not None:  # acknowledged by this process, not yet rolled into the log's parts
                self.store.extend([(e["user_id"], features.make_event(self.snapshot, e["pin_id"], e["action"], e["ts"]))
                                   for e in self.events.pending()])
            self.store_rebuilds += 1
        return True

    def follow_experiment(self, cfg: Config) -> bool:
        """Load, keep or drop the challenger as the registry's running experiment says; True on a change."""
        experiment = experiments.running(cfg)
        current = self.experiment
        if experiment == current.experiment and (experiment is None or current.challenger is not None):
            return False
        if experiment is None:
            state = ExperimentState()
            log.info("experiment %s ended: every user is served the champion", current.experiment.name if current.experiment else "")
        else:
            state = self._load_challenger(cfg, experiment, current)
        with self._lock:
            self.experiment = state
        return True

    def _load_challenger(self, cfg: Config, experiment: experiments.Experiment, current: ExperimentState) -> ExperimentState:
        if current.challenger is not None and current.challenger.version == experiment.challenger_version:
            return ExperimentState(experiment, current.challenger)
        from homefeed import registry

        try:
            challenger = with_snapshot_pins(compiled(cfg, registry.load_served_version(cfg, experiment.challenger_version), "challenger"),
                                            self.snapshot, "challenger")
        except Exception as exc:  # noqa: BLE001 - any failure: the champion serves everyone, said and counted
            self.challenger_load_failures += 1
            error = f"challenger v{experiment.challenger_version} of experiment {experiment.name} not loaded ({type(exc).__name__}: {exc})"
            if error != current.error:
                log.warning("%s: every user gets the champion (arm none)", error)
            return ExperimentState(experiment, None, error)
        log.info("experiment %s: v%s (treatment) beside champion v%s (control), traffic %.0f%%",
                 experiment.name, challenger.version, self.model.version, 100 * experiment.traffic)
        return ExperimentState(experiment, challenger)

    def reload(self, cfg: Config) -> bool:
        """Swap in the version the alias points at now and follow the running experiment; True
        when either changed. Histories are kept."""
        from homefeed import registry

        experiment_changed = self.follow_experiment(cfg)
        if registry.alias_version(cfg, cfg.serving.alias) == self.model.version:
            return experiment_changed
        model = compiled(cfg, load_served_model(cfg, cfg.serving.alias), cfg.serving.alias)  # the old one serves meanwhile
        root = cfg.serving.features_root or model.raw_root
        if root != (cfg.serving.features_root or self.model.raw_root):
            self.use_snapshot(features.FeatureSnapshot.load(root))
        with_snapshot_pins(model, self.snapshot, cfg.serving.alias)
        with self._lock:
            self.model = model
        return True

    def use_snapshot(self, snapshot: features.FeatureSnapshot) -> None:
        """Serve with a newer pins/users snapshot (a new day's pins); histories are kept."""
        with_snapshot_pins(self.model, snapshot, "model")
        if self.experiment.challenger is not None:
            with_snapshot_pins(self.experiment.challenger, snapshot, "challenger")
        with self._lock:
            self.snapshot = snapshot
            self.store.snapshot = snapshot

    def close(self) -> None:
        """Publish the event and exposure journals and close the store."""
        if self.events is not None:
            self.events.close()
        if self.exposures is not None:
            self.exposures.close()
        self.store.close()

    def is_holdout(self, user_id: int) -> bool:
        return holdout.is_holdout(user_id, self.model.holdout_fraction, self.model.holdout_salt)

    def arm(self, user_id: int, state: ExperimentState | None = None) -> str:
        """``holdout``, ``control``, ``treatment`` or ``none`` (no experiment, outside it, or no challenger)."""
        state = state or self.experiment
        if state.experiment is None:
            return arms.HOLDOUT if self.is_holdout(user_id) else arms.NONE
        arm = state.experiment.arm(user_id)
        return arm if state.active or arm == arms.HOLDOUT else arms.NONE

    def record_event(self, user_id: int, pin_id: int, action: str, ts: int) -> bool:
        """Log, then store; True when the store did not hold it yet. Raises when either fails: the
        caller does not acknowledge it, and its retry is de-duplicated by the store and the log."""
        return self.record_events([(user_id, pin_id, action, ts)]) == 1

    def record_events(self, events: list[tuple[int, int, str, int]]) -> int:
        """Many (user, pin, action, ts) at once: the log, then one store transaction; the number new."""
        self.ensure_store()
        if self.events is not None:  # journal first: an event the log refused is never visible to the model
            for user_id, pin_id, action, ts in events:
                self.events.append(user_id, pin_id, action, ts)
        return self.store.extend([(int(u), features.make_event(self.snapshot, p, a, t)) for u, p, a, t in events])

    def history(self, user_id: int, sequence: list[dict] | None = None) -> History:
        """The request's explicit sequence, else the store's; an unreachable store gives none, flagged."""
        if sequence is not None:
            return History(features.history_from_events(self.snapshot, sequence, self.model.seq_len))
        started = time.perf_counter()
        try:
            if time.monotonic() - self._store_checked >= STORE_CHECK_EVERY_S:
                self.ensure_store()  # a store lost under a service that only ranks is noticed too
            history = self.store.history(user_id)
        except sequence_store.SequenceStoreUnavailable as exc:
            log.warning("ranking user %d without a sequence: %s", user_id, exc)
            return History(None, True, time.perf_counter() - started)
        return History(history, False, time.perf_counter() - started)

    def score(self, user_id: int, request_ts: int, candidates: list[features.Candidate], sequence: list[dict] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(per-head probabilities (N, H), utility scores (N,)) for the candidates, in input order."""
        with self._lock:
            model = self.model
        probs, utility, _ = self._score(model, user_id, request_ts, candidates, self.history(user_id, sequence))
        return probs, utility

    def _score(self, model: ServedModel, user_id: int, request_ts: int, candidates: list[features.Candidate],
               read: History) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """(probabilities, utilities, the action codes of the sequence the model saw)."""
        with self._lock:
            snapshot = self.snapshot
        probs, utility, rows = features.score_candidates(model, snapshot, read.history, user_id, request_ts, candidates)
        return probs, utility, rows[0][schema.SEQ_ACTION] if rows else []

    def rank(self, user_id: int, request_ts: int, candidates: list[features.Candidate], sequence: list[dict] | None = None) -> Ranking:
        """Model order by utility (the arm's model); holdout users get reverse-chronological order
        (still scored, for logging). Recorded in the exposure log before it is returned."""
        candidates = [features.Candidate(c.pin_id, c.ts, c.source, self.position) for c in candidates]
        with self._lock:
            state, champion = self.experiment, self.model
        arm = self.arm(user_id, state)
        model = state.challenger if arm == arms.TREATMENT else champion
        read = self.history(user_id, sequence)
        probs, utility, seen = self._score(model, user_id, request_ts, candidates, read)
        held_out = arm == arms.HOLDOUT
        if held_out:
            order = sorted(range(len(candidates)), key=lambda i: (-candidates[i].ts, i))
        else:
            order = sorted(range(len(candidates)), key=lambda i: (-utility[i], i))
        ranked = [
            {"pin_id": candidates[i].pin_id, "score": float(utility[i]),
             "scores": {h: float(probs[i, j]) for j, h in enumerate(schema.HEADS)}}
            for i in order
        ]
        experiment = state.experiment.name if state.experiment is not None else ""
        ranking = Ranking(model.version, held_out, ranked, len(seen), read.degraded, read.read_s, dict(Counter(seen)),
                          arm, experiment, uuid.uuid4().hex)
        if self.exposures is not None:  # journaled before the answer leaves: an acknowledged answer is never lost
            self.exposures.append(ranking.request_id, user_id, request_ts, arm, experiment, model.version,
                                  [r["pin_id"] for r in ranked], [r["score"] for r in ranked])
        return ranking
