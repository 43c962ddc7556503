"""KuaiRand-Pure → the raw contract.

KuaiRand (Gao et al., CIKM 2022, CC BY-SA 4.0) logs video exposures in the Kuaishou app with
several feedback labels, one of them negative (``is_hate``). The mapping:

| KuaiRand | homefeed |
| --- | --- |
| ``user_id`` + 1, ``video_id`` + 1 | ``user_id``, ``pin_id`` (0 is the sequence padding id) |
| one log row | one impression, ``ts`` = ``time_ms`` |
| user × hour of ``time_ms`` | ``request_id`` (a request = the user's exposures in one hour); ``position`` = order within it |
| ``tab`` = 1 (the main recommendation feed) / other tabs | ``source`` = ``pfy`` / ``follow`` |
| ``is_like``, ``is_click``, ``long_view``, ``is_comment``, ``is_hate`` | actions ``repin``, ``click``, ``closeup``, ``comment``, ``hide`` |
| (no action time in the log) | action ``ts`` = ``time_ms`` + ``play_time_ms`` (at least 1 ms later) |
| video features: ``author_id``, first ``tag``, ``upload_dt`` | pin ``owner_id``, ``category`` (mod 32), ``created_ts`` |
| video type / upload type / music type / tags | a 16-dim content embedding: a fixed random projection of these one-hot features (no pretrained embedding exists; the ranker adds learned id embeddings) |
| ``fans_user_num``, ``follow_user_num``, ``friend_user_num``, ``register_days`` | ``follower_count``, ``pin_count``, ``board_count`` (nearest analogues), ``signup_ts`` |
| ``user_active_degree`` | ``actions_28d`` (full/high: 100, middle: 20, low / new: 5, unknown: 0) |

| ``user_sequences_before_0425.parquet`` (04-09..04-24): ``like_seq``, ``long_watch_seq`` | **approximate**: actions ``repin``, ``closeup`` before the log (below) |

**Requests** (``--request-window``, default ``1h``): a request is a user's exposures within one
window of ``time_ms`` (``request_id`` = user × window). Up to the attribution window (1 h) the
request is one feed load: every impression's ``ts`` is the request's first exposure. Longer
windows (``1d``: a request per user-day, so that HIT@3 has requests of more than 3 candidates)
group exposures that were not shown together: each impression keeps its own ``time_ms`` as
``ts``, so its labels and its sequence still start at its own exposure. Within such a request the
later rows' sequences hold the earlier rows' actions, which misorders the request for any model
that reads them: score its candidates with one sequence, as a feed request is served, with
``homefeed compare --sequence-at request`` (docs/results/kuairand-history.md).

**The history before the log** (``user_sequences_before_0425.parquet``, on unless
``--no-history``): each user's last ≤ 50 likes and ≤ 50 long views of 2022-04-09..04-24 become
``repin`` / ``closeup`` actions. The file has no time per item (only the user's last activity,
``last_time_ms``) and no order between a like and a long view unless both videos are in
``watch_seq``. Placement, **approximate by construction**: an item's place is its video's last
position in ``watch_seq`` (as a fraction of it), else its position in its own list; likes and
long views are merged by that place (a like first on a tie), and the merged list is spaced one
minute apart, the newest at ``min(last_time_ms, first logged impression − guard)`` with ``guard``
= the TransAct time-window mask + the sequence delay (1 day + 30 s by default), so no prefix
action lands after the user's first logged impression or inside the window the mask hides
around it. Their ``dt`` partitions are the days they land on (before 04-25).

Not mapped: ``is_follow``, ``is_forward``, ``is_profile_enter`` and the stay times. Pin popularity
counts and spam scores are 0: the statistics file that would give them is not in this copy, and
counts from the log itself would leak the future into the snapshot. 4,021 exactly duplicated log
rows, and repeated exposures of a video to a user within the same hour, are kept once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from homefeed import schema, segments
from homefeed.config import InstancesConfig, TrainConfig
from homefeed.simulate import SimulatedLog, write_raw

ACTION_COLUMNS = {"is_like": "repin", "is_click": "click", "long_view": "closeup", "is_comment": "comment", "is_hate": "hide"}
ACTIVITY_28D = {"full_active": 100, "high_active": 100, "middle_active": 20, "low_active": 5, "single_low_active": 5,
                "2_14_day_new": 5, "day_new": 5, "30day_retention": 5, "UNKNOWN": 0}
HOUR_MS = 3_600_000


class KuaiRandFormatError(ValueError):
    pass


def _read_log(src: Path) -> pd.DataFrame:
    files = sorted(src.glob("log_*.csv"))
    if not files:
        raise KuaiRandFormatError(f"no log_*.csv files in {src}")
    needed = ["user_id", "video_id", "time_ms", "play_time_ms", "tab", *ACTION_COLUMNS]
    frames = []
    for path in files:
        frame = pd.read_csv(path)
        missing = sorted(set(needed) - set(frame.columns))
        if missing:
            raise KuaiRandFormatError(f"{path.name}: missing columns {missing}")
        frames.append(frame[needed])
    return pd.concat(frames, ignore_index=True).drop_duplicates()


def _content_embedding(videos: pd.DataFrame) -> np.ndarray:
    """A fixed random projection of one-hot video metadata to EMBEDDING_DIM, L2-normalised."""
    tokens = (
        "type=" + videos["video_type"].astype(str) + "|upload=" + videos["upload_type"].astype(str)
        + "|music=" + videos["music_type"].astype(str) + "|" + videos["tag"].fillna("").astype(str).str.replace(",", "|tag=").radd("tag=")
    )
    out = np.zeros((len(videos), schema.EMBEDDING_DIM), dtype=np.float64)
    for i, row in enumerate(tokens):
        for token in row.split("|"):
            seed = int.from_bytes(hashlib.sha256(token.encode()).digest()[:8], "big")
            out[i] += np.random.default_rng(seed).normal(size=schema.EMBEDDING_DIM)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)
    return out.astype(np.float32)


HISTORY_FILE = "user_sequences_before_0425.parquet"
MINUTE_MS = 60_000
# The TransAct time-window mask plus the sequence delay, as the config's defaults set them.
DEFAULT_GUARD_MS = TrainConfig.model_fields["time_window_ms"].default + InstancesConfig.model_fields["delay_ms"].default


def parse_window(text: str) -> int:
    """``30m``, ``1h``, ``1d`` → milliseconds."""
    units = {"m": MINUTE_MS, "h": HOUR_MS, "d": segments.DAY_MS}
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit() or int(text[:-1]) == 0:
        raise KuaiRandFormatError(f"request window {text!r}: expected a positive number of m, h or d (e.g. 1h, 1d)")
    return int(text[:-1]) * units[text[-1]]


def _placed_items(watch: list, likes: list, long_views: list) -> list[tuple[int, str]]:
    """(video_id, action) oldest first: likes and long views merged by their place (see the
    module docstring), each list's own order kept (a place never moves before its predecessor's)."""
    last_seen = {video: j for j, video in enumerate(watch)}

    def places(items: list) -> list[float]:
        out, running = [], 0.0
        for i, video in enumerate(items):
            here = last_seen[video] / max(len(watch) - 1, 1) if video in last_seen else i / max(len(items) - 1, 1)
            running = max(running, here)
            out.append(running)
        return out

    keyed = [(place, 0, i, v, "repin") for i, (v, place) in enumerate(zip(likes, places(likes)))]
    keyed += [(place, 1, i, v, "closeup") for i, (v, place) in enumerate(zip(long_views, places(long_views)))]
    return [(int(video), action) for _, _, _, video, action in sorted(keyed)]


def history_prefix(history: pd.DataFrame, first_impression_ms: pd.Series, guard_ms: int = DEFAULT_GUARD_MS,
                   spacing_ms: int = MINUTE_MS) -> pd.DataFrame:
    """The pre-log likes and long views as actions (ids already +1), placed as documented above."""
    rows = []
    for user, last_ms, watch, likes, long_views in zip(
        history["user_id"] + 1, history["last_time_ms"], history["watch_seq"], history["like_seq"], history["long_watch_seq"],
    ):
        items = _placed_items([int(v) + 1 for v in watch], [int(v) + 1 for v in likes], [int(v) + 1 for v in long_views])
        if not items:
            continue
        newest = int(last_ms)
        first = first_impression_ms.get(int(user))
        if first is not None and not pd.isna(first):
            newest = min(newest, int(first) - guard_ms)
        for k, (video, action) in enumerate(items):
            rows.append((int(user), video, newest - (len(items) - 1 - k) * spacing_ms, action))
    frame = pd.DataFrame(rows, columns=["user_id", "pin_id", "ts", "action"])
    return frame.astype({"user_id": np.int64, "pin_id": np.int64, "ts": np.int64}).drop_duplicates(list(schema.RAW_KEYS[schema.ACTIONS]))


def convert(src: str | Path, request_window_ms: int = HOUR_MS, history: bool = True,
            guard_ms: int = DEFAULT_GUARD_MS) -> tuple[SimulatedLog, int]:
    """The four raw tables and the snapshot timestamp (the first log day, UTC midnight)."""
    src = Path(src)
    log = _read_log(src)
    log["user_id"] += 1
    log["video_id"] += 1
    log["window"] = log["time_ms"] // request_window_ms
    log["request_id"] = log["user_id"].astype(str) + "-" + log["window"].astype(str)
    log = log.sort_values(["user_id", "time_ms", "video_id"], kind="stable").drop_duplicates(["request_id", "video_id"])
    log["position"] = log.groupby("request_id").cumcount().astype(np.int32)
    # Up to the attribution window a request is one feed load, shown at its first exposure.
    if request_window_ms <= HOUR_MS:
        impression_ts = log.groupby("request_id")["time_ms"].transform("min")
    else:
        impression_ts = log["time_ms"]
    impressions = pd.DataFrame({
        "request_id": log["request_id"], "user_id": log["user_id"].astype(np.int64), "pin_id": log["video_id"].astype(np.int64),
        "ts": impression_ts.astype(np.int64), "source": np.where(log["tab"] == 1, "pfy", "follow"), "position": log["position"],
    })
    action_ts = (log["time_ms"] + np.maximum(log["play_time_ms"].fillna(0), 1)).astype(np.int64)
    actions = pd.concat(
        [pd.DataFrame({"user_id": log.loc[log[c] == 1, "user_id"], "pin_id": log.loc[log[c] == 1, "video_id"],
                       "ts": action_ts[log[c] == 1], "action": name}) for c, name in ACTION_COLUMNS.items()],
        ignore_index=True,
    ).astype({"user_id": np.int64, "pin_id": np.int64, "ts": np.int64}).drop_duplicates(list(schema.RAW_KEYS[schema.ACTIONS]))

    if history and (src / HISTORY_FILE).exists():
        first_impression = impressions.groupby("user_id")["ts"].min()
        prefix = history_prefix(pd.read_parquet(src / HISTORY_FILE), first_impression, guard_ms)
        actions = pd.concat([prefix, actions], ignore_index=True).drop_duplicates(list(schema.RAW_KEYS[schema.ACTIONS]))
    first_day_ms = int(log["time_ms"].min()) // segments.DAY_MS * segments.DAY_MS
    videos = pd.read_csv(src / "video_features_basic_pure.csv")
    created = pd.to_datetime(videos["upload_dt"], errors="coerce", utc=True)
    created_ms = (created.astype("int64") // 1_000_000).where(created.notna(), first_day_ms)
    first_tag = pd.to_numeric(videos["tag"].fillna("0").astype(str).str.split(",").str[0], errors="coerce").fillna(0)
    pins = pd.DataFrame({
        "pin_id": (videos["video_id"] + 1).astype(np.int64),
        "embedding": list(_content_embedding(videos)),
        "created_ts": np.minimum(created_ms, first_day_ms).astype(np.int64),
        "category": (first_tag.astype(np.int64) % schema.NUM_CATEGORIES).astype(np.int32),
        "owner_id": videos["author_id"].astype(np.int64),
        **{c: np.zeros(len(videos), dtype=np.int64) for c in schema.PIN_COUNT_COLUMNS},
        "spam_score": np.zeros(len(videos)),
    })
    users_raw = pd.read_csv(src / "user_features_pure.csv")
    users = pd.DataFrame({
        "user_id": (users_raw["user_id"] + 1).astype(np.int64),
        "signup_ts": (first_day_ms - users_raw["register_days"].fillna(0).astype(np.int64) * segments.DAY_MS).astype(np.int64),
        "last_active_ts": np.full(len(users_raw), first_day_ms, dtype=np.int64),
        "board_count": users_raw["friend_user_num"].fillna(0).clip(lower=0).astype(np.int64),
        "follower_count": users_raw["fans_user_num"].fillna(0).clip(lower=0).astype(np.int64),
        "pin_count": users_raw["follow_user_num"].fillna(0).clip(lower=0).astype(np.int64),
        "actions_28d": users_raw["user_active_degree"].map(ACTIVITY_28D).fillna(0).astype(np.int64),
        "gender": "unknown",
        "country": "CN",
    })
    return SimulatedLog(impressions.reset_index(drop=True), actions.reset_index(drop=True), pins, users), first_day_ms


def import_kuairand(src: str | Path, out: str | Path, request_window: str = "1h", history: bool = True,
                    guard_ms: int = DEFAULT_GUARD_MS) -> dict[str, int]:
    log, snapshot_ts = convert(src, parse_window(request_window), history, guard_ms)
    prefix = int((log.actions["ts"] < snapshot_ts).sum())
    write_raw(log, out, snapshot_ts, {"source": "kuairand-pure", "src": str(src), "request_window": request_window,
                                      "history_before_log": prefix, "license": "CC BY-SA 4.0 (Gao et al., KuaiRand, CIKM 2022)"})
    return {"impressions": len(log.impressions), "actions": len(log.actions), "actions_before_log": prefix,
            "requests": int(log.impressions["request_id"].nunique()), "pins": len(log.pins), "users": len(log.users)}
