"""Online experiments as registry state: start, look up, stop (and promote on the online result).

An experiment serves a registered version (the challenger) to a slice of users beside the
champion (:mod:`homefeed.arms` says who is where). Its definition lives on the registered model in
MLflow, so every service replica and every readout reads the same one:

- ``experiment.<name>``: the definition as JSON (versions, traffic, salt, start, who and why; on
  stop, when and how it ended);
- ``experiment.running``: the name of the running experiment; absent when none runs (one at a time).

Starting and stopping hold the registry's change lock and write an audit line, as promotions do.
"""

from __future__ import annotations

import getpass
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from homefeed import arms, registry, storage
from homefeed.config import Config
from homefeed.errors import PermanentError

RUNNING_TAG = "experiment.running"
TAG_PREFIX = "experiment."
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ExperimentRefused(registry.PromotionRefused):
    """An experiment change the rules do not allow; nothing was changed."""


class UnknownExperiment(PermanentError, LookupError):
    """No experiment of that name in the registry."""


@dataclass(frozen=True)
class Experiment:
    name: str
    champion_version: str
    challenger_version: str
    traffic: float
    salt: str
    holdout_fraction: float
    holdout_salt: str
    start_ms: int
    actor: str
    reason: str
    status: str = "running"  # running | stopped
    end_ms: int | None = None
    outcome: str = ""  # on stop: promoted | stopped

    def arm(self, user_id: int) -> str:
        return arms.arm_of(user_id, self.holdout_fraction, self.holdout_salt, self.traffic, self.salt)

    def allocation(self) -> dict[str, float]:
        """The configured share of all users per arm."""
        inside = 1.0 - self.holdout_fraction
        return {arms.HOLDOUT: self.holdout_fraction, arms.CONTROL: inside * self.traffic / 2,
                arms.TREATMENT: inside * self.traffic / 2, arms.NONE: inside * (1 - self.traffic)}

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Experiment":
        return cls(**json.loads(text))


def _tag(name: str) -> str:
    return f"{TAG_PREFIX}{name}"


def running(cfg: Config) -> Experiment | None:
    """The running experiment, or None (one registry read: services call this on every poll)."""
    tags = registry.model_tags(cfg)
    name = tags.get(RUNNING_TAG)
    return Experiment.from_json(tags[_tag(name)]) if name and _tag(name) in tags else None


def get(cfg: Config, name: str) -> Experiment:
    tags = registry.model_tags(cfg)
    if _tag(name) not in tags or name == "running":
        known = sorted(k[len(TAG_PREFIX):] for k in tags if k.startswith(TAG_PREFIX) and k != RUNNING_TAG)
        raise UnknownExperiment(f"no experiment {name!r} in the registry of {cfg.registry.model_name!r}"
                                + (f"; known: {', '.join(known)}" if known else "; none was ever started"))
    return Experiment.from_json(tags[_tag(name)])


def start(cfg: Config, challenger: str, name: str | None = None, traffic: float | None = None, reason: str = "",
          actor: str | None = None, start_ms: int | None = None) -> Experiment:
    """Start an A/B test of ``challenger`` against the champion; refused (nothing changed) when the
    version is unknown, another experiment runs, the traffic is outside (0, 1], there is no
    champion, or the challenger's holdout configuration differs from the champion's."""
    traffic = cfg.experiments.traffic if traffic is None else traffic
    if not 0 < traffic <= 1:
        raise ExperimentRefused(f"--traffic must be in (0, 1], got {traffic}")
    challenger_tags = registry.version_tags(cfg, challenger)
    if challenger_tags is None:
        raise ExperimentRefused(f"{cfg.registry.model_name} has no version {challenger}")
    name = name or f"v{challenger}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    if not NAME_PATTERN.match(name) or name == "running":
        raise ExperimentRefused(f"experiment name {name!r}: letters, digits, '.', '_' and '-' only (at most 64)")
    with registry.audited_change(cfg) as audit:
        tags = registry.model_tags(cfg)
        if tags.get(RUNNING_TAG):
            raise ExperimentRefused(f"experiment {tags[RUNNING_TAG]!r} is running; stop it first "
                                    f"(`homefeed experiment stop {tags[RUNNING_TAG]}`): one experiment at a time")
        if _tag(name) in tags:
            raise ExperimentRefused(f"an experiment named {name!r} already ran; choose another --name")
        champion = registry.alias_version(cfg, registry.CHAMPION)
        if champion is None:
            raise ExperimentRefused("there is no champion to test against; promote a version first")
        holdout = registry.holdout_of_tags(registry.version_tags(cfg, champion) or {})
        if registry.holdout_of_tags(challenger_tags) != holdout or len(holdout) != len(registry.HOLDOUT_TAGS):
            raise ExperimentRefused(f"version {challenger}'s holdout configuration {registry.holdout_of_tags(challenger_tags)} "
                                    f"differs from champion v{champion}'s {holdout}: its users would not be the same group")
        experiment = Experiment(
            name=name, champion_version=champion, challenger_version=challenger, traffic=float(traffic),
            salt=f"{name}-{secrets.token_hex(8)}", holdout_fraction=float(holdout["holdout.fraction"]),
            holdout_salt=holdout["holdout.salt"], start_ms=start_ms or int(time.time() * 1000),
            actor=actor or getpass.getuser(), reason=reason,
        )
        registry.set_model_tags(cfg, {_tag(name): experiment.to_json(), RUNNING_TAG: name})
        audit(challenger, {"event": "experiment_start", "experiment": name, "version": challenger, "champion": champion,
                           "traffic": traffic, "reason": reason, "actor": experiment.actor, "at_ms": experiment.start_ms,
                           "aa_test": challenger == champion})
    return experiment


