"""``homefeed simulate-experiment``: an online experiment against the simulator's ground truth.

The simulator knows which model really ranks better, so the readout can be checked:

1. a warm-up log of chronological feeds as busy as the experiment will be (its last 14 days are
   the readout's pre-period, CUPED's covariate); a model is trained on its last 4 days;
2. the champion and the challenger are registered: ``same`` is the champion itself (an A/A
   test); ``worse`` the champion's model retrained and served with its ranking utility reversed
   (worst first); ``better`` the mirror: the trained model against a champion serving worst first.
   Subtler challengers were tried first and were not decided at this scale (position moves
   engagement by only 0.03 logit per slot in the simulator): TransAct v1.1 against a ``none``
   champion gave +1.0% [-5.1%, +7.4%] repins per user at 1,770 users per arm, and the ranker
   against a champion that does not rank (zero utility) -1.4% [-15%, +15%] at 300 per arm;
3. the experiment starts; for ``days`` days simulated users request feeds, the **service's own
   ranking code** (:class:`homefeed.serving.service.RankingService`) ranks each with the user's arm's
   model and records it in its exposure log, and users react to what they are shown (position
   matters); their actions go to the service's event log and the raw log;
4. ``--drop-treatment-users F`` then loses every exposure and action of a random share F of the
   treatment users (a client logging bug), which the SRM check must catch;
5. the same readout as ``homefeed experiment readout`` runs on those files; ``--aa-repeats K``
   re-randomises the same users K times and reports the false-positive rate.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from homefeed import arms, experiments, loop, readout, registry, schema, simulate, storage
from homefeed.config import Config
from homefeed.event_log import SERVED, log_root

CHALLENGERS = ("same", "worse", "better")
MODEL = "none"  # the ranker without a sequence: trains in seconds, ranks a request in milliseconds
WARMUP_DAYS = 14  # the readout's pre-period (experiments.pre_period_days)
TRAINING_DAYS = 4  # the model learns from the warm-up's last days (train, validation, test)
USERS = 7000  # ~2,400 exposed per arm in 7 days: decides same, worse and better
# Losing a share f of the treatment users gives an SRM chi-square of about n·f²/(2 − f) for n
# control users (0.0053·n at f = 0.1). The alarm (p < 0.001: above 10.8) is reached in 95% of runs
# from an expected 24 (noncentral chi-square, (3.29 + 1.64)²): ~4,600 exposed per arm, which 14,000
# simulated users give in 7 days (about a third of them are exposed per arm).
USERS_WITH_LOSS = 14000


def default_users(drop_treatment_users: float) -> int:
    """Simulated users when ``--users`` is not given: enough for the case to be decided."""
    return USERS_WITH_LOSS if drop_treatment_users > 0 else USERS


@dataclass(frozen=True)
class SimSettings:
    challenger: str
    users: int = USERS
    days: int = 7
    traffic: float = 1.0
    requests_per_user_day: float = 1.5
    aa_repeats: int = 0
    drop_treatment_users: float = 0.0
    holdout_fraction: float = 0.1
    seed: int = 23


def sim_config(cfg: Config, out: Path, settings: SimSettings) -> Config:
    """Its own storage root and registry; gates loose (the online experiment decides, not the offline gate)."""
    loop_cfg = loop.loop_config(cfg, out, loop.LoopSettings(days=settings.days, retrain_every=0, model=MODEL,
                                                            holdout_fraction=settings.holdout_fraction, users=settings.users))
    return loop_cfg.with_overrides({
        "gates": {"min_auc": {}, "max_auc_drop": {}, "max_hit_drop": {}, "max_hide_hit_rise": None},
        "simulator": {"seed": settings.seed},
        "experiments": {"decision": {"min_days": min(settings.days, loop_cfg.experiments.decision.min_days)}},
    })


def _register(cfg: Config, raw: Path, first: Any, last: Any, label: str, utility: dict[str, float] | None = None,
              promote: bool = False) -> str:
    """Train ``MODEL`` on the warm-up's last days and register it (serving ``utility`` if given)."""
    from homefeed import pipeline

    run_cfg = cfg if utility is None else cfg.with_overrides({"ranking": {"utility": utility}})
    decision = pipeline.retrain_in_process(run_cfg, str(raw), pipeline.run_dir(cfg, label), first, last, auto_promote=promote)
    if not decision.passed:
        raise loop.LoopError(f"the {label} model was not registered: {decision.summary}")
    return registry.alias_version(cfg, registry.CHAMPION if promote else registry.CHALLENGER)


def register_arms(cfg: Config, challenger: str, raw: Path, first: Any, last: Any) -> tuple[str, str]:
    """(champion, challenger) versions for the case, the champion promoted."""
    reverse = {head: -weight for head, weight in cfg.ranking.utility.items()}
    champion = _register(cfg, raw, first, last, "champion", reverse if challenger == "better" else None, promote=True)
    if challenger == "same":
        return champion, champion
    return champion, _register(cfg, raw, first, last, f"challenger-{challenger}", reverse if challenger == "worse" else cfg.ranking.utility)


