"""Holdout assignment: users who never get the model (Pinnability's long-term control group).

One function decides, from a hash of (salt, user_id), so training reports, promotion and serving
agree on who is held out without storing a list. Changing the salt reshuffles the group, which
is why promotion refuses a salt change unless it is asked for explicitly.
"""

from __future__ import annotations

import hashlib

import numpy as np

_SCALE = float(1 << 64)


def holdout_score(user_id: int, salt: str) -> float:
    """A stable uniform number in [0, 1) for the user."""
    digest = hashlib.sha256(f"{salt}:{int(user_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def is_holdout(user_id: int, fraction: float, salt: str) -> bool:
    return holdout_score(user_id, salt) < fraction


def holdout_mask(user_ids: np.ndarray, fraction: float, salt: str) -> np.ndarray:
    return np.fromiter((is_holdout(u, fraction, salt) for u in user_ids), dtype=bool, count=len(user_ids))
