"""Closed-loop simulation: the champion ranks the simulated users' feeds, they react, and the
platform retrains on what they did.

Each simulated day:

1. the world drifts (:func:`drift_world`): every user's long-term interests move a step towards a
   fresh random draw, and new pins appear (a day's pins snapshot is published with them), so a
   model trained on last week's log really does go stale;
2. requests and candidates are drawn from the simulator's ground truth; each request, in time
   order, is ranked by :class:`homefeed.serving.service.RankingService` (the service's code: the
   champion for treatment users, reverse-chronological for the holdout group), and the user's
   actions are drawn with the positions the feed gave (position lowers engagement); the actions
   go into the service's sequence store as they happen, so later requests see them;
3. the day's impressions and actions are appended to the raw log (one new ``dt`` partition each);
4. every ``retrain_every`` days the retraining stages run on the last ``window_days`` days
   (:func:`homefeed.pipeline.retrain_in_process`); a passing gate promotes, the service reloads.

Before day 1, ``warmup_days`` of chronological feeds are simulated and the first champion is
trained on them. Each day records impressions, repins and hides per impression for treatment
and holdout, and the model version in use.
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from homefeed import features, schema, simulate
from homefeed.config import Config
from homefeed.errors import PermanentError

INTEREST_DRIFT = 0.15  # share of a user's long-term interest replaced per day
NEW_PINS_PER_DAY = 0.03  # new pins per day, as a share of the catalogue


class LoopError(PermanentError, RuntimeError):
    """The loop cannot go on (no first model to serve)."""


@dataclass(frozen=True)
class LoopSettings:
    days: int
    retrain_every: int  # 0: never retrain after the first model
    model: str
    warmup_days: int = 5
    window_days: int = 5
    holdout_fraction: float = 0.2
    impressions_per_day: int = 6000
    users: int = 300


@dataclass
class DayRecord:
    day: str
    model_version: str
    model_age_days: int
    retrained: bool  # a retraining ran at the end of the day and passed its gate (the next day is served by it)
    treatment_impressions: int
    treatment_repins_per_impression: float
    treatment_hides_per_impression: float
    holdout_impressions: int
    holdout_repins_per_impression: float
    holdout_hides_per_impression: float


# --------------------------------------------------------------------------- the world moves
def drift_world(rng: np.random.Generator, world: simulate.World, day_start_ms: int) -> simulate.World:
    """Interest shift and new pins: the ground truth of the next day."""
    n_users = len(world.interests)
    fresh = rng.dirichlet(np.full(simulate.NUM_SIM_CATEGORIES, 0.3), size=n_users)
    interests = (1 - INTEREST_DRIFT) * world.interests + INTEREST_DRIFT * fresh
    n_new = max(1, int(len(world.pins) * NEW_PINS_PER_DAY))
    first_id = int(world.pins["pin_id"].max()) + 1
    category = rng.integers(1, simulate.NUM_SIM_CATEGORIES + 1, size=n_new)
    embedding = world.centroids[category] + 0.5 * rng.normal(size=(n_new, schema.EMBEDDING_DIM))
    embedding /= np.linalg.norm(embedding, axis=1, keepdims=True)
    new_pins = pd.DataFrame({
        "pin_id": np.arange(first_id, first_id + n_new, dtype=np.int64),
        "embedding": list(embedding.astype(np.float32)),
        "created_ts": day_start_ms + rng.integers(0, simulate.DAY_MS // 4, size=n_new),
        "category": category.astype(np.int32),
        "owner_id": rng.integers(1, max(2, len(world.pins) // 5), size=n_new).astype(np.int64),
        "repin_count": np.zeros(n_new, dtype=np.int64),
        "click_count": np.zeros(n_new, dtype=np.int64),
        "impression_count": np.zeros(n_new, dtype=np.int64),
        "spam_score": rng.beta(1.0, 12.0, size=n_new),
    })
    return simulate.World(
        pins=pd.concat([world.pins, new_pins], ignore_index=True),
        quality=np.concatenate([world.quality, rng.normal(0.0, 0.5, size=n_new)]),
        spam=np.concatenate([world.spam, new_pins["spam_score"].to_numpy()]),
        users=world.users, activity=world.activity, interests=interests, disliked=world.disliked, centroids=world.centroids,
    )


# --------------------------------------------------------------------------- the raw log grows
def _append_partition(raw: Path, table: str, frame: pd.DataFrame, day: str, tag: str) -> None:
    """One Parquet file per (table, dt, day written), renamed into place."""
    arrow = pa.Table.from_pandas(frame[list(schema.columns(table))], schema=schema.arrow_schema(table, with_dt=False), preserve_index=False)
    directory = raw / table / f"{schema.DT}={day}"
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".part-{tag}.tmp"
    pq.write_table(arrow, tmp)
    tmp.replace(directory / f"part-{tag}.parquet")


def append_day(raw: Path, day: str, impressions: pd.DataFrame, actions: pd.DataFrame) -> None:
    _append_partition(raw, schema.IMPRESSIONS, impressions, day, f"loop-{day}")
    action_days = simulate._day(actions["ts"]) if len(actions) else np.array([], dtype=str)
    for action_day in sorted(set(action_days)):  # an action can land after midnight
        _append_partition(raw, schema.ACTIONS, actions[action_days == action_day], action_day, f"loop-{day}")


# --------------------------------------------------------------------------- one simulated day
def _order(service, user_id: int, request_ts: int, candidates: list[features.Candidate]) -> list[int]:
    """Candidate indices in feed order: the service's ranking, or chronological without a model."""
    if service is None:
        return sorted(range(len(candidates)), key=lambda i: (-candidates[i].ts, i))
    ranked = service.rank(user_id, request_ts, candidates).ranked
    slot = {}
    for i, c in enumerate(candidates):
        slot.setdefault(c.pin_id, []).append(i)
    return [slot[r["pin_id"]].pop(0) for r in ranked]


