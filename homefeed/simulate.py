"""A seeded, vectorised home-feed simulator that writes the raw contract.

Ground truth, chosen so the architectures the seeds compare are distinguishable:

- every user has a **long-term interest** (a distribution over pin categories) and a **disliked
  category**;
- within a **session** the user has a short-term interest category; a request more than
  ``SESSION_GAP_MS`` after the previous one starts a new session, and within a session the
  interest jumps with probability ``INTEREST_JUMP``. The session interest is hidden: only the
  user's recent actions reveal it, so a model that reads the realtime action sequence can beat one
  that does not;
- hides concentrate on the disliked category and on spammy pins, and are rarer on the session's
  interest;
- users belong to segments (core / casual / new / resurrected) with different activity, and
  their snapshot attributes agree with :mod:`homefeed.segments`' rule.

The simulator draws one pass over all users' requests in time order; only the per-user session
state needs a sequential scan, done with a vectorised forward fill.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from homefeed import schema, segments, storage
from homefeed.config import SimulatorConfig

DAY_MS = segments.DAY_MS
SESSION_GAP_MS = 30 * 60 * 1000
REQUESTS_PER_SESSION = 4.0
REQUEST_GAP_MS = 90_000
INTEREST_JUMP = 0.2
SESSION_EXPLORE = 0.5  # share of sessions about a category outside the long-term interests
SESSION_AFFINITY = 2.5  # logit boost for a pin of the session's category
LONG_TERM_AFFINITY = 0.15
SESSION_RETRIEVAL = 0.3  # share of PFY candidates retrieved from the session's recent engagement
NUM_SIM_CATEGORIES = 24
COUNTRIES = ("US", "BR", "DE", "JP", "IN", "FR")
SEGMENT_SHARES = {"core": 0.55, "casual": 0.2, "new": 0.15, "resurrected": 0.1}
SEGMENT_ACTIVITY = {"core": 3.0, "casual": 0.6, "new": 1.0, "resurrected": 1.0}

# Per-action logit offsets and how strongly each follows the user's affinity for the pin.
ACTION_BASE = {"click": -1.3, "closeup": -2.2, "repin": -3.4, "like": -4.5, "comment": -6.0}
ACTION_AFFINITY = {"click": 1.0, "closeup": 1.0, "repin": 1.3, "like": 1.0, "comment": 0.8}
HIDE_BASE = -5.5


@dataclass
class World:
    """The ground truth behind a log: what users like, what pins are. The closed-loop simulation
    (``homefeed/loop.py``) keeps drawing from it day after day, and lets it drift."""

    pins: pd.DataFrame
    quality: np.ndarray  # per pin index
    spam: np.ndarray  # per pin index
    users: pd.DataFrame
    activity: np.ndarray  # per user index (user_id - 1)
    interests: np.ndarray  # (users + 1, categories): long-term interest distribution, row = user_id
    disliked: np.ndarray  # (users + 1,): the category each user hides
    centroids: np.ndarray  # (categories + 1, embedding dim): where a category's pin embeddings sit


@dataclass(frozen=True)
class SimulatedLog:
    impressions: pd.DataFrame
    actions: pd.DataFrame
    pins: pd.DataFrame
    users: pd.DataFrame
    world: World | None = None


def _epoch_ms(day: date) -> int:
    return int(datetime.combine(day, time(), tzinfo=timezone.utc).timestamp() * 1000)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _simulate_pins(rng: np.random.Generator, n_pins: int, start_ms: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    centroids = rng.normal(size=(NUM_SIM_CATEGORIES + 1, schema.EMBEDDING_DIM))
    category = rng.integers(1, NUM_SIM_CATEGORIES + 1, size=n_pins)
    embedding = centroids[category] + 0.5 * rng.normal(size=(n_pins, schema.EMBEDDING_DIM))
    embedding /= np.linalg.norm(embedding, axis=1, keepdims=True)
    quality = rng.normal(0.0, 0.5, size=n_pins)
    spam = rng.beta(1.0, 12.0, size=n_pins)
    impressions = np.floor(np.exp(rng.normal(6.0, 1.5, size=n_pins))).astype(np.int64)
    clicks = rng.binomial(impressions, _sigmoid(quality - 1.0))
    repins = rng.binomial(impressions, _sigmoid(quality - 3.5))
    pins = pd.DataFrame(
        {
            "pin_id": np.arange(1, n_pins + 1, dtype=np.int64),
            "embedding": list(embedding.astype(np.float32)),
            "created_ts": start_ms - rng.integers(DAY_MS, 120 * DAY_MS, size=n_pins),
            "category": category.astype(np.int32),
            "owner_id": rng.integers(1, max(2, n_pins // 5), size=n_pins).astype(np.int64),
            "repin_count": repins.astype(np.int64),
            "click_count": clicks.astype(np.int64),
            "impression_count": impressions,
            "spam_score": spam,
        }
    )
    return pins, quality, spam, centroids


def _simulate_users(rng: np.random.Generator, n_users: int, start_ms: int) -> tuple[pd.DataFrame, np.ndarray]:
    names = list(SEGMENT_SHARES)
    segment = rng.choice(len(names), size=n_users, p=list(SEGMENT_SHARES.values()))
    seg = np.array(names)[segment]
    activity = np.array([SEGMENT_ACTIVITY[s] for s in seg]) * np.exp(rng.normal(0, 0.5, size=n_users))
    is_new = seg == "new"
    signup_ts = np.where(
        is_new,
        start_ms - rng.integers(0, 10 * DAY_MS, size=n_users),
        start_ms - rng.integers(60 * DAY_MS, 1500 * DAY_MS, size=n_users),
    )
    dormant = seg == "resurrected"
    last_active = np.where(
        dormant,
        start_ms - rng.integers((segments.DORMANT_DAYS + 5) * DAY_MS, 150 * DAY_MS, size=n_users),
        start_ms - rng.integers(0, 3 * DAY_MS, size=n_users),
    )
    actions_28d = np.select(
        [seg == "core", seg == "casual", seg == "new"],
        [
            rng.integers(segments.CASUAL_MAX_ACTIONS_28D, 400, size=n_users),
            rng.integers(0, segments.CASUAL_MAX_ACTIONS_28D, size=n_users),
            rng.integers(0, 40, size=n_users),
        ],
        default=0,
    )
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, n_users + 1, dtype=np.int64),
            "signup_ts": signup_ts.astype(np.int64),
            "last_active_ts": last_active.astype(np.int64),
            "board_count": rng.poisson(3 * activity).astype(np.int64),
            "follower_count": np.floor(np.exp(rng.normal(2.0, 1.5, size=n_users))).astype(np.int64),
            "pin_count": rng.poisson(20 * activity).astype(np.int64),
            "actions_28d": actions_28d.astype(np.int64),
            "gender": np.array(schema.GENDERS)[rng.integers(0, len(schema.GENDERS), size=n_users)],
            "country": np.array(COUNTRIES)[rng.integers(0, len(COUNTRIES), size=n_users)],
        }
    )
    return users, activity


def _forward_fill_sessions(rng: np.random.Generator, user: np.ndarray, ts: np.ndarray, interests: np.ndarray) -> np.ndarray:
    """Session interest category per request; requests are sorted by (user, ts)."""
    n = len(user)
    first = np.ones(n, dtype=bool)
    first[1:] = user[1:] != user[:-1]
    gap = np.zeros(n, dtype=np.int64)
    gap[1:] = ts[1:] - ts[:-1]
    restart = first | (gap > SESSION_GAP_MS) | (rng.random(n) < INTEREST_JUMP)
    # A fresh interest: mostly from the long-term distribution, sometimes anything.
    cum = interests[user].cumsum(axis=1)
    draw = (cum < rng.random((n, 1))).sum(axis=1) + 1
    draw = np.where(rng.random(n) < SESSION_EXPLORE, rng.integers(1, NUM_SIM_CATEGORIES + 1, size=n), draw)
    last_restart = np.maximum.accumulate(np.where(restart, np.arange(n), 0))
    return draw[last_restart]


def draw_requests(
    rng: np.random.Generator, world: World, n_requests: int, start_ms: int, span_ms: int, candidates_min: int, candidates_max: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(user, ts, session interest, candidate count) per request, sorted by (user, ts).

    Requests come in sessions: a user (by activity) opens the app at a uniform time and scrolls
    through a geometric number of requests a few minutes apart.
    """
    activity, n_users = world.activity, len(world.users)
    n_sessions = max(1, int(round(n_requests / REQUESTS_PER_SESSION)))
    session_user = rng.choice(np.arange(1, n_users + 1), size=n_sessions, p=activity / activity.sum())
    session_start = start_ms + rng.integers(0, span_ms - SESSION_GAP_MS, size=n_sessions)
    per_session = rng.geometric(1.0 / REQUESTS_PER_SESSION, size=n_sessions)
    session_of = np.repeat(np.arange(n_sessions), per_session)
    gaps = rng.exponential(REQUEST_GAP_MS, size=len(session_of)).astype(np.int64)
    first_in_session = np.r_[True, session_of[1:] != session_of[:-1]]
    gaps[first_in_session] = 0
    offset = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[first_in_session], per_session)
    keep_in_window = session_start[session_of] + offset < start_ms + span_ms
    req_user = session_user[session_of][keep_in_window]
    req_ts = (session_start[session_of] + offset)[keep_in_window]
    order = np.lexsort((req_ts, req_user))
    req_user, req_ts = req_user[order], req_ts[order]
    req_session = _forward_fill_sessions(rng, req_user, req_ts, world.interests)
    req_k = rng.integers(candidates_min, candidates_max + 1, size=len(req_user))
    return req_user, req_ts, req_session, req_k


