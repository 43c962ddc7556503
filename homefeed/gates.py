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
            return f"gate passed ({len(self.checks)} checks, against {against})"
        return "gate failed: " + "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.summary()}


def _metric(evaluation: dict[str, Any], kind: str, head: str) -> float | None:
    value = evaluation["overall"].get(head, {}).get(kind)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def decide(cfg: GatesConfig, challenger: dict[str, Any], champion: dict[str, Any] | None, champion_version: str | None = None) -> GateDecision:
    """``challenger``/``champion`` are evaluation results (``homefeed.evaluate.evaluate_scorer``)."""
    checks: list[GateCheck] = []
    for head, floor in cfg.min_auc.items():
        auc = _metric(challenger, "auc", head)
        ok = auc is not None and auc >= floor
        checks.append(GateCheck(f"auc/{head} >= {floor}", ok, auc, floor,
                                f"auc/{head} is {auc if auc is None else round(auc, 4)}, below the floor {floor}"))
    if champion is not None:
        for head, max_drop in cfg.max_auc_drop.items():
            new, old = _metric(challenger, "auc", head), _metric(champion, "auc", head)
            if new is None or old is None:
                continue
            checks.append(GateCheck(f"auc/{head} drop <= {max_drop}", new >= old - max_drop, new - old, -max_drop,
                                    f"auc/{head} fell by {old - new:.4f} (champion {old:.4f} → challenger {new:.4f}), more than {max_drop}"))
        for head, max_drop in cfg.max_hit_drop.items():
            new, old = _metric(challenger, "hit", head), _metric(champion, "hit", head)
            if new is None or old is None:
                continue
            checks.append(GateCheck(f"hit@k/{head} drop <= {max_drop}", new >= old - max_drop, new - old, -max_drop,
                                    f"HIT@k/{head} fell by {old - new:.4f} (champion {old:.4f} → challenger {new:.4f}), more than {max_drop}"))
        if cfg.max_hide_hit_rise is not None:
            new, old = _metric(challenger, "hit", schema.NEGATIVE_HEAD), _metric(champion, "hit", schema.NEGATIVE_HEAD)
            if new is not None and old is not None:
                rise = cfg.max_hide_hit_rise
                checks.append(GateCheck(f"hit@k/{schema.NEGATIVE_HEAD} rise <= {rise}", new <= old + rise, new - old, rise,
                                        f"HIT@k/{schema.NEGATIVE_HEAD} rose by {new - old:.4f} (champion {old:.4f} → challenger {new:.4f}), more than {rise}"))
    return GateDecision(all(c.passed for c in checks), checks, champion_version)
