from homefeed.config import GatesConfig
from homefeed.gates import decide


def evaluation(auc_repin, hit_repin, hit_hide):
    return {"overall": {"repin": {"auc": auc_repin, "hit": hit_repin}, "hide": {"auc": 0.6, "hit": hit_hide}}}


CFG = GatesConfig(min_auc={"repin": 0.6}, max_auc_drop={"repin": 0.01}, max_hit_drop={"repin": 0.02}, max_hide_hit_rise=0.02)


def test_first_model_only_needs_the_floor():
    decision = decide(CFG, evaluation(0.7, 0.5, 0.1), None)
    assert decision.passed
    assert [c.name for c in decision.checks] == ["auc/repin >= 0.6"]
    assert "no champion" in decision.summary()


def test_floor_failure_says_why():
    decision = decide(CFG, evaluation(0.55, 0.5, 0.1), None)
    assert not decision.passed
    assert "below the floor 0.6" in decision.summary()


def test_better_challenger_passes():
    assert decide(CFG, evaluation(0.72, 0.52, 0.10), evaluation(0.70, 0.50, 0.10), "3").passed


def test_each_relative_failure_is_reported():
    auc_drop = decide(CFG, evaluation(0.68, 0.50, 0.10), evaluation(0.70, 0.50, 0.10), "3")
    assert not auc_drop.passed and "auc/repin fell by 0.0200" in auc_drop.summary()
    hit_drop = decide(CFG, evaluation(0.70, 0.45, 0.10), evaluation(0.70, 0.50, 0.10), "3")
    assert not hit_drop.passed and "HIT@k/repin fell" in hit_drop.summary()
    hide_rise = decide(CFG, evaluation(0.70, 0.50, 0.15), evaluation(0.70, 0.50, 0.10), "3")
    assert not hide_rise.passed and "HIT@k/hide rose" in hide_rise.summary()


def test_missing_metric_fails_the_floor():
    decision = decide(CFG, evaluation(float("nan"), 0.5, 0.1), None)
    assert not decision.passed
