"""The readout's Spark job on hand-built exposure and action logs: each count exact, each window honoured."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from homefeed import arms, schema
from homefeed.event_log import SERVED, SERVED_SCHEMA
from jobs import experiment_readout as job

DAY = 86_400_000
START = 20 * DAY  # the experiment starts at day 20
WINDOW = job.Window("exp", holdout_fraction=0.0, holdout_salt="h", traffic=1.0, salt="s", start_ms=START, end_ms=START + 3 * DAY - 1,
                    pre_period_days=14)


def _write(root, table, rows, arrow_schema):
    by_dt = {}
    for row in rows:
        by_dt.setdefault(f"1970-01-{1 + row['ts'] // DAY:02d}", []).append(row)
    for dt, part in by_dt.items():
        directory = root / table / f"dt={dt}"
        directory.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(part, schema=arrow_schema), directory / "part-0.parquet")


def _served(request_id, user, ts, experiment="exp", arm=None):
    return {"request_id": request_id, "user_id": user, "ts": ts, "arm": arm or arms.arm_of(user, 0.0, "h", 1.0, "s"),
            "experiment": experiment, "model_version": "1", "pin_ids": [1, 2], "scores": [0.5, 0.4]}


def _action(user, ts, action, pin=1):
    return {"user_id": user, "pin_id": pin, "ts": ts, "action": action}


@pytest.fixture()
def logs(tmp_path):
    events, raw = tmp_path / "events", tmp_path / "raw"
    _write(events, SERVED, [
        _served("r1", 1, START + 1000), _served("r2", 1, START + DAY + 5), _served("r3", 2, START + 2 * DAY),
        _served("r4", 3, START - 5 * DAY, experiment=""),  # before the start: pre-period requests only
        _served("r5", 4, START + 3 * DAY + 1),  # after the end
        _served("r6", 5, START + 10, arm="none"),  # assigned an arm, served the champion (a challenger that failed to load)
    ], SERVED_SCHEMA)
    actions_schema = schema.arrow_schema(schema.ACTIONS, with_dt=False)
    _write(events, schema.ACTIONS, [_action(1, START + 2000, "repin"), _action(1, START + 2001, "hide")], actions_schema)
    _write(raw, schema.ACTIONS, [
        _action(1, START + 2000, "repin"),  # the same event in both logs: counted once
        _action(1, START + 500, "click"),  # before user 1's first exposure: not counted
        _action(1, START - 3 * DAY, "repin"), _action(1, START - 20 * DAY, "repin"),  # pre-period, and before it
        _action(2, START + 2 * DAY + 10, "closeup"), _action(2, START + 4 * DAY, "repin"),  # after the end: not counted
    ], actions_schema)
    _write(raw, schema.IMPRESSIONS, [{"request_id": "old-1", "user_id": 1, "pin_id": 1, "ts": START - 2 * DAY, "source": "pfy", "position": 0}],
           schema.arrow_schema(schema.IMPRESSIONS, with_dt=False))
    return events, raw


def test_each_user_s_counts_follow_the_windows(spark, logs):
    events, raw = logs
    tables = job.user_tables(spark, str(events), str(raw), WINDOW)
    users = tables.users.set_index("user_id")
    assert sorted(users.index) == [1, 2, 5]
    one = users.loc[1]
    assert (one.requests, one.active_days, one.repins, one.hides, one.clicks, one.repins_pre, one.requests_pre) == (2, 2, 1, 1, 0, 1, 1)
    assert (users.loc[2].closeups, users.loc[2].repins) == (1, 0)
    assert one.arm == arms.arm_of(1, 0.0, "h", 1.0, "s") and users.loc[5].arm in (arms.CONTROL, arms.TREATMENT)
    assert tables.mismatched == 1  # user 5: analysed in the assigned arm (intent to treat), counted as served otherwise
    daily = tables.daily.set_index(["user_id", "day"])
    assert daily.loc[(1, 20)].repins == 1 and daily.loc[(1, 21)].requests == 1


def test_no_exposures_is_one_clear_error(spark, tmp_path, logs):
    with pytest.raises(job.NoExposures, match="no exposure log"):
        job.user_tables(spark, str(tmp_path / "nothing"), None, WINDOW)
    events, _ = logs
    with pytest.raises(job.NoExposures, match="no /rank answer recorded"):
        job.user_tables(spark, str(events), None, job.Window(**{**WINDOW.__dict__, "name": "other"}))
