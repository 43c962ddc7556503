import math

import numpy as np
import pytest

from homefeed import metrics


def test_hit_at_k_matches_a_hand_computed_example():
    # request a: positive ranked 2nd -> hit; request b: positive ranked 4th -> miss;
    # request c: no positive -> not counted; request d: 3 candidates, a hit in any order -> not counted.
    groups = np.array(["a"] * 4 + ["b"] * 4 + ["c"] * 3 + ["d"] * 3)
    labels = np.array([0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1])
    scores = np.array([0.9, 0.8, 0.1, 0.2, 0.9, 0.8, 0.7, 0.1, 0.5, 0.4, 0.3, 0.9, 0.8, 0.1])
    assert metrics.hit_at_k(groups, labels, scores, k=3) == pytest.approx(0.5)
    assert metrics.hit_at_k(groups, labels, scores, k=2) == pytest.approx(1 / 3)  # d counts now: its positive is 3rd
    assert math.isnan(metrics.hit_at_k(groups, labels, scores, k=4))  # no request is longer than 4
    assert metrics.hit_at_k_counted(groups, labels, scores, k=3) == (pytest.approx(0.5), 2)  # a and b
    assert metrics.hit_at_k_counted(groups, labels, scores, k=4)[1] == 0


def test_hit_at_k_is_nan_without_positives():
    assert math.isnan(metrics.hit_at_k(np.array([1, 1]), np.array([0, 0]), np.array([0.1, 0.2])))


def test_request_auc_matches_sklearn_per_request_and_ignores_a_users_propensity():
    rng = np.random.default_rng(3)
    codes = np.repeat(np.arange(30), 7)
    labels = (rng.random(len(codes)) < 0.3).astype(int)
    scores = np.round(rng.random(len(codes)), 1)  # rounding makes ties, counted half as sklearn does
    auc_per_group, weight = metrics.request_aucs(codes, labels, scores, 30)
    for g in range(30):
        y, s = labels[codes == g], scores[codes == g]
        if 0 < y.sum() < len(y):
            assert weight[g] == 7 and auc_per_group[g] == pytest.approx(metrics.auc(y, s))
        else:
            assert weight[g] == 0  # one class only: not counted
    value, counted = metrics.request_auc(codes, labels, scores)
    assert counted == int((weight > 0).sum())
    assert value == pytest.approx(weight @ auc_per_group / weight.sum())
    # A per-request offset (who likes many things) moves the pooled AUC, not the AUC within requests.
    propensity = 10.0 * labels.reshape(30, 7).sum(1)[codes]  # the more likes a request holds, the higher all of it
    assert metrics.request_auc(codes, labels, scores + propensity)[0] == pytest.approx(value)
    assert metrics.auc(labels, scores + propensity) > metrics.auc(labels, scores) + 0.05
    # Replicates with every request once give the same value.
    assert metrics.request_auc_replicates(np.ones((1, 30)), auc_per_group, weight)[0] == pytest.approx(value)


def test_request_auc_is_nan_without_a_request_holding_both_labels():
    value, counted = metrics.request_auc(np.array([1, 1, 2]), np.array([1, 1, 0]), np.array([0.2, 0.3, 0.1]))
    assert math.isnan(value) and counted == 0


def test_auc_and_weights():
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.6, 0.4, 0.9])
    assert metrics.auc(labels, scores) == pytest.approx(0.75)
    # Up-weighting the misordered negative lowers the AUC.
    assert metrics.auc(labels, scores, np.array([1.0, 3.0, 1.0, 1.0])) < 0.75
    assert math.isnan(metrics.auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_head_metrics_against_hand_values():
    labels = np.array([0, 1, 1, 0])
    scores = np.array([0.2, 0.8, 0.6, 0.4])
    m = metrics.head_metrics(labels, scores)
    assert m["mse"] == pytest.approx(np.mean((scores - labels) ** 2))
    assert m["auc"] == pytest.approx(1.0)
    assert m["r2"] == pytest.approx(1 - 0.1 / 0.25)


def test_ranking_utility_is_the_weighted_sum():
    probs = np.array([[0.5, 0.2, 0.1, 0.3]])
    score = metrics.ranking_utility(probs, ("repin", "click", "closeup", "hide"), {"repin": 1.0, "hide": -2.0})
    assert score[0] == pytest.approx(0.5 - 0.6)


def test_replicate_metrics_match_the_plain_metrics_under_the_same_weights():
    rng = np.random.default_rng(0)
    labels = (rng.random(500) < 0.3).astype(int)
    scores = np.round(np.clip(labels * 0.3 + rng.random(500) * 0.7, 0, 1), 2)  # rounding makes ties
    weights = rng.integers(0, 4, size=(3, 500)).astype(float)
    replicates = metrics.head_metric_replicates(labels, scores, weights)
    for r in range(3):
        plain = metrics.head_metrics(labels, scores, weights[r])
        for name, value in plain.items():
            assert replicates[name][r] == pytest.approx(value, rel=1e-9, abs=1e-12), name


def test_hit_replicates_with_every_request_once_is_hit_at_k():
    rng = np.random.default_rng(1)
    codes = np.repeat(np.arange(50), 6)
    labels, scores = (rng.random(300) < 0.2).astype(int), rng.random(300)
    hit, has_positive = metrics.hits_per_group(codes, labels, scores, 3, 50)
    assert metrics.hit_replicates(np.ones((1, 50)), hit, has_positive)[0] == pytest.approx(metrics.hit_at_k(codes, labels, scores, 3))


def test_bootstrap_interval_brackets_the_statistic_and_narrows_with_data():
    rng = np.random.default_rng(0)

    def width(n_requests):
        codes = np.repeat(np.arange(n_requests), 5)
        values = rng.normal(1.0, 1.0, size=len(codes))
        counts = metrics.bootstrap_request_counts(n_requests, 200, seed=1)
        weights = counts[:, codes]
        lo, hi = metrics.percentile_interval(weights @ values / weights.sum(1))
        assert lo < values.mean() < hi
        return hi - lo

    assert width(2000) < width(100) / 2
    assert np.isnan(metrics.percentile_interval(np.array([np.nan, np.nan]))).all()
