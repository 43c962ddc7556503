"""The ranking service without HTTP: load the served model, build features, score, order.

The FastAPI app (``homefeed.serving.app``) and the closed-loop simulator both rank through
:class:`RankingService`, so what the simulation measures is what the service does.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from homefeed import features, holdout, schema
from homefeed.config import Config
from homefeed.errors import PermanentError
from homefeed.metrics import ranking_utility


class NoServableModel(PermanentError, RuntimeError):
    """No model behind the alias, or one logged without what serving needs."""


@dataclass(frozen=True)
class ServedModel:
    """A registered version with everything needed to score it online."""

    version: str
    scorer: Any  # models.zoo.Scorer
    utility: dict[str, float]
    feature_stats: dict[str, dict[str, float]]
    delay_ms: int
    seq_len: int
    raw_root: str
    holdout_fraction: float
    holdout_salt: str


def load_served_model(cfg: Config, alias: str) -> ServedModel:
    """``models:/<name>@alias`` from the registry, with its feature spec and holdout tags."""
    import mlflow.pyfunc

    from homefeed import registry

    version = registry.alias_version(cfg, alias)
    if version is None:
        raise NoServableModel(
            f"no version of {cfg.registry.model_name!r} has the alias {alias!r} in {registry.tracking_uri(cfg)}; "
            "run the pipeline (`homefeed run`) or promote a version: `homefeed promote --version N --reason '…'`"
        )
    python_model = mlflow.pyfunc.load_model(f"models:/{cfg.registry.model_name}@{alias}").unwrap_python_model()
    spec = getattr(python_model, "features", None)
    if not spec:
        raise NoServableModel(
            f"{cfg.registry.model_name} v{version} was logged without its serving feature spec "
            "(serving_features.json); retrain and promote a newer version"
        )
    tags = registry.client(cfg).get_model_version(cfg.registry.model_name, version).tags
    missing = [t for t in registry.HOLDOUT_TAGS if t not in tags]
    if missing:
        raise NoServableModel(f"{cfg.registry.model_name} v{version} has no holdout configuration (tags {missing})")
    return ServedModel(
        version=version, scorer=python_model.scorer, utility=python_model.utility,
        feature_stats=spec["feature_stats"], delay_ms=int(spec["delay_ms"]), seq_len=int(spec["seq_len"]),
        raw_root=spec["raw_root"], holdout_fraction=float(tags["holdout.fraction"]), holdout_salt=tags["holdout.salt"],
    )


@dataclass(frozen=True)
class Ranking:
    model_version: str
    holdout: bool
    ranked: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"model_version": self.model_version, "holdout": self.holdout, "ranked": self.ranked}


class RankingService:
    """One served model, its feature snapshot and the sequence store; safe to reload while serving."""

    def __init__(self, model: ServedModel, snapshot: features.FeatureSnapshot, store: features.SequenceStore, position: int = 0):
        self.model, self.snapshot, self.store, self.position = model, snapshot, store, position
        self._lock = threading.Lock()

    @classmethod
    def from_registry(cls, cfg: Config) -> "RankingService":
        model = load_served_model(cfg, cfg.serving.alias)
        snapshot = features.FeatureSnapshot.load(cfg.serving.features_root or model.raw_root)
        return cls(model, snapshot, features.InMemorySequenceStore(snapshot, model.seq_len), cfg.serving.position)

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
            if isinstance(self.store, features.InMemorySequenceStore):
                self.store.snapshot = snapshot

    def is_holdout(self, user_id: int) -> bool:
        return holdout.is_holdout(user_id, self.model.holdout_fraction, self.model.holdout_salt)

    def record_event(self, user_id: int, pin_id: int, action: str, ts: int) -> None:
        self.store.append(user_id, pin_id, action, ts)

    def score(self, user_id: int, request_ts: int, candidates: list[features.Candidate], sequence: list[dict] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(per-head probabilities (N, H), utility scores (N,)) for the candidates, in input order."""
        with self._lock:
            model, snapshot = self.model, self.snapshot
        if sequence is None:
            history = self.store.history(user_id)
        else:
            history = features.history_from_events(snapshot, sequence, model.seq_len)
        rows = features.raw_rows(snapshot, history, user_id, request_ts, candidates, model.delay_ms, model.seq_len)
        probs = model.scorer.predict(features.instance_table(rows, model.feature_stats))
        return probs, ranking_utility(probs, schema.HEADS, model.utility)

    def rank(self, user_id: int, request_ts: int, candidates: list[features.Candidate], sequence: list[dict] | None = None) -> Ranking:
        """Model order by utility; holdout users get reverse-chronological order (still scored, for logging)."""
        candidates = [features.Candidate(c.pin_id, c.ts, c.source, self.position) for c in candidates]
        probs, utility = self.score(user_id, request_ts, candidates, sequence)
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
        return Ranking(self.model.version, held_out, ranked)
