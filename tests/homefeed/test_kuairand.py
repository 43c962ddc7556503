import pandas as pd
import pytest

from homefeed import kuairand, schema
from tests.conftest import KUAIRAND_DIR

pytestmark = pytest.mark.skipif(not KUAIRAND_DIR.exists(), reason="KuaiRand-Pure is not beside the checkout")


@pytest.fixture(scope="module")
def converted():
    """The log alone: the mapping checks below are about the log's own rows."""
    return kuairand.convert(KUAIRAND_DIR, history=False)


def test_the_pre_log_history_lands_before_every_users_first_impression():
    log, snapshot = kuairand.convert(KUAIRAND_DIR)
    prefix = log.actions[log.actions["ts"] < snapshot]
    assert set(prefix["action"]) == {"repin", "closeup"} and len(prefix) > 200_000
    first = log.impressions.groupby("user_id")["ts"].min().rename("first")
    placed = prefix.merge(first, left_on="user_id", right_index=True)
    assert (placed["ts"] <= placed["first"] - kuairand.DEFAULT_GUARD_MS).all()


def test_mapping_keeps_ids_off_the_padding_id_and_requests_hourly(converted):
    log, snapshot = converted
    imps = log.impressions
    assert imps["pin_id"].min() >= 1 and imps["user_id"].min() >= 1
    assert not imps.duplicated(["request_id", "pin_id"]).any()
    assert imps.groupby("request_id")["ts"].nunique().max() == 1
    raw = pd.read_csv(KUAIRAND_DIR / "log_standard_4_25_to_5_03_pure.csv", usecols=["user_id", "video_id", "time_ms"]).drop_duplicates()
    assert len(imps) <= len(raw) and len(imps) > 0.9 * len(raw)


def test_actions_follow_the_documented_mapping(converted):
    log, _ = converted
    counts = log.actions["action"].value_counts()
    raw = pd.read_csv(KUAIRAND_DIR / "log_standard_4_25_to_5_03_pure.csv").drop_duplicates()
    assert counts["hide"] <= raw["is_hate"].sum() and counts["hide"] > 0.9 * raw["is_hate"].sum()
    assert counts["repin"] <= raw["is_like"].sum()
    assert set(counts.index) <= set(schema.ACTION_NAMES)
    first_seen = log.impressions.groupby(["user_id", "pin_id"], as_index=False)["ts"].min()
    paired = log.actions.merge(first_seen, on=["user_id", "pin_id"], suffixes=("", "_first_impression"))
    assert len(paired) == len(log.actions)
    assert (paired["ts"] > paired["ts_first_impression"]).all()  # every action follows an impression


def test_pin_and_user_features(converted):
    log, _ = converted
    assert len(log.pins) == 7583 and log.pins["embedding"].map(len).eq(schema.EMBEDDING_DIM).all()
    assert log.pins["category"].between(0, schema.NUM_CATEGORIES - 1).all()
    assert len(log.users) == 27285


def test_missing_log_files_fail_clearly(tmp_path):
    with pytest.raises(kuairand.KuaiRandFormatError, match="no log_"):
        kuairand.convert(tmp_path)
