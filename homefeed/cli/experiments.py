"""``homefeed experiment …`` and ``homefeed simulate-experiment``: online A/B tests from the command line.

    homefeed experiment start --challenger 7 [--name NAME] [--traffic 0.2] [--reason TEXT]
    homefeed experiment status
    homefeed experiment readout NAME [--raw DIR] [--out DIR]
    homefeed experiment stop NAME [--promote] [--force --reason TEXT]
    homefeed simulate-experiment --out DIR --challenger same|worse|better [...]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from homefeed.cli.common import ConfigOption, config as _config, refusals as _refusals
from homefeed.config import Config

commands = typer.Typer()
experiment_app = typer.Typer(help="Online A/B tests of a challenger against the champion: start, status, readout, stop.",
                             no_args_is_help=True)
commands.add_typer(experiment_app, name="experiment")


def _exposure_root(cfg: Config) -> Path:
    from homefeed.event_log import log_root

    return log_root(cfg.serving.event_log, cfg.storage.root)


@experiment_app.command("start")
def start(
    challenger: Annotated[str, typer.Option(help="Registered version to serve to the treatment arm (the champion's own: an A/A test)")],
    name: Annotated[Optional[str], typer.Option(help="Experiment name (default: v<challenger>-<UTC time>)")] = None,
    traffic: Annotated[Optional[float], typer.Option(help="Share of the non-holdout users in the experiment, split evenly (default experiments.traffic)")] = None,
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit log)")] = "",
    config: ConfigOption = None,
) -> None:
    """Start an A/B test: serving picks it up at its next alias poll."""
    from homefeed import experiments

    cfg = _config(config)
    with _refusals():
        experiment = experiments.start(cfg, challenger, name, traffic, reason)
    share = experiment.allocation()
    typer.echo(f"experiment {experiment.name} started: v{experiment.challenger_version} (treatment, {share['treatment']:.1%} of users) "
               f"vs champion v{experiment.champion_version} (control, {share['control']:.1%}); holdout {share['holdout']:.1%}", err=True)
    typer.echo(f"read it out with `homefeed experiment readout {experiment.name}`; services follow within serving.reload_poll_s "
               f"({cfg.serving.reload_poll_s:g} s)", err=True)
    typer.echo(experiment.to_json())


@experiment_app.command("status")
def status(config: ConfigOption = None) -> None:
    """The running experiment, its arms and the users the exposure log holds so far."""
    from homefeed import experiments

    cfg = _config(config)
    with _refusals():
        state = experiments.status(cfg, _exposure_root(cfg))
    if state["running"] is None:
        typer.echo("no experiment is running (start one: homefeed experiment start --challenger VERSION)", err=True)
    typer.echo(json.dumps(state, indent=2))


@experiment_app.command("stop")
def stop(
    name: Annotated[str, typer.Argument(help="The running experiment")],
    promote: Annotated[bool, typer.Option("--promote", help="Make the challenger champion if the latest readout says promote")] = False,
    force: Annotated[bool, typer.Option("--force", help="With --promote: promote whatever the readout says (needs --reason)")] = False,
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit log)")] = "",
    config: ConfigOption = None,
) -> None:
    """End an experiment: everyone is back on the champion at the next poll."""
    from homefeed import experiments

    cfg = _config(config)
    with _refusals():
        result = experiments.stop(cfg, name, promote=promote, force=force, reason=reason)
    promoted = result["promotion"]
    typer.echo(f"experiment {name} stopped" + (f"; v{promoted['version']} is champion" if promoted else ""), err=True)
    typer.echo(json.dumps(result))


@experiment_app.command("readout")
def readout(
    name: Annotated[str, typer.Argument(help="Experiment name")],
    raw: Annotated[Optional[Path], typer.Option(help="Raw root with the action log (default: the champion's training data)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Where readout.json / readout.html go (default: <storage root>/experiments/NAME)")] = None,
    config: ConfigOption = None,
) -> None:
    """Read an experiment out of the exposure and action logs: statistics, decision, report (Spark + tea-tasting)."""
    from homefeed import readout as readout_module

    cfg = _config(config)
    started = time.perf_counter()
    actions = raw or "the champion's raw log"
    typer.echo(f"==> reading out {name} (exposures and events: {_exposure_root(cfg)}; raw actions: {actions})", err=True)
    with _refusals():
        result = readout_module.read_out(cfg, name, str(raw) if raw else None, out)
    decision = result["decision"]
    primary = result["metrics"].get(cfg.experiments.decision.primary_metric)
    typer.echo(f"    done in {time.perf_counter() - started:.1f}s", err=True)
    typer.echo(f"verdict: {decision['verdict']}  ({'; '.join(decision['reasons'])})", err=True)
    if primary:
        cuped = primary.get("cuped")
        adjusted = f"; with CUPED {cuped['rel_effect']:+.2%} [{cuped['rel_effect_lo']:+.2%}, {cuped['rel_effect_hi']:+.2%}]" if cuped else ""
        typer.echo(f"{cfg.experiments.decision.primary_metric}: control {primary['control']:.4g}, treatment {primary['treatment']:.4g}, "
                   f"{primary['rel_effect']:+.2%} [{primary['rel_effect_lo']:+.2%}, {primary['rel_effect_hi']:+.2%}]{adjusted}; "
                   f"SRM p = {result['srm']['p_value']:.3g}", err=True)
    typer.echo(f"report: {result['report']}", err=True)
    typer.echo(json.dumps({"experiment": name, "decision": decision, "readout": str(Path(result['report']).with_name('readout.json'))}))


@commands.command("simulate-experiment")
def simulate_experiment(
    out: Annotated[Path, typer.Option(help="Output directory (replaced): the world, the registry, the logs, the readout")],
    challenger: Annotated[str, typer.Option(help="same (an A/A test), worse (the ranker serving worst first) or better (the ranker against a champion serving worst first)")],
    users: Annotated[Optional[int], typer.Option(min=1, help="Simulated users; default 7,000 (~2,400 per arm in 7 days), 14,000 with "
                                                      "--drop-treatment-users (~4,900 per arm: a 10% loss then reaches SRM p < 0.001 reliably)")] = None,
    days: Annotated[int, typer.Option(min=1, help="Days the experiment runs")] = 7,
    traffic: Annotated[float, typer.Option(help="Share of the non-holdout users in the experiment")] = 1.0,
    requests_per_user_day: Annotated[float, typer.Option(help="Feed requests per user and day (they come in sessions of ~4)")] = 1.5,
    aa_repeats: Annotated[int, typer.Option(help="Re-randomise the same users this many times and report the A/A false-positive rate")] = 0,
    drop_treatment_users: Annotated[float, typer.Option(help="Lose every exposure and action of this share of treatment users (a logging bug)")] = 0.0,
    config: ConfigOption = None,
) -> None:
    """Prove the readout against the simulator's ground truth: serve, log, read out, decide."""
    from homefeed import experiment_sim

    if challenger not in experiment_sim.CHALLENGERS:
        typer.echo(f"error: --challenger must be one of {', '.join(experiment_sim.CHALLENGERS)}", err=True)
        raise typer.Exit(2)
    if not 0 <= drop_treatment_users < 1 or not 0 < traffic <= 1:
        typer.echo("error: --traffic must be in (0, 1] and --drop-treatment-users in [0, 1)", err=True)
        raise typer.Exit(2)
    cfg = _config(config)
    users = users if users is not None else experiment_sim.default_users(drop_treatment_users)
    settings = experiment_sim.SimSettings(challenger=challenger, users=users, days=days, traffic=traffic,
                                          requests_per_user_day=requests_per_user_day, aa_repeats=aa_repeats,
                                          drop_treatment_users=drop_treatment_users)
    started = time.perf_counter()
    with _refusals():
        result = experiment_sim.run(cfg, out, settings, say=lambda line: typer.echo(f"    {line}", err=True))
    decision = result["decision"]
    typer.echo(f"    done in {time.perf_counter() - started:.0f}s; verdict: {decision['verdict']} ({'; '.join(decision['reasons'])})", err=True)
    typer.echo(json.dumps({k: result[k] for k in ("experiment", "arms", "srm", "decision") if k in result}
                          | ({"aa": result["aa"]} if "aa" in result else {})))
    sys.stdout.flush()
