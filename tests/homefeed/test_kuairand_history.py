"""The pre-log history and the request window of the KuaiRand importer, on a tiny hand-made copy
of KuaiRand's files (the real data is not needed; tests/homefeed/test_kuairand.py reads it)."""

from datetime import datetime, timezone

import pandas as pd
import pytest

from homefeed import kuairand, schema

DAY = 86_400_000
APR_25 = int(datetime(2022, 4, 25, tzinfo=timezone.utc).timestamp() * 1000)


def _src(tmp_path, history: pd.DataFrame):
    """Two users, four days of a few exposures each (ids as KuaiRand's, from 0)."""
    rows = []
    for day in range(4):
        for user in (0, 1):
            for k in range(5):
                rows.append((user, 10 + (day * 5 + k) % 20, APR_25 + day * DAY + 3_600_000 * (8 + user) + 60_000 * k, 3000, 1,
                             int(k == 0), int(k < 2), int(k == 1), 0, 0))
    columns = ["user_id", "video_id", "time_ms", "play_time_ms", "tab", "is_like", "is_click", "long_view", "is_comment", "is_hate"]
    pd.DataFrame(rows, columns=columns).to_csv(tmp_path / "log_standard_4_25_to_5_03_pure.csv", index=False)
    pd.DataFrame({"video_id": range(60), "upload_dt": "2022-04-01", "tag": "1", "author_id": 7, "video_type": "NORMAL",
                  "upload_type": "ShortImport", "music_type": 0}).to_csv(tmp_path / "video_features_basic_pure.csv", index=False)
    pd.DataFrame({"user_id": [0, 1], "register_days": 100, "friend_user_num": 1, "fans_user_num": 2, "follow_user_num": 3,
                  "user_active_degree": "full_active"}).to_csv(tmp_path / "user_features_pure.csv", index=False)
    history.to_parquet(tmp_path / kuairand.HISTORY_FILE)
    return tmp_path


def _history(last_time_ms: int) -> pd.DataFrame:
    # User 0: likes 40, 41; long views 42, 40. watch_seq puts 42 before 40 and 41.
    return pd.DataFrame({"user_id": [0], "history_len": [9], "last_time_ms": [last_time_ms],
                         "watch_seq": [[42, 40, 43, 41]], "like_seq": [[40, 41]], "long_watch_seq": [[42, 40]]})


def test_prefix_actions_come_before_the_first_impression_in_order(tmp_path):
    # The user's last pre-log activity is a minute before the first logged exposure: the guard
    # (time-window mask + delay) must push the placed actions back.
    first_exposure = APR_25 + 8 * 3_600_000
    log, _ = kuairand.convert(_src(tmp_path, _history(first_exposure - 60_000)))
    prefix = log.actions[log.actions["ts"] < APR_25].sort_values("ts")
    # The documented merge: 42 (long view, watch place 0), 40 (like and long view, place 1/3),
    # 41 (like, place 1): like first on a tie; ids + 1.
    assert list(zip(prefix["pin_id"], prefix["action"])) == [(43, "closeup"), (41, "repin"), (41, "closeup"), (42, "repin")]
    first_impression = log.impressions.loc[log.impressions["user_id"] == 1, "ts"].min()
    assert prefix["ts"].max() == first_impression - kuairand.DEFAULT_GUARD_MS
    assert prefix["ts"].diff().dropna().eq(kuairand.MINUTE_MS).all()
    likes = prefix[prefix["action"] == "repin"]["pin_id"].tolist()
    assert likes == [41, 42]  # like_seq's own order kept
    assert kuairand.convert(tmp_path, history=False)[0].actions["ts"].min() >= APR_25  # --no-history


def test_a_user_day_request_window_keeps_each_exposure_time(tmp_path):
    src = _src(tmp_path, _history(APR_25 - DAY))
    hourly, _ = kuairand.convert(src, kuairand.parse_window("1h"))
    daily, _ = kuairand.convert(src, kuairand.parse_window("1d"))
    assert hourly.impressions.groupby("request_id")["ts"].nunique().max() == 1  # a feed load: one time
    per_request = daily.impressions.groupby("request_id").agg(n=("pin_id", "size"), times=("ts", "nunique"))
    assert (per_request["n"] == 5).all() and (per_request["times"] == 5).all()
    assert daily.impressions["request_id"].nunique() == 2 * 4
    with pytest.raises(kuairand.KuaiRandFormatError, match="request window"):
        kuairand.parse_window("1 week")


def test_the_first_logged_day_sees_the_prefix_in_its_sequences(spark, tmp_path, base_config):
    from homefeed.data import read_instances
    from jobs import build_instances as job

    (tmp_path / "src").mkdir()
    src = _src(tmp_path / "src", _history(APR_25 - 2 * DAY))
    kuairand.import_kuairand(src, tmp_path / "raw")
    cfg = base_config.with_overrides({"instances": {"negative_rate": 1.0, "test_days": 1, "validation_days": 1}})
    job.run(spark, str(tmp_path / "raw"), str(tmp_path / "instances"), cfg, now_ms=APR_25 + 30 * DAY)
    train = read_instances(tmp_path / "instances", "train").to_pandas()
    first_day = train[(train["user_id"] == 1) & (train["ts"] < APR_25 + DAY)]
    assert len(first_day) and all({41, 42, 43} <= set(seq) for seq in first_day[schema.SEQ_PIN_ID])
    others = train[train["user_id"] == 2]  # no history in the file: nothing before the log
    assert len(others) and not any(set(seq) & {41, 42, 43} for seq in others[schema.SEQ_PIN_ID])