def default_raw_root(cfg: Config, experiment: Experiment) -> str | None:
    """The raw root the champion was trained from (its instances' manifest), if it can be found."""
    tags = registry.version_tags(cfg, experiment.champion_version) or {}
    try:
        return storage.read_manifest(tags["data.instances"])["raw_root"]
    except (KeyError, storage.StorageError, OSError):
        return None


def promote_on_verdict(cfg: Config, readout: dict[str, Any], actor: str) -> dict[str, Any] | None:
    """With ``experiments.auto_promote``: stop the experiment and promote on a ``promote`` verdict."""
    if not cfg.experiments.auto_promote or readout["decision"]["verdict"] != "promote":
        return None
    return stop(cfg, readout["experiment"], promote=True, reason=f"auto-promoted on the readout of {readout['end']}", actor=actor)


def latest_readout(cfg: Config, name: str) -> dict[str, Any] | None:
    path = readout_dir(cfg, name) / "readout.json"
    return json.loads(path.read_text()) if path.exists() else None


def readout_dir(cfg: Config, name: str) -> Path:
    """Where the experiment's latest readout is published (``homefeed experiment readout``'s default)."""
    return storage.local_path(cfg.storage.root) / "experiments" / name


def stop(cfg: Config, name: str, promote: bool = False, force: bool = False, reason: str = "",
         actor: str | None = None) -> dict[str, Any]:
    """End the experiment (every user is back on the champion at the next poll). With ``promote``,
    the challenger becomes champion only when the latest readout says promote (or ``force`` with a
    reason), through :func:`homefeed.registry.promote`'s compare-and-set and audit log."""
    experiment = get(cfg, name)
    if experiment.status != "running":
        raise ExperimentRefused(f"experiment {name!r} is not running (it ended with {experiment.outcome or 'a stop'})")
    promotion = None
    if promote:
        promotion = _promote_challenger(cfg, experiment, force, reason, actor)
    ended = replace(experiment, status="stopped", end_ms=int(time.time() * 1000), outcome="promoted" if promotion else "stopped")
    with registry.audited_change(cfg) as audit:
        registry.set_model_tags(cfg, {_tag(name): ended.to_json()}, delete=(RUNNING_TAG,))
        audit(experiment.challenger_version, {"event": "experiment_stop", "experiment": name, "version": experiment.challenger_version,
                                              "promoted": bool(promotion), "forced": force, "reason": reason,
                                              "actor": actor or getpass.getuser(), "at_ms": ended.end_ms})
    return {"experiment": asdict(ended), "promotion": promotion}


def _promote_challenger(cfg: Config, experiment: Experiment, force: bool, reason: str, actor: str | None) -> dict[str, Any] | None:
    readout = latest_readout(cfg, experiment.name)
    verdict = (readout or {}).get("decision", {}).get("verdict")
    if verdict != "promote":
        if not force:
            said = "no readout yet" if readout is None else f"the latest readout says {verdict!r}: " + "; ".join(readout["decision"]["reasons"])
            raise ExperimentRefused(f"not promoting {experiment.challenger_version}: {said}. "
                                    "Run `homefeed experiment readout`, or promote anyway with --force --reason")
        if not reason:
            raise ExperimentRefused("a forced promotion needs --reason")
    if experiment.challenger_version == experiment.champion_version:
        return None  # an A/A test: nothing to move
    gate = f"online experiment {experiment.name}: {verdict or 'no readout'}" + (" (forced)" if verdict != "promote" else "")
    return registry.promote(cfg, experiment.challenger_version, reason=reason or gate, gate=gate, force=True, actor=actor,
                            expected_champion=experiment.champion_version)


def status(cfg: Config, exposures_root: Path | None = None) -> dict[str, Any]:
    """The running experiment (or none), its arms' configured shares and, from the exposure log, its users so far."""
    experiment = running(cfg)
    if experiment is None:
        return {"running": None}
    out: dict[str, Any] = {"running": asdict(experiment), "allocation": experiment.allocation()}
    if exposures_root is not None:
        out["users_so_far"] = users_so_far(exposures_root, experiment.name)
    readout = latest_readout(cfg, experiment.name)
    if readout is not None:
        out["latest_readout"] = {"end": readout.get("end"), "decision": readout.get("decision")}
    return out


def users_so_far(exposures_root: Path, name: str) -> dict[str, int]:
    """Distinct users per arm in the published exposure log (what a readout would count)."""
    from homefeed.event_log import read_served

    served = read_served(exposures_root, columns=["user_id", "arm", "experiment"]).to_pandas()
    served = served[served["experiment"] == name]
    return {arm: int(served.loc[served["arm"] == arm, "user_id"].nunique()) for arm in arms.ARMS}
