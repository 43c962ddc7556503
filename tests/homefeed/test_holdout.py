import numpy as np

from homefeed.holdout import holdout_mask, is_holdout


def test_assignment_is_stable_and_close_to_the_fraction():
    users = np.arange(100_000)
    first = holdout_mask(users, 0.01, "salt-a")
    again = holdout_mask(users, 0.01, "salt-a")
    assert np.array_equal(first, again)
    assert abs(first.mean() - 0.01) < 0.002


def test_salt_reshuffles_the_group():
    users = np.arange(20_000)
    a, b = holdout_mask(users, 0.05, "salt-a"), holdout_mask(users, 0.05, "salt-b")
    overlap = (a & b).sum() / a.sum()
    assert overlap < 0.2  # independent groups overlap by about the fraction


def test_zero_fraction_holds_out_nobody():
    assert not any(is_holdout(u, 0.0, "s") for u in range(1000))