def simulate_day(
    rng: np.random.Generator, world: simulate.World, day_start_ms: int, n_requests: int, cfg: Config, service, is_holdout,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(impressions, actions) of one day, every feed ordered by ``service`` (None: chronological)."""
    sim = cfg.simulator
    req_user, req_ts, req_session, req_k = simulate.draw_requests(
        rng, world, n_requests, day_start_ms, simulate.DAY_MS, sim.candidates_min, sim.candidates_max
    )
    req_index, user, is_follow, pin_index = simulate.draw_candidates(rng, world, req_user, req_session, req_k)
    bounds = np.searchsorted(req_index, np.arange(len(req_user) + 1))
    created = world.pins["created_ts"].to_numpy()
    impressions, actions = [], []
    for r in np.argsort(req_ts, kind="stable"):
        rows = np.arange(bounds[r], bounds[r + 1])
        if not len(rows):
            continue
        uid, ts = int(req_user[r]), int(req_ts[r])
        candidates = [features.Candidate(int(pin_index[i]) + 1, int(created[pin_index[i]]), "follow" if is_follow[i] else "pfy") for i in rows]
        rows = rows[_order(service, uid, ts, candidates)]
        position = np.arange(len(rows), dtype=np.int32)
        fired = simulate.draw_engagement(rng, world, user[rows], pin_index[rows], is_follow[rows], position, np.full(len(rows), req_session[r]))
        acted = simulate.actions_frame(rng, user[rows], pin_index[rows], np.full(len(rows), ts), fired)
        if service is not None and len(acted):  # one store transaction per request's actions
            service.record_events(list(acted[["user_id", "pin_id", "action", "ts"]].itertuples(index=False, name=None)))
        impressions.append(pd.DataFrame({
            "request_id": f"{uid}-{day_start_ms}-{r}", "user_id": uid, "pin_id": pin_index[rows] + 1, "ts": ts,
            "source": np.where(is_follow[rows], "follow", "pfy"), "position": position, "holdout": is_holdout(uid),
        }))
        actions.append(acted)
    return pd.concat(impressions, ignore_index=True), pd.concat(actions, ignore_index=True)


def engagement(impressions: pd.DataFrame, actions: pd.DataFrame) -> dict[str, tuple[int, float, float]]:
    """Per group: (impressions, repins per impression, hides per impression)."""
    keyed = actions.merge(impressions[["user_id", "pin_id", "holdout"]].drop_duplicates(["user_id", "pin_id"]), on=["user_id", "pin_id"])
    out = {}
    for group, held in (("treatment", False), ("holdout", True)):
        n = int((impressions["holdout"] == held).sum())
        mine = keyed[keyed["holdout"] == held]
        out[group] = (n, float((mine["action"] == "repin").sum() / max(n, 1)), float((mine["action"] == "hide").sum() / max(n, 1)))
    return out


# --------------------------------------------------------------------------- the loop
def loop_config(cfg: Config, root: Path, settings: LoopSettings) -> Config:
    store = (root / "store").resolve()
    return cfg.with_overrides({
        "storage": {"root": str(store)},
        # Each loop its own registry, whatever MLFLOW_TRACKING_URI says: loops that shared one
        # gated each loop's first model against the previous loop's champion (issue 22), and
        # simulated models have no place in a real registry.
        "registry": {"tracking_uri": f"sqlite:///{store}/mlflow.db"},
        "train": {"model": settings.model},
        "holdout": {"fraction": settings.holdout_fraction},
        # The world drifts on purpose here; the drift check would stop every retraining.
        "validation": {"drift": {"enabled": False}},
        "serving": {"reload_poll_s": 0},
    })


def run_loop(cfg: Config, out: Path, settings: LoopSettings) -> list[DayRecord]:
    """One loop from scratch under ``out`` (replaced): warm-up, first champion, then the days."""
    from homefeed import pipeline, registry
    from homefeed.serving.service import RankingService

    if out.exists():
        shutil.rmtree(out)
    cfg = loop_config(cfg, out, settings)
    raw = out / "raw"
    warmup = cfg.simulator.model_copy(update={
        "days": settings.warmup_days, "impressions": settings.impressions_per_day * settings.warmup_days, "users": settings.users,
    })
    log = simulate.simulate(warmup)
    simulate.write_raw(log, raw, snapshot_ts=simulate._epoch_ms(warmup.start_date), manifest_extra={"source": "simulate-loop"})
    rng = np.random.default_rng(cfg.simulator.seed + 1)
    world = log.world
    first_day = warmup.start_date + timedelta(days=settings.warmup_days)
    mean_candidates = (cfg.simulator.candidates_min + cfg.simulator.candidates_max) / 2
    n_requests = max(1, int(settings.impressions_per_day / mean_candidates))

    def retrain(last_day: date, label: str) -> "pipeline.Gated":
        start = last_day - timedelta(days=settings.window_days - 1)
        return pipeline.retrain_in_process(cfg, str(raw), pipeline.run_dir(cfg, label), start, last_day)

    if registry.alias_version(cfg, registry.CHAMPION) is not None:  # in seconds, not after the warm-up's training
        raise LoopError(f"the loop's registry {registry.tracking_uri(cfg)} already has a champion; a loop starts from none")
    first = retrain(first_day - timedelta(days=1), "warmup")
    if not first.passed:
        raise LoopError(f"the first model failed its gate, so there is nothing to serve: {first.summary} "
                        "(simulate more impressions per day, or loosen gates.min_auc)")
    service = RankingService.from_registry(cfg)  # its sequence store starts from the warm-up's action log
    trained_through = first_day - timedelta(days=1)
    records = []
    for offset in range(settings.days):
        day = first_day + timedelta(days=offset)
        day_ms = simulate._epoch_ms(day)
        world = drift_world(rng, world, day_ms)
        _append_partition(raw, schema.PINS, world.pins, day.isoformat(), "snapshot")  # the day's pins, new ones included
        service.use_snapshot(features.FeatureSnapshot.load(raw))
        impressions, actions = simulate_day(rng, world, day_ms, n_requests, cfg, service, service.is_holdout)
        append_day(raw, day.isoformat(), impressions, actions)
        groups = engagement(impressions, actions)
        version, retrained = service.model.version, False
        if settings.retrain_every and (offset + 1) % settings.retrain_every == 0:
            retrained = retrain(day, f"day-{day.isoformat()}").passed
            if retrained:
                trained_through = day
                service.reload(cfg)
        records.append(DayRecord(
            day.isoformat(), version, (day - trained_through).days if not retrained else 0, retrained,
            groups["treatment"][0], groups["treatment"][1], groups["treatment"][2],
            groups["holdout"][0], groups["holdout"][1], groups["holdout"][2],
        ))
    service.close()
    _write_records(out / "days.csv", records)
    registry.prepare_store(cfg)  # leaves the store readable by `mlflow ui` at the path in the report
    return records


def _write_records(path: Path, records: list[DayRecord]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(asdict(records[0])) if records else ["day"])
        writer.writeheader()
        writer.writerows(asdict(r) for r in records)


# --------------------------------------------------------------------------- comparing cadences
def compare_loops(cfg: Config, out: Path, days: int, cadences: list[int], models: list[str], **settings: Any) -> list[dict[str, Any]]:
    """Every (model, cadence) from the same seed; a summary table, per-day CSVs and a plot."""
    summary = []
    for model in models:
        for every in cadences:
            name = f"{model}-every{every or 'never'}"
            records = run_loop(cfg, out / name, LoopSettings(days=days, retrain_every=every, model=model, **settings))
            frame = pd.DataFrame([asdict(r) for r in records])
            lift = frame["treatment_repins_per_impression"] - frame["holdout_repins_per_impression"]
            summary.append({
                "model": model, "retrain_every": every or "never", "promoted_retrainings": int(frame["retrained"].sum()),
                "treatment_repins_per_impression": float(frame["treatment_repins_per_impression"].mean()),
                "holdout_repins_per_impression": float(frame["holdout_repins_per_impression"].mean()),
                "repin_lift_first_half": float(lift[: days // 2].mean()), "repin_lift_second_half": float(lift[days // 2 :].mean()),
                "treatment_hides_per_impression": float(frame["treatment_hides_per_impression"].mean()),
                "holdout_hides_per_impression": float(frame["holdout_hides_per_impression"].mean()),
            })
    pd.DataFrame(summary).to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(_markdown(summary))
    _plot(out, [s["model"] for s in summary], [s["retrain_every"] for s in summary])
    return summary


def _markdown(rows: list[dict[str, Any]]) -> str:
    header = list(rows[0])
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(r[h]) for h in header) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _plot(out: Path, models: list[str], cadences: list[Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for model, every in zip(models, cadences):
        frame = pd.read_csv(out / f"{model}-every{every}" / "days.csv")
        ax.plot(range(1, len(frame) + 1), frame["treatment_repins_per_impression"] - frame["holdout_repins_per_impression"],
                marker="o", label=f"{model}, retrain every {every}")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("simulated day")
    ax.set_ylabel("repins / impression: treatment − holdout")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "lift.png", dpi=90)
    plt.close(fig)