def draw_candidates(
    rng: np.random.Generator, world: World, req_user: np.ndarray, req_session: np.ndarray, req_k: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Candidates per request: (request index, user, is_follow, pin index) per impression.

    Each candidate's category comes from the user's long-term interests, exploration, or (for
    PFY) the session's interest; then a pin of that category. A request shows a pin at most once.
    """
    pins, interests = world.pins, world.interests
    n_requests, n_pins = len(req_user), len(pins)
    req_index = np.repeat(np.arange(n_requests), req_k)
    n_imp = len(req_index)
    user = req_user[req_index]
    is_follow = rng.random(n_imp) < 0.4
    cum = interests[user].cumsum(axis=1)
    from_interest = (cum < rng.random((n_imp, 1))).sum(axis=1) + 1
    explore = rng.random(n_imp) < np.where(is_follow, 0.2, 0.4)
    cand_cat = np.where(explore, rng.integers(1, NUM_SIM_CATEGORIES + 1, size=n_imp), from_interest)
    responsive = ~is_follow & (rng.random(n_imp) < SESSION_RETRIEVAL)
    cand_cat = np.where(responsive, req_session[req_index], cand_cat)
    by_cat = np.argsort(pins["category"].to_numpy(), kind="stable")
    cat_start = np.searchsorted(pins["category"].to_numpy()[by_cat], np.arange(NUM_SIM_CATEGORIES + 2))
    cat_size = np.maximum(cat_start[cand_cat + 1] - cat_start[cand_cat], 1)
    pick = cat_start[cand_cat] + (rng.random(n_imp) * cat_size).astype(np.int64)
    pin_index = by_cat[np.minimum(pick, n_pins - 1)]
    _, first = np.unique(req_index * n_pins + pin_index, return_index=True)
    keep = np.zeros(n_imp, dtype=bool)
    keep[first] = True
    return req_index[keep], user[keep], is_follow[keep], pin_index[keep]


def draw_engagement(
    rng: np.random.Generator, world: World, user: np.ndarray, pin_index: np.ndarray, is_follow: np.ndarray,
    position: np.ndarray, session: np.ndarray,
) -> list[tuple[str, np.ndarray]]:
    """The ground truth: for each action, which impressions it fired on (position matters)."""
    n_imp = len(user)
    pin_cat = world.pins["category"].to_numpy()[pin_index]
    longterm = np.log(world.interests[user, pin_cat - 1] * NUM_SIM_CATEGORIES + 1e-3)
    affinity = (
        SESSION_AFFINITY * (pin_cat == session)
        + LONG_TERM_AFFINITY * np.clip(longterm, -3.0, 3.0)
        + world.quality[pin_index]
        + 0.3 * is_follow
        - 0.03 * position
    )
    action_frames = []
    for name, base in ACTION_BASE.items():
        fired = rng.random(n_imp) < _sigmoid(base + ACTION_AFFINITY[name] * affinity)
        action_frames.append((name, fired))
    hide_logit = HIDE_BASE + 3.0 * (pin_cat == world.disliked[user]) + 8.0 * world.spam[pin_index] - 1.5 * (pin_cat == session)
    action_frames.append(("hide", rng.random(n_imp) < _sigmoid(hide_logit)))
    return action_frames


ACTION_DELAY_MS = {"click": 15_000, "closeup": 20_000, "repin": 40_000, "like": 30_000, "comment": 90_000, "hide": 10_000}


def actions_frame(
    rng: np.random.Generator, user: np.ndarray, pin_index: np.ndarray, imp_ts: np.ndarray, action_frames: list[tuple[str, np.ndarray]]
) -> pd.DataFrame:
    """The raw action rows of fired actions, a second or more after their impression."""
    actions = pd.concat(
        [
            pd.DataFrame(
                {
                    "user_id": user[fired].astype(np.int64),
                    "pin_id": (pin_index[fired] + 1).astype(np.int64),
                    "ts": (imp_ts[fired] + 1_000 + rng.exponential(ACTION_DELAY_MS[name], size=int(fired.sum()))).astype(np.int64),
                    "action": name,
                }
            )
            for name, fired in action_frames
        ],
        ignore_index=True,
    )
    # Several actions on the same impression at the same millisecond would collide on the key.
    actions = actions.drop_duplicates(list(schema.RAW_KEYS[schema.ACTIONS])).sort_values(["user_id", "ts"], kind="stable")
    return actions.reset_index(drop=True)


def simulate(cfg: SimulatorConfig, heavy_users: int = 0, heavy_factor: float = 100.0) -> SimulatedLog:
    """Draw a whole log. ``heavy_users`` users get ``heavy_factor`` × the median activity (skew)."""
    rng = np.random.default_rng(cfg.seed)
    start_ms = _epoch_ms(cfg.start_date)
    span_ms = cfg.days * DAY_MS
    mean_candidates = (cfg.candidates_min + cfg.candidates_max) / 2
    n_requests = max(1, int(round(cfg.impressions / mean_candidates)))
    n_users = cfg.users or max(50, cfg.impressions // 300)
    n_pins = max(200, min(200_000, cfg.impressions // 20))

    pins, quality, spam, centroids = _simulate_pins(rng, n_pins, start_ms)
    users, activity = _simulate_users(rng, n_users, start_ms)
    if heavy_users:
        activity[:heavy_users] = np.median(activity) * heavy_factor
    interests = rng.dirichlet(np.full(NUM_SIM_CATEGORIES, 0.3), size=n_users + 1)
    disliked = rng.integers(1, NUM_SIM_CATEGORIES + 1, size=n_users + 1)
    world = World(pins, quality, spam, users, activity, interests, disliked, centroids)

    req_user, req_ts, req_session, req_k = draw_requests(
        rng, world, n_requests, start_ms, span_ms, cfg.candidates_min, cfg.candidates_max
    )
    n_requests = len(req_user)
    req_index, user, is_follow, pin_index = draw_candidates(rng, world, req_user, req_session, req_k)
    n_imp = len(req_index)
    shown = np.bincount(req_index, minlength=n_requests)
    position = (np.arange(n_imp) - np.repeat(np.cumsum(shown) - shown, shown)).astype(np.int32)

    imp_ts = req_ts[req_index]
    action_frames = draw_engagement(rng, world, user, pin_index, is_follow, position, req_session[req_index])
    impressions = pd.DataFrame(
        {
            "request_id": pd.Series(req_user[req_index]).astype(str).to_numpy()
            + np.char.add("-", np.arange(n_requests).astype(str))[req_index],
            "user_id": user.astype(np.int64),
            "pin_id": (pin_index + 1).astype(np.int64),
            "ts": imp_ts.astype(np.int64),
            "source": np.where(is_follow, "follow", "pfy"),
            "position": position,
        }
    )
    actions = actions_frame(rng, user, pin_index, imp_ts, action_frames)
    return SimulatedLog(impressions, actions, pins, users, world)


# --------------------------------------------------------------------------- writing
def _day(ts_ms: np.ndarray | pd.Series) -> np.ndarray:
    return pd.to_datetime(np.asarray(ts_ms), unit="ms", utc=True).strftime("%Y-%m-%d").to_numpy()


def _with_dt(frame: pd.DataFrame, ts_ms: np.ndarray | pd.Series) -> pd.DataFrame:
    return frame.assign(**{schema.DT: _day(ts_ms)})


def _write_partitioned(table: pa.Table, directory: Path) -> None:
    """``dt=YYYY-MM-DD/part-0.parquet`` per day, the day in the path only (hive layout).

    Not ``pyarrow.dataset.write_dataset``: its asynchronous writer can leave threads that abort the
    interpreter at exit (apache/arrow#36980: "terminate called without an active exception", about
    one run in 25), which is how `homefeed generate` once ended with SIGABRT after a complete write.
    """
    days = table.column(schema.DT)
    rest = table.drop_columns([schema.DT])
    for day in pc.unique(days).to_pylist():
        part = directory / f"{schema.DT}={day}"
        part.mkdir(parents=True)
        pq.write_table(rest.filter(pc.equal(days, day)), part / "part-0.parquet")


def write_raw(log: SimulatedLog, out: str | Path, snapshot_ts: int, manifest_extra: dict | None = None) -> Path:
    """Write the four raw tables as dt-partitioned Parquet under ``out`` and publish atomically."""
    frames = {
        schema.IMPRESSIONS: _with_dt(log.impressions, log.impressions["ts"]),
        schema.ACTIONS: _with_dt(log.actions, log.actions["ts"]),
        schema.PINS: _with_dt(log.pins, np.full(len(log.pins), snapshot_ts)),
        schema.USERS: _with_dt(log.users, np.full(len(log.users), snapshot_ts)),
    }
    with storage.publish_dataset(out) as staging:
        counts = {}
        for table, frame in frames.items():
            arrow = pa.Table.from_pandas(frame, schema=schema.arrow_schema(table), preserve_index=False)
            _write_partitioned(arrow, staging / table)
            counts[table] = arrow.num_rows
        storage.write_json(staging / schema.MANIFEST, {"row_counts": counts, **(manifest_extra or {})})
    return storage.local_path(out)


def generate(cfg: SimulatorConfig, out: str | Path, heavy_users: int = 0) -> dict[str, int]:
    """Simulate and write; returns row counts per table."""
    log = simulate(cfg, heavy_users=heavy_users)
    write_raw(
        log,
        out,
        snapshot_ts=_epoch_ms(cfg.start_date),
        manifest_extra={"source": "simulator", "config": cfg.model_dump(mode="json"), "heavy_users": heavy_users},
    )
    return {"impressions": len(log.impressions), "actions": len(log.actions), "pins": len(log.pins), "users": len(log.users)}
