import numpy as np
import pyarrow as pa
import pytest

from homefeed import evaluate, schema


def table(n_requests=40, per_request=5, seed=0):
    rng = np.random.default_rng(seed)
    n = n_requests * per_request
    data = {
        "request_id": np.repeat([f"r{i}" for i in range(n_requests)], per_request),
        schema.SEGMENT: np.where(np.arange(n) % 2 == 0, "core", "new"),
        "source": np.where(np.arange(n) % 3 == 0, "follow", "pfy"),
        schema.SAMPLE_WEIGHT: np.ones(n, np.float32),
    }
    for head in schema.HEADS:
        data[schema.label_column(head)] = (rng.random(n) < 0.2).astype(np.int32)
    data[schema.label_column("hide")] = (np.arange(n) % per_request == 0).astype(np.int32)  # one hide per request
    return pa.table(data)


def test_perfect_scores_give_auc_and_hit_one(base_config):
    t = table()
    labels = np.stack([t.column(c).to_numpy() for c in schema.LABEL_COLUMNS], axis=1).astype(float)
    result = evaluate.evaluate_probabilities(t, labels * 0.9 + 0.05, base_config)
    assert result["overall"]["repin"]["auc"] == pytest.approx(1.0)
    assert result["overall"]["repin"]["hit"] == pytest.approx(1.0)
    assert result["overall"]["repin"]["gauc"] == pytest.approx(1.0)
    assert result["overall"]["repin"]["gauc_requests"] > 0
    assert set(result["slices"]) == {"core", "non_core", "follow", "pfy"}
    lo, hi = result["intervals"]["overall"]["repin"]["auc"]
    assert lo == pytest.approx(1.0) and hi == pytest.approx(1.0)
    # Every metric of every head and slice has an interval around its value.
    assert set(result["intervals"]) == {"overall", "core", "non_core", "follow", "pfy"}
    for scope, heads in result["intervals"].items():
        values = result["overall"] if scope == "overall" else result["slices"][scope]
        for head, intervals in heads.items():
            assert set(intervals) == set(values[head]) - set(evaluate.COUNTS)  # counts, not metrics with intervals
            lo, hi = intervals["logloss"]
            assert lo - 1e-9 <= values[head]["logloss"] <= hi + 1e-9


def test_hide_hit_ranks_by_the_feed_utility_not_the_hide_head(base_config):
    t = table()
    labels = np.stack([t.column(c).to_numpy() for c in schema.LABEL_COLUMNS], axis=1).astype(float)
    probs = np.full(labels.shape, 0.1)
    hide = schema.HEADS.index("hide")
    probs[:, hide] = labels[:, hide]  # a perfect hide head pushes hidden pins *down* the feed
    result = evaluate.evaluate_probabilities(t, probs, base_config)
    assert result["overall"]["hide"]["auc"] == pytest.approx(1.0)
    assert result["overall"]["hide"]["hit"] == pytest.approx(0.0)  # no hidden pin in anyone's top 3


def test_paired_differences_are_zero_for_the_same_model_and_separate_a_better_one(base_config):
    t = table(n_requests=200)
    labels = np.stack([t.column(c).to_numpy() for c in schema.LABEL_COLUMNS], axis=1).astype(float)
    rng = np.random.default_rng(1)
    noise = rng.random(labels.shape)
    weak = 0.2 * labels + noise  # informative but noisy
    strong = 0.8 * labels + noise
    result = evaluate.paired_differences(t, {"control": weak, "same": weak.copy(), "strong": strong}, "control", base_config)
    assert set(result) == {"same", "strong"}  # the reference is not paired with itself
    assert result["same"]["repin"]["auc"] == pytest.approx([0.0, 0.0, 0.0])
    difference, lo, hi = result["strong"]["repin"]["auc"]
    assert 0.0 < lo <= difference <= hi
    # The paired interval is narrower than the two separate intervals put together.
    separate = {name: evaluate.evaluate_probabilities(t, p, base_config)["intervals"]["overall"]["repin"]["auc"] for name, p in (("weak", weak), ("strong", strong))}
    assert hi - lo < (separate["weak"][1] - separate["weak"][0]) + (separate["strong"][1] - separate["strong"][0])


def test_paired_differences_against_several_references_match_one_at_a_time(base_config):
    t = table(n_requests=60)
    rng = np.random.default_rng(4)
    probs = {name: rng.random((t.num_rows, len(schema.HEADS))) for name in ("a", "b", "c")}
    both = evaluate.paired_differences_against(t, probs, ("a", "b"), base_config)
    assert set(both) == {"a", "b"} and set(both["b"]) == {"a", "c"}
    for reference in ("a", "b"):
        assert both[reference] == evaluate.paired_differences(t, probs, reference, base_config)


def test_paired_differences_refuse_an_empty_split(base_config):
    empty = table().slice(0, 0)
    with pytest.raises(ValueError, match="non-empty test split"):
        evaluate.paired_differences(empty, {"a": np.zeros((0, len(schema.HEADS)))}, "a", base_config)


def test_a_per_request_offset_lifts_auc_but_not_the_auc_within_requests(base_config):
    t = table(n_requests=200)
    labels = np.stack([t.column(c).to_numpy() for c in schema.LABEL_COLUMNS], axis=1).astype(float)
    rng = np.random.default_rng(2)
    noise = rng.random(labels.shape) * 0.5
    request = np.repeat(np.arange(200), 5)
    liker = labels[:, 0].reshape(200, 5).any(1)[request]  # the requests that hold a like
    propensity = noise + 0.4 * liker[:, None]  # knows who likes, not which candidate
    result = evaluate.paired_differences(t, {"flat": noise, "propensity": propensity}, "flat", base_config)
    auc_change, auc_lo, _ = result["propensity"]["repin"]["auc"]
    assert auc_lo > 0.05  # the pooled AUC rewards knowing the user
    assert result["propensity"]["repin"]["gauc"] == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)
