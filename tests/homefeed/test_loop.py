"""The closed loop on tiny data: 3 simulated days, one retraining, holdout feeds chronological every day."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from homefeed import loop, schema, simulate, storage
from homefeed.holdout import is_holdout

pytestmark = pytest.mark.slow  # two retraining runs and a simulated feed per request


def _read(directory) -> pd.DataFrame:
    return pa.concat_tables(pq.ParquetFile(f).read() for f in storage.list_files(directory)).to_pandas()


@pytest.fixture(scope="module")
def looped(base_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("loop") / "lr-every2"
    cfg = base_config.with_overrides({"train": {"epochs": 1}})
    settings = loop.LoopSettings(days=3, retrain_every=2, model="lr", warmup_days=4, window_days=4,
                                 holdout_fraction=0.5, impressions_per_day=2000, users=30)
    records = loop.run_loop(cfg, out, settings)
    return out, records, loop.loop_config(cfg, out, settings)


def test_the_loop_records_every_day_and_retrains_on_schedule(looped):
    out, records, _ = looped
    assert [r.day for r in records] == ["2026-01-09", "2026-01-10", "2026-01-11"]
    assert [r.retrained for r in records][0] is False and records[0].model_version == "1"
    for r in records:
        assert r.treatment_impressions > 0 and r.holdout_impressions > 0
        assert 0 <= r.treatment_repins_per_impression < 1 and 0 <= r.holdout_hides_per_impression < 1
    if records[1].retrained:  # the gate passed on day 2: day 3 is served by the new model
        assert records[2].model_version == "2" and records[2].model_age_days == 1
    assert (out / "days.csv").read_text().count("\n") == 4
    # The raw log grew by one impressions partition per day, and the new pins are in the snapshot.
    days = sorted(p.name for p in (out / "raw" / schema.IMPRESSIONS).glob("dt=*"))
    assert days[-3:] == ["dt=2026-01-09", "dt=2026-01-10", "dt=2026-01-11"]
    pins = _read(out / "raw" / schema.PINS / "dt=2026-01-11")
    assert len(pins) > len(_read(out / "raw" / schema.PINS / "dt=2026-01-05"))


def test_holdout_feeds_are_chronological_every_day_and_treatment_feeds_are_not(looped):
    out, _, cfg = looped
    pins = _read(out / "raw" / schema.PINS / "dt=2026-01-11").set_index("pin_id")["created_ts"]
    for day in ("2026-01-09", "2026-01-10", "2026-01-11"):
        shown = _read(out / "raw" / schema.IMPRESSIONS / f"dt={day}").sort_values(["request_id", "position"])
        held = shown["user_id"].map(lambda u: is_holdout(u, cfg.holdout.fraction, cfg.holdout.salt))
        assert held.any() and (~held).any()
        created = shown["pin_id"].map(pins)
        chronological = created.groupby(shown["request_id"]).apply(lambda ts: bool(np.all(np.diff(ts.to_numpy()) <= 0)))
        by_request_held = held.groupby(shown["request_id"]).first()
        assert chronological[by_request_held].all(), day
        multi = shown.groupby("request_id").size() > 3
        assert not chronological[~by_request_held & multi].all(), f"{day}: the model never reordered a treatment feed"


def test_the_world_drifts(base_config):
    log = simulate.simulate(base_config.simulator)
    moved = loop.drift_world(np.random.default_rng(0), log.world, simulate._epoch_ms(base_config.simulator.start_date))
    assert len(moved.pins) > len(log.world.pins) and len(moved.quality) == len(moved.pins)
    assert not np.allclose(moved.interests, log.world.interests)
    assert np.allclose(moved.interests.sum(axis=1), 1.0)


def test_each_loop_has_its_own_registry_whatever_the_environment_says(base_config, tmp_path, monkeypatch):
    """Before: with MLFLOW_TRACKING_URI set, every loop of `simulate-loop` shared one registry and
    the second loop's first model was gated against the first loop's champion (issue 22)."""
    from homefeed import registry

    shared = f"sqlite:///{tmp_path}/shared.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared)
    settings = loop.LoopSettings(days=1, retrain_every=0, model="none")
    first, second = (loop.loop_config(base_config, tmp_path / name, settings) for name in ("a", "b"))
    assert registry.tracking_uri(first) != registry.tracking_uri(second)
    assert shared not in (registry.tracking_uri(first), registry.tracking_uri(second))
    assert registry.tracking_uri(base_config) == shared  # outside a loop the environment still decides


def test_a_loop_whose_registry_has_a_champion_fails_in_seconds(base_config, tmp_path, instances_dir, monkeypatch):
    import time

    from homefeed import train as trainer
    from tests.conftest import register_and_promote

    settings = loop.LoopSettings(days=1, retrain_every=0, model="lr", warmup_days=3, window_days=3, impressions_per_day=1000, users=20)
    out = tmp_path / "loop"
    cfg = loop.loop_config(base_config, out, settings)
    model_dir = trainer.train(str(instances_dir), str(tmp_path / "lr"), cfg).model_dir
    register_and_promote(cfg, model_dir, instances_dir)
    # run_loop starts by clearing `out`; keep the store where the loop will look for it.
    monkeypatch.setattr(loop.shutil, "rmtree", lambda path: None)
    started = time.monotonic()
    with pytest.raises(loop.LoopError, match="already has a champion"):
        loop.run_loop(base_config, out, settings)
    assert time.monotonic() - started < 60
