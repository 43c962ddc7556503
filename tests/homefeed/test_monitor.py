"""Staleness monitor: the decision on hand-built records, and the champion scored on new days."""

import json
from datetime import date

import pytest

from homefeed import monitor, monitor_records, registry, storage
from tests.conftest import register_and_promote


def record(day: str, auc: float, age: int, impressions: int = 1000) -> dict:
    return {"day": day, "age_days": age, "impressions": impressions, "auc": {"repin": auc}}


@pytest.fixture()
def limits(base_config):
    return base_config.with_overrides({"monitor": {"max_auc_drop": 0.02, "max_age_days": 7, "min_impressions": 500}})


def test_a_drop_beyond_the_limit_is_stale_and_says_why(limits):
    decision = monitor.staleness([record("2026-01-03", 0.70, 3), record("2026-01-01", 0.75, 1)], limits)
    assert decision["stale"] and decision["drop"] == pytest.approx(0.05)
    assert "repin AUC 0.7000 on 2026-01-03 is 0.0500 below 0.7500 on 2026-01-01 (limit 0.02)" in decision["reason"]


def test_a_small_drop_is_not_stale_but_age_alone_is(limits):
    assert not monitor.staleness([record("2026-01-01", 0.75, 1), record("2026-01-02", 0.74, 2)], limits)["stale"]
    decision = monitor.staleness([record("2026-01-01", 0.75, 1), record("2026-01-09", 0.75, 9)], limits)
    assert decision["stale"] and "9 days old" in decision["reason"]


def test_small_days_are_recorded_but_decide_nothing(limits):
    tiny_bad_day = record("2026-01-02", 0.40, 2, impressions=30)
    assert not monitor.staleness([record("2026-01-01", 0.75, 1), tiny_bad_day], limits)["stale"]
    assert not monitor.staleness([tiny_bad_day], limits)["stale"]


@pytest.fixture()
def cfg_with_champion(base_config, tmp_path, instances_dir, monkeypatch):
    """A champion whose training window (by its tag) ended on 2026-01-07: the 8th and 9th are new."""
    from homefeed import train as trainer

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = base_config.with_overrides({"storage": {"root": str(tmp_path)}, "monitor": {"max_age_days": 1, "min_impressions": 100}})
    model_dir = trainer.train(str(instances_dir), str(tmp_path / "lr"), cfg.with_overrides({"train": {"model": "lr"}})).model_dir
    register_and_promote(cfg, model_dir, instances_dir, {"data.window": "2026-01-05..2026-01-07"})
    return cfg


def test_monitor_scores_each_new_day_once_and_marks_an_old_champion_stale(spark, cfg_with_champion, raw_dir):
    cfg = cfg_with_champion
    decision = monitor.run(spark, cfg, str(raw_dir))
    assert decision["scored_days"] == ["2026-01-08", "2026-01-09"]
    days = monitor.records(cfg, "1")
    assert [(r["day"], r["age_days"]) for r in days] == [("2026-01-08", 1), ("2026-01-09", 2)]
    for day in days:
        assert 0.5 < day["auc"]["repin"] <= 1.0 and day["impressions"] > 100
        assert set(day["slices"]) == {"core", "non_core", "follow", "pfy"}
    # Age 2 > max_age_days 1: stale, tagged on the version, and the retrain report will say why.
    assert decision["stale"] and "2 days old" in decision["reason"]
    tags = registry.client(cfg).get_model_version(cfg.registry.model_name, "1").tags
    assert tags["monitor.stale"] == "2026-01-09" and "days old" in tags["monitor.stale_reason"]
    assert monitor_records.stale_notice(cfg, "1")["reason"] == decision["reason"]
    assert monitor_records.stale_notice(cfg, "2") is None
    assert (monitor.monitor_root(cfg) / "decay.png").stat().st_size > 0
    # Idempotent: nothing new has landed, nothing is scored again.
    assert monitor.run(spark, cfg, str(raw_dir))["scored_days"] == []
    # The day's instances carry the champion's standardisation, not a refit.
    manifest = storage.read_manifest(monitor.monitor_root(cfg) / "v1" / "instances" / "2026-01-08")
    served = json.loads(next(monitor.monitor_root(cfg).parent.glob("lr/serving_features.json")).read_text())
    assert manifest["feature_stats"] == served["feature_stats"] and manifest["evaluation_only"] is True


def test_days_inside_the_training_window_are_refused(spark, cfg_with_champion, raw_dir):
    with pytest.raises(ValueError, match="inside v1's training window"):
        monitor.run(spark, cfg_with_champion, str(raw_dir), [date(2026, 1, 6)])
