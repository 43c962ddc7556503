"""Champion/challenger gates (TFX's "blessing"): absolute floors and changes against the champion.

Both models are scored on the same evaluation data in the same run before this is called.
Every check says in words why it failed; a model is promoted only if all pass.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from homefeed import schema
from homefeed.config import GatesConfig

OVERALL = "overall"


@dataclass(frozen=True)
class GateCheck:
    name: str
    passed: bool
    observed: float | None
    threshold: float
    reason: str


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    checks: list[GateCheck] = field(default_factory=list)
    champion_version: str | None = None

    @property
    def reasons(self) -> list[str]:
        return [c.reason for c in self.checks if not c.passed]

    def summary(self) -> str:
        if self.passed:
            against = f"champion v{self.champion_version}" if self.champion_version else "no champion (first model)"
            checks = f"{len(self.checks)} check{'' if len(self.checks) == 1 else 's'}"
            return f"gate passed ({checks}, against {against})"
        return "gate failed: " + "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.summary()}


def _metric(evaluation: dict[str, Any], scope: str, kind: str, head: str) -> float | None:
    metrics = evaluation["overall"] if scope == OVERALL else evaluation["slices"].get(scope, {})
    value = metrics.get(head, {}).get(kind)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _label(scope: str, name: str) -> str:
    return name if scope == OVERALL else f"{scope}: {name}"


def _floor(scope: str, head: str, auc: float | None, floor: float) -> GateCheck:
    passed = auc is not None and auc >= floor
    where = "at or above" if passed else "below"
    return GateCheck(_label(scope, f"auc/{head} >= {floor}"), passed, auc, floor,
                     _label(scope, f"auc/{head} is {auc if auc is None else round(auc, 4)}, {where} the floor {floor}"))


def _relative(scope: str, metric: str, new: float | None, old: float | None, limit: float, worse: str) -> GateCheck | None:
    """Challenger vs champion: ``worse`` is "drop" when lower is worse, "rise" when higher is."""
    if new is None or old is None:
        return None  # a metric undefined for either model (no positives in a slice) cannot be compared
    change = new - old
    passed = change >= -limit if worse == "drop" else change <= limit
    verb = "fell" if worse == "drop" else "rose"
    return GateCheck(_label(scope, f"{metric} {worse} <= {limit}"), passed, change, limit if worse == "rise" else -limit,
                     _label(scope, f"{metric} {verb} by {abs(change):.4f} (champion {old:.4f} → challenger {new:.4f}), "
                                   f"{'within' if passed else 'more than'} {limit}"))


def decide(cfg: GatesConfig, challenger: dict[str, Any], champion: dict[str, Any] | None, champion_version: str | None = None) -> GateDecision:
    """``challenger``/``champion`` are evaluation results (``homefeed.evaluate.evaluate_scorer``).

    Every check applies to the whole evaluation set and to each slice in ``cfg.slices``.
    """
    checks: list[GateCheck] = []
    for scope in (OVERALL, *cfg.slices):
        checks += [_floor(scope, head, _metric(challenger, scope, "auc", head), floor) for head, floor in cfg.min_auc.items()]
        if champion is None:
            continue
        relative = [(f"auc/{head}", "auc", head, limit, "drop") for head, limit in cfg.max_auc_drop.items()]
        relative += [(f"HIT@k/{head}", "hit", head, limit, "drop") for head, limit in cfg.max_hit_drop.items()]
        if cfg.max_hide_hit_rise is not None:
            relative.append((f"HIT@k/{schema.NEGATIVE_HEAD}", "hit", schema.NEGATIVE_HEAD, cfg.max_hide_hit_rise, "rise"))
        for metric, kind, head, limit, worse in relative:
            check = _relative(scope, metric, _metric(challenger, scope, kind, head), _metric(champion, scope, kind, head), limit, worse)
            if check is not None:
                checks.append(check)
    return GateDecision(all(c.passed for c in checks), checks, champion_version)
