import numpy as np
import pyarrow.dataset as pads

from homefeed import schema, segments, simulate
from homefeed.config import SimulatorConfig

CFG = SimulatorConfig(impressions=5_000, days=3)


def test_same_seed_same_log_other_seed_other_log():
    a, b = simulate.simulate(CFG), simulate.simulate(CFG)
    assert a.impressions.equals(b.impressions) and a.actions.equals(b.actions)
    c = simulate.simulate(CFG.model_copy(update={"seed": 8}))
    assert not a.impressions["pin_id"].equals(c.impressions["pin_id"])


def test_log_respects_the_contract():
    log = simulate.simulate(CFG)
    imps = log.impressions
    assert not imps.duplicated(["request_id", "pin_id"]).any()
    assert set(imps["source"]) <= set(schema.SOURCES)
    assert set(log.actions["action"]) <= set(schema.ACTION_NAMES)
    assert imps.groupby("request_id")["ts"].nunique().max() == 1  # a request's impressions share one ts
    assert imps["pin_id"].min() >= 1 and imps["user_id"].min() >= 1  # 0 is padding
    # Every action follows an impression of that pin to that user.
    seen = imps.groupby(["user_id", "pin_id"])["ts"].min()
    first = seen.reindex(list(zip(log.actions["user_id"], log.actions["pin_id"]))).to_numpy()
    assert np.all(log.actions["ts"].to_numpy() > first)


def test_users_table_agrees_with_the_segment_rule():
    log = simulate.simulate(CFG)
    start = simulate._epoch_ms(CFG.start_date)
    found = {
        segments.segment_of((start - u.signup_ts) / segments.DAY_MS, (start - u.last_active_ts) / segments.DAY_MS, u.actions_28d)
        for u in log.users.itertuples()
    }
    assert found == set(schema.SEGMENTS)


def test_hides_are_the_rare_negative_action():
    rates = simulate.simulate(CFG).actions["action"].value_counts(normalize=True)
    assert rates["hide"] < rates["click"]


def test_generate_writes_dt_partitioned_parquet_and_publishes(tmp_path):
    counts = simulate.generate(CFG, tmp_path / "raw")
    assert (tmp_path / "raw" / schema.SUCCESS_MARKER).exists()
    for table in schema.RAW_TABLES:
        dataset = pads.dataset(tmp_path / "raw" / table, partitioning="hive")
        assert dataset.count_rows() == counts[table]
        assert set(schema.columns(table)) <= set(dataset.schema.names)
    days = sorted(p.name for p in (tmp_path / "raw" / "impressions").iterdir())
    assert days == ["dt=2026-01-05", "dt=2026-01-06", "dt=2026-01-07"]
