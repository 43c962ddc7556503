"""``homefeed models | train | evaluate | compare | monitor | simulate-loop | score-pool``: training, comparison, monitoring."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Annotated, Optional

import typer

from homefeed.cli.common import ConfigOption, config as _config, step as _step

commands = typer.Typer()


@commands.command()
def models() -> None:
    """List the model names `train --model` accepts."""
    from models import MODEL_NAMES

    for name in MODEL_NAMES:
        typer.echo(name)


@commands.command()
def train(
    instances: Annotated[Path, typer.Option(help="Published instance dataset")],
    model: Annotated[Optional[str], typer.Option(help="Model name (see `homefeed models`)")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output directory; default: <storage root>/train/<model>")] = None,
    num_processes: Annotated[Optional[int], typer.Option(help="DDP processes")] = None,
    config: ConfigOption = None,
) -> None:
    """Train one model, log it to MLflow and print the run id and validation AUC per head."""
    from homefeed import pipeline, registry, storage
    from homefeed.errors import PermanentError

    overrides = {k: v for k, v in {"model": model, "epochs": epochs, "num_processes": num_processes}.items() if v is not None}
    cfg = _config(config, {"train": overrides})
    out = out or storage.local_path(cfg.storage.root) / "train" / cfg.train.model
    with _step(f"training {cfg.train.model} on {instances}"):
        run_id = registry.start_run(cfg, f"train-{cfg.train.model}")
        try:
            result = pipeline.train_tracked(cfg, str(instances), str(out), run_id)
            registry.log_artifact(cfg, run_id, result.model_dir, "model_files")
        except BaseException as exc:  # the MLflow run says FAILED and why, never RUNNING forever
            registry.end_run(cfg, run_id, failed=True, error=f"{type(exc).__name__}: {exc}")
            if isinstance(exc, PermanentError):
                typer.echo(f"error: {exc} (MLflow run {run_id} marked FAILED)", err=True)
                raise typer.Exit(1) from None
            raise
        registry.end_run(cfg, run_id)
    typer.echo(json.dumps({"run_id": run_id, "model_dir": result.model_dir,
                           "validation_auc": {h: m["auc"] for h, m in result.validation.items()}}))


@commands.command()
def evaluate(
    instances: Annotated[Path, typer.Option(help="Published instance dataset (its test split is scored)")],
    model_dir: Annotated[Path, typer.Option(help="A trained model directory (train's output /model)")],
    out: Annotated[Optional[Path], typer.Option(help="Write the full evaluation JSON here")] = None,
    config: ConfigOption = None,
) -> None:
    """Score a model and the current champion on the same test split; print metrics per head."""
    from homefeed import evaluate as ev, pipeline, storage

    cfg = _config(config)
    evaluation = pipeline.evaluate_against_champion(cfg, str(instances), str(model_dir))
    results = {"challenger": evaluation["challenger"]}
    if evaluation["champion"] is not None:
        results[f"champion v{evaluation['champion_version']}"] = evaluation["champion"]
    if out:
        storage.write_json(out, results)
    for name, result in results.items():
        typer.echo(json.dumps({"model": name, **ev.headline(result), "intervals": result["intervals"]["overall"]}))


@commands.command()
def compare(
    raw: Annotated[Path, typer.Option(help="Raw data root (homefeed generate / import-kuairand)")],
    models: Annotated[str, typer.Option(help="Comma-separated model names (homefeed models)")],
    test_from: Annotated[str, typer.Option(help="First test day, YYYY-MM-DD; earlier days train (the last one validates)")],
    out: Annotated[Path, typer.Option(help="Output directory: comparison.csv / .md / .png, instances, models")],
    seeds: Annotated[int, typer.Option(min=1, max=10, help="Seeds per neural model (mean and spread reported)")] = 1,
    split: Annotated[str, typer.Option(help="Split scored: test, or validation to choose knobs without touching the test days")] = "test",
    sequence_at: Annotated[str, typer.Option(help="Sequence each scored row reads: impression (its own), or request "
                                                  "(the request's first candidate's, shared, as a feed request is served)")] = "impression",
    paired_against: Annotated[Optional[str], typer.Option(help="Comma-separated models every other is paired against, "
                                                               "one table each (default: none, the ranker without a sequence)")] = None,
    config: ConfigOption = None,
) -> None:
    """Train and evaluate several models on the same instances and test days; one table."""
    from homefeed import compare as comparison
    from homefeed.errors import PermanentError

    cfg = _config(config)
    try:
        first_test_day = date.fromisoformat(test_from)
    except ValueError:
        typer.echo(f"error: --test-from must be YYYY-MM-DD, got {test_from!r}", err=True)
        raise typer.Exit(2) from None
    names = [m.strip() for m in models.split(",") if m.strip()]
    with _step(f"comparing {', '.join(names)} on {raw}"):
        try:
            references = [m.strip() for m in paired_against.split(",") if m.strip()] if paired_against is not None else None
            rows = comparison.compare(str(raw), names, first_test_day, out, cfg, seeds, split, sequence_at, references)
        except (ValueError, PermanentError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    typer.echo((out / "comparison.md").read_text())
    typer.echo(f"wrote {out / 'comparison.csv'} ({len(rows)} models), comparison.md, comparison.png")


@commands.command()
def monitor(
    raw: Annotated[Path, typer.Option(help="Raw data root whose new days are scored")],
    day: Annotated[Optional[list[str]], typer.Option(help="Day to score, YYYY-MM-DD (repeatable; default: every new day)")] = None,
    config: ConfigOption = None,
) -> None:
    """Score the champion on days after its training window; mark it stale when it has decayed."""
    from homefeed import monitor as staleness_monitor
    from homefeed.errors import PermanentError
    from homefeed.spark import session

    cfg = _config(config)
    try:
        days = [date.fromisoformat(d) for d in day] if day else None
    except ValueError:
        typer.echo(f"error: --day must be YYYY-MM-DD, got {day}", err=True)
        raise typer.Exit(2) from None
    try:
        decision = staleness_monitor.run(session(cfg, "monitor"), cfg, str(raw), days)
    except (ValueError, PermanentError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(decision))


@commands.command("simulate-loop")
def simulate_loop(
    out: Annotated[Path, typer.Option(help="Output directory: one loop per (model, cadence), summary.md/.csv, lift.png")],
    days: Annotated[int, typer.Option(help="Simulated days after the warm-up")] = 14,
    retrain_every: Annotated[str, typer.Option(help="Comma-separated cadences in days; 0 = never (after the first model)")] = "0,7,3",
    models: Annotated[str, typer.Option(help="Comma-separated model names")] = "none,transact_v11",
    impressions_per_day: Annotated[int, typer.Option(help="Impressions per simulated day")] = 6000,
    users: Annotated[int, typer.Option(help="Simulated users")] = 300,
    warmup_days: Annotated[int, typer.Option(help="Chronological days before the first model")] = 5,
    holdout_fraction: Annotated[float, typer.Option(help="Share of users in the holdout group")] = 0.2,
    config: ConfigOption = None,
) -> None:
    """Closed loop: the champion ranks simulated feeds, users react, the platform retrains."""
    from homefeed import loop

    cfg = _config(config)
    try:
        cadences = [int(k) for k in retrain_every.split(",") if k.strip()]
    except ValueError:
        typer.echo(f"error: --retrain-every takes comma-separated integers, got {retrain_every!r}", err=True)
        raise typer.Exit(2) from None
    names = [m.strip() for m in models.split(",") if m.strip()]
    with _step(f"closed loop: {days} days, models {names}, retraining every {cadences} days"):
        loop.compare_loops(cfg, out, days, cadences, names, warmup_days=warmup_days, window_days=warmup_days,
                           holdout_fraction=holdout_fraction, impressions_per_day=impressions_per_day, users=users)
    typer.echo((out / "summary.md").read_text())
    typer.echo(f"wrote {out / 'summary.csv'}, {out / 'lift.png'} and one days.csv per loop")


@commands.command("score-pool")
def score_pool(
    raw: Annotated[Path, typer.Option(help="Raw data root: the users snapshot and the action log")],
    pins: Annotated[str, typer.Option(help="Comma-separated pin ids to insert")],
    out: Annotated[Path, typer.Option(help="Output directory (Parquet + _manifest.json)")],
    users: Annotated[str, typer.Option(help="Comma-separated user ids (default: every user)")] = "",
    request_ts: Annotated[Optional[int], typer.Option(help="Scoring time, ms (default: now)")] = None,
    config: ConfigOption = None,
) -> None:
    """Pool insertion: score pins against many users with the served model (a Spark job)."""
    from homefeed.errors import PermanentError
    from homefeed.spark import session
    from jobs import score_pool as job

    cfg = _config(config)
    try:
        pin_ids = [int(p) for p in pins.split(",") if p.strip()]
        user_ids = [int(u) for u in users.split(",") if u.strip()] or None
    except ValueError:
        typer.echo("error: --pins and --users take comma-separated integers", err=True)
        raise typer.Exit(2) from None
    with _step(f"scoring {len(pin_ids)} pins against {'all' if user_ids is None else len(user_ids)} users"):
        try:
            manifest = job.run(session(cfg, "score-pool"),
                               str(raw), pin_ids, str(out), cfg, user_ids, request_ts)
        except PermanentError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    typer.echo(json.dumps(manifest))


