"""The readout's statistics (tea-tasting) on per-user frames with a known truth, and the decision rules."""

import numpy as np
import pandas as pd
import pytest

from homefeed import readout
from homefeed.experiments import Experiment

EXPERIMENT = Experiment("exp", "1", "2", traffic=1.0, salt="s", holdout_fraction=0.1, holdout_salt="h", start_ms=0, actor="t", reason="")


def users_frame(n: int, repin_lift: float = 1.0, hide_lift: float = 1.0, seed: int = 0, drop_treatment: float = 0.0) -> pd.DataFrame:
    """Users whose pre-period activity predicts their activity (as real users' does)."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"user_id": np.arange(n)})
    frame["arm"] = [EXPERIMENT.arm(u) for u in frame["user_id"]]
    activity = rng.gamma(2.0, 1.0, n)
    treated = (frame["arm"] == "treatment").to_numpy()
    frame["requests"] = rng.poisson(activity * 4) + 1
    frame["requests_pre"] = rng.poisson(activity * 4) + 1
    for column, lift in (("repins", repin_lift), ("clicks", 1.0), ("closeups", 1.0), ("hides", hide_lift)):
        frame[column] = rng.poisson(activity * np.where(treated, lift, 1.0))
        frame[f"{column}_pre"] = rng.poisson(activity)
    frame["first_exposure_ts"], frame["active_days"] = 0, 7
    frame["segment"] = np.where(rng.random(n) < 0.5, "core", "casual")
    if drop_treatment:
        lost = treated & (rng.random(n) < drop_treatment)
        frame = frame[~lost]
    return frame.reset_index(drop=True)


def daily_frame(users: pd.DataFrame, days: int = 7) -> pd.DataFrame:
    rows = users[["user_id", "arm"]].merge(pd.DataFrame({"day": 20_460 + np.arange(days)}), how="cross")
    return rows.assign(repins=np.random.default_rng(1).poisson(1.0, len(rows)), requests=1)


def summary(users: pd.DataFrame, cfg) -> dict:
    return readout.summarize(EXPERIMENT, users, daily_frame(users), 7 * 86_400_000, cfg)


def test_a_true_lift_is_found_with_its_interval_and_cuped_narrows_it(base_config):
    result = summary(users_frame(8000, repin_lift=1.12), base_config)
    repins = result["metrics"]["repins_per_user"]
    assert repins["rel_effect_lo"] > 0 and repins["rel_effect"] == pytest.approx(0.12, abs=0.05)
    plain, cuped = repins["rel_effect_hi"] - repins["rel_effect_lo"], repins["cuped"]["rel_effect_hi"] - repins["cuped"]["rel_effect_lo"]
    assert cuped < 0.9 * plain
    assert result["metrics"]["clicks_per_user"]["rel_effect_lo"] < 0 < result["metrics"]["clicks_per_user"]["rel_effect_hi"]
    assert result["decision"]["verdict"] == "promote", result["decision"]
    assert set(result["segments"]) == {"core", "non_core"} and len(result["daily"]) == 7
    assert result["holdout_lift"]["repins_per_user"]["control"] > 0 and result["mde"]["rel_effect"] > 0


def test_a_loss_keeps_the_champion(base_config):
    result = summary(users_frame(8000, repin_lift=0.85), base_config)
    assert result["decision"]["verdict"] == "keep champion" and "loses" in result["decision"]["reasons"][0]


def test_a_harmed_guardrail_keeps_the_champion_even_with_a_primary_win(base_config):
    result = summary(users_frame(8000, repin_lift=1.12, hide_lift=1.25), base_config)
    assert result["decision"]["verdict"] == "keep champion"
    assert any("guardrail hides_per_user harmed" in r for r in result["decision"]["reasons"])


def test_lost_treatment_users_ring_the_srm_alarm_and_block_promotion(base_config):
    result = summary(users_frame(8000, repin_lift=1.12, drop_treatment=0.1), base_config)
    assert result["srm"]["ok"] is False and result["srm"]["p_value"] < 0.001
    assert result["decision"]["promote"] is False and "untrustworthy" in result["decision"]["reasons"][0]


def test_too_few_users_or_days_continue(base_config):
    small = summary(users_frame(300, repin_lift=1.0), base_config)
    assert small["decision"]["verdict"] == "continue"
    assert any("users in the smaller arm" in r for r in small["decision"]["reasons"])
    users = users_frame(8000, repin_lift=1.12)
    short = readout.summarize(EXPERIMENT, users, daily_frame(users, days=2), 2 * 86_400_000, base_config)
    assert short["decision"]["verdict"] == "continue" and any("days of data" in r for r in short["decision"]["reasons"])


def test_aa_re_randomisation_fires_at_about_alpha(base_config):
    aa = readout.aa_false_positive_rate(EXPERIMENT, users_frame(3000), repeats=60, cfg=base_config, seed=4)
    assert aa["repeats"] == 60 and 0.0 <= aa["false_positive_rate"] <= 0.15 and aa["srm_alarms"] <= 1


def test_the_html_report_says_the_verdict_first_and_fetches_nothing(base_config):
    page = readout.render_html(summary(users_frame(2000), base_config))
    assert page.index("Verdict:") < page.index("Lift per day") < page.index("Metrics")
    assert "http://" not in page and "https://" not in page and "data:image/png;base64," in page