def _lose_users(paths: list[Path], user_ids: set[int]) -> int:
    """Rewrite each Parquet file without the given users' rows (atomically); rows removed."""
    removed = 0
    wanted = list(user_ids)
    for path in paths:
        table = pq.read_table(path)
        keep = pc.invert(pc.is_in(table["user_id"], value_set=pa.array(wanted, type=table.schema.field("user_id").type)))
        kept = table.filter(keep)
        removed += table.num_rows - kept.num_rows
        staging = path.with_name(f".{path.name}.tmp")
        pq.write_table(kept, staging)
        staging.replace(path)
    return removed


def run(cfg: Config, out: Path, settings: SimSettings, say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """The whole simulation (``out`` replaced); returns the readout, with ``aa`` when asked."""
    from homefeed.serving.service import RankingService
    from homefeed.spark import session

    if out.exists():
        shutil.rmtree(out)
    cfg = sim_config(cfg, out, settings)
    raw = out / "raw"
    mean_candidates = (cfg.simulator.candidates_min + cfg.simulator.candidates_max) / 2
    n_requests = max(1, int(settings.users * settings.requests_per_user_day))
    warmup = cfg.simulator.model_copy(update={"days": WARMUP_DAYS, "users": settings.users,
                                              "impressions": int(n_requests * mean_candidates * WARMUP_DAYS)})
    log = simulate.simulate(warmup)
    simulate.write_raw(log, raw, snapshot_ts=simulate._epoch_ms(warmup.start_date), manifest_extra={"source": "simulate-experiment"})
    last_warmup = warmup.start_date + timedelta(days=WARMUP_DAYS - 1)
    first_training = last_warmup - timedelta(days=TRAINING_DAYS - 1)
    say(f"warm-up: {len(log.impressions):,} impressions of {settings.users} users over {WARMUP_DAYS} days (the pre-period); "
        f"training {MODEL} on its last {TRAINING_DAYS} days")
    champion, challenger = register_arms(cfg, settings.challenger, raw, first_training, last_warmup)
    say(f"champion v{champion}, challenger v{challenger} ({settings.challenger})")
    start_day = last_warmup + timedelta(days=1)
    experiment = experiments.start(cfg, challenger, f"sim-{settings.challenger}", settings.traffic,
                                   reason=f"simulate-experiment --challenger {settings.challenger}", actor="simulate-experiment",
                                   start_ms=simulate._epoch_ms(start_day))
    service = RankingService.from_registry(cfg)
    if not service.experiment.active:
        raise experiments.ExperimentRefused(f"the service did not load the challenger: {service.experiment.error}")
    rng = np.random.default_rng(settings.seed + 1)
    for offset in range(settings.days):
        day_started = time.perf_counter()
        day = start_day + timedelta(days=offset)
        impressions, actions = loop.simulate_day(rng, log.world, simulate._epoch_ms(day), n_requests, cfg, service,
                                                 lambda user: service.arm(user) == arms.HOLDOUT)
        loop.append_day(raw, day.isoformat(), impressions, actions)
        say(f"day {offset + 1}/{settings.days}: {impressions['request_id'].nunique()} requests of {impressions['user_id'].nunique()} users "
            f"ranked and logged, {len(actions)} actions ({time.perf_counter() - day_started:.0f} s)")
    service.close()  # publishes the exposure and event journals
    events = log_root(cfg.serving.event_log, cfg.storage.root)
    if settings.drop_treatment_users > 0:
        _drop_treatment(events, raw, experiment, settings, rng, say)
    end_ms = simulate._epoch_ms(start_day + timedelta(days=settings.days)) - 1
    result = readout.run(cfg, experiment, session(cfg, "experiment-readout"), str(events), str(raw),
                         experiments.readout_dir(cfg, experiment.name), end_ms=end_ms)
    if settings.aa_repeats:
        users = pq.read_table(experiments.readout_dir(cfg, experiment.name) / "users").to_pandas()
        result["aa"] = readout.aa_false_positive_rate(experiment, users, settings.aa_repeats, cfg, seed=settings.seed)
        storage.write_json(experiments.readout_dir(cfg, experiment.name) / "readout.json", result)
    return result


def _drop_treatment(events: Path, raw: Path, experiment: experiments.Experiment, settings: SimSettings,
                    rng: np.random.Generator, say: Callable[[str], None]) -> None:
    served = pq.read_table(events / SERVED, columns=["user_id"]).column("user_id").to_numpy()
    treated = np.array(sorted({int(u) for u in served if experiment.arm(int(u)) == arms.TREATMENT}))
    lost = set(rng.choice(treated, size=int(len(treated) * settings.drop_treatment_users), replace=False).tolist()) if len(treated) else set()
    start_dt = simulate._day(np.array([experiment.start_ms]))[0]
    files = storage.list_files(events / SERVED) + storage.list_files(events / schema.ACTIONS)
    files += [p for p in storage.list_files(raw / schema.ACTIONS) if p.parent.name.split("=")[1] >= start_dt]
    removed = _lose_users(files, lost)
    say(f"lost the logs of {len(lost)} of {len(treated)} treatment users ({removed} rows), as a client logging bug would")
