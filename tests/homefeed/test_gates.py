import pytest
from pydantic import ValidationError

from homefeed.config import GatesConfig
from homefeed.gates import GateCheck, GateDecision, decide


def evaluation(auc_repin, hit_repin, hit_hide, slices=None):
    overall = {"repin": {"auc": auc_repin, "hit": hit_repin}, "hide": {"auc": 0.6, "hit": hit_hide}}
    return {"overall": overall, "slices": slices or {}}


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


def test_a_passing_check_does_not_read_as_a_failure():
    """gate.json keeps every check's sentence; a passed one must not say "below" or "more than"."""
    decision = decide(CFG, evaluation(0.695, 0.50, 0.10), evaluation(0.70, 0.50, 0.10), "3")
    assert decision.passed and decision.reasons == []
    sentences = {c.name: c.reason for c in decision.checks}
    assert sentences["auc/repin >= 0.6"] == "auc/repin is 0.695, at or above the floor 0.6"
    assert sentences["auc/repin drop <= 0.01"] == "auc/repin fell by 0.0050 (champion 0.7000 → challenger 0.6950), within 0.01"


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


def test_slice_gates_check_each_slice_and_name_it():
    per_slice = CFG.model_copy(update={"slices": ["core", "non_core"]})
    champion = evaluation(0.70, 0.50, 0.10, {"core": evaluation(0.72, 0.5, 0.1)["overall"], "non_core": evaluation(0.65, 0.5, 0.1)["overall"]})
    # Better overall, but new users lose 0.05 AUC: only the per-slice gate sees it.
    challenger = evaluation(0.71, 0.50, 0.10, {"core": evaluation(0.74, 0.5, 0.1)["overall"], "non_core": evaluation(0.60, 0.5, 0.1)["overall"]})
    assert decide(CFG, challenger, champion, "3").passed
    decision = decide(per_slice, challenger, champion, "3")
    assert not decision.passed
    assert decision.reasons == ["non_core: auc/repin fell by 0.0500 (champion 0.6500 → challenger 0.6000), more than 0.01"]


def test_unknown_slice_is_a_config_error():
    with pytest.raises(ValidationError, match="unknown slices"):
        GatesConfig(slices=["weekend"])


def test_the_summary_counts_checks_in_words_a_person_reads():
    one = GateDecision(True, [GateCheck("auc/repin floor", True, 0.74, 0.6, "")], None)
    assert one.summary() == "gate passed (1 check, against no champion (first model))"
