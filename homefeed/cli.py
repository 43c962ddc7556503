"""``homefeed``: one typed CLI whose commands are the functions the DAGs and tests call."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from datetime import date
from pathlib import Path
from typing import Annotated, Optional

import typer

from homefeed.config import Config

app = typer.Typer(help="homefeed: train, check and ship a home-feed ranking model.", no_args_is_help=True, add_completion=False)
registry_app = typer.Typer(help="Inspect the model registry.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")
instances_app = typer.Typer(help="Inspect a published instance dataset.", no_args_is_help=True)
app.add_typer(instances_app, name="instances")
sequences_app = typer.Typer(help="The serving sequence store: load it from a raw log, look a user up.", no_args_is_help=True)
app.add_typer(sequences_app, name="sequences")
stack_app = typer.Typer(help="The deployed topology on this machine: Postgres, MLflow server, S3, Spark cluster, Airflow, serve.",
                        no_args_is_help=True)
app.add_typer(stack_app, name="stack")

from homefeed.cli_experiment import experiment_app, simulate_experiment  # noqa: E402 - the experiment commands' own module

app.add_typer(experiment_app, name="experiment")
app.command("simulate-experiment")(simulate_experiment)

from homefeed.cli_common import ConfigOption, config as _config, registry_errors as _registry_errors  # noqa: E402


@app.callback()
def _main() -> None:
    """Progress of long steps (epochs, stages) goes to stderr through logging."""
    import logging

    from homefeed import progress

    logging.basicConfig(level=logging.INFO, format="    %(message)s", stream=sys.stderr)
    progress.quiet_libraries()


def _step(message: str) -> float:
    typer.echo(f"==> {message}", err=True)
    return time.perf_counter()


def _done(started: float) -> None:
    typer.echo(f"    done in {time.perf_counter() - started:.1f}s", err=True)


@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="Raw data root to write")],
    impressions: Annotated[Optional[int], typer.Option(help="Impressions to simulate")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed")] = None,
    days: Annotated[Optional[int], typer.Option(help="Days of logs")] = None,
    config: ConfigOption = None,
) -> None:
    """Simulate a home-feed log (impressions, actions, pins, users) in the raw contract."""
    from homefeed import simulate

    overrides = {k: v for k, v in {"impressions": impressions, "seed": seed, "days": days}.items() if v is not None}
    cfg = _config(config, {"simulator": overrides})
    started = _step(f"simulating {cfg.simulator.impressions} impressions over {cfg.simulator.days} days")
    counts = simulate.generate(cfg.simulator, out)
    _done(started)
    typer.echo(json.dumps({"out": str(out), **counts}))


@app.command("import-kuairand")
def import_kuairand(
    src: Annotated[Path, typer.Option(help="Folder with KuaiRand-Pure log_*.csv and feature CSVs")],
    out: Annotated[Path, typer.Option(help="Raw data root to write")],
    request_window: Annotated[str, typer.Option(help="A request = a user's exposures in this window: 1h (a feed load), 1d, 30m")] = "1h",
    history: Annotated[bool, typer.Option("--history/--no-history", help="Add the pre-log likes and long views (user_sequences_before_0425.parquet)")] = True,
    config: ConfigOption = None,
) -> None:
    """Map KuaiRand-Pure onto the raw contract (see homefeed.kuairand for the mapping)."""
    from homefeed import kuairand

    cfg = _config(config)
    started = _step(f"importing KuaiRand-Pure from {src} (requests: {request_window}, history before the log: {'on' if history else 'off'})")
    try:
        counts = kuairand.import_kuairand(src, out, request_window, history, cfg.train.time_window_ms + cfg.instances.delay_ms)
    except (kuairand.KuaiRandFormatError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    _done(started)
    typer.echo(json.dumps({"out": str(out), **counts}))


@app.command("build-instances")
def build_instances(
    raw: Annotated[Path, typer.Option(help="Raw data root")],
    out: Annotated[Path, typer.Option(help="Instance dataset to publish")],
    start: Annotated[Optional[str], typer.Option(help="First impression day, YYYY-MM-DD")] = None,
    end: Annotated[Optional[str], typer.Option(help="Last impression day, YYYY-MM-DD")] = None,
    config: ConfigOption = None,
) -> None:
    """Build labelled instances with realtime sequences (Spark)."""
    from homefeed.spark import session
    from homefeed.storage import StorageError
    from jobs import build_instances as job

    cfg = _config(config)
    started = _step(f"building instances from {raw}")
    try:
        manifest = job.run(session(cfg, "build-instances"), str(raw), str(out), cfg,
                           date.fromisoformat(start) if start else None, date.fromisoformat(end) if end else None)
    except (job.InputDataError, StorageError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    _done(started)
    typer.echo(json.dumps({"out": str(out), "rows": manifest["output_rows"], "sequences": manifest["sequence_rows"],
                           "splits": {k: v["rows"] for k, v in manifest["splits"].items()}}))


@instances_app.command("show")
def instances_show(
    directory: Annotated[Path, typer.Argument(help="Published instance dataset")],
    split: Annotated[str, typer.Option(help="train | validation | test")] = "test",
    limit: Annotated[int, typer.Option(min=0, help="Rows to print")] = 10,
    columns: Annotated[Optional[str], typer.Option(help="Comma-separated columns (default: keys, labels, sequence)")] = None,
) -> None:
    """Print rows of one split as the per-impression view (sequences joined back, newest first)."""
    from homefeed import schema, storage
    from homefeed.data import read_instances

    if split not in schema.SPLITS:
        typer.echo(f"error: unknown split {split!r}; splits are {', '.join(schema.SPLITS)}", err=True)
        raise typer.Exit(2)
    try:
        table = read_instances(directory, split)
        manifest = storage.read_manifest(directory)
    except storage.StorageError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    counts = manifest["splits"].get(split, {})
    typer.echo(f"{directory} split={split}: {counts.get('rows', table.num_rows)} rows, {counts.get('sequences', '?')} sequences "
               f"(window {manifest['window']['start']}..{manifest['window']['end']})")
    wanted = columns.split(",") if columns else ["request_id", "user_id", "pin_id", "ts", *schema.LABEL_COLUMNS, *schema.SEQUENCE_COLUMNS]
    unknown = [c for c in wanted if c not in table.column_names]
    if unknown:
        typer.echo(f"error: unknown columns {unknown}; the view has {table.column_names}", err=True)
        raise typer.Exit(2)
    frame = table.select(wanted).slice(0, limit).to_pandas()
    for column in frame.columns:
        if frame[column].dtype == object and len(frame) and hasattr(frame[column].iloc[0], "__len__") and not isinstance(frame[column].iloc[0], str):
            frame[column] = frame[column].map(lambda v: f"[{len(v)}] " + " ".join(str(x) for x in list(v)[:4]) + (" …" if len(v) > 4 else ""))
    typer.echo(frame.to_string(index=False))


@app.command("config")
def show_config(config: ConfigOption = None) -> None:
    """Print the configuration a command would run with: every default (homefeed/config.py holds
    each once), the overlay files and HOMEFEED__… variables applied, secrets redacted."""
    import yaml

    typer.echo(yaml.safe_dump(_config(config).redacted(), sort_keys=False), nl=False)


@app.command()
def validate(
    suite: Annotated[str, typer.Option(help="raw_impressions | raw_actions | pins | users | instances")],
    data: Annotated[Path, typer.Option(help="Dataset root (raw root for raw suites, instance dataset for instances)")],
    docs: Annotated[Optional[Path], typer.Option(help="Write Data Docs here")] = None,
    config: ConfigOption = None,
) -> None:
    """Validate a dataset with a Great Expectations suite: exit 0 pass, 1 fail, 2 usage."""
    from expectations import SUITES
    from homefeed import validation
    from homefeed.spark import session

    if suite not in SUITES:
        typer.echo(f"error: unknown suite {suite!r}; suites are {', '.join(SUITES)}", err=True)
        raise typer.Exit(2)
    if not data.exists():
        typer.echo(f"error: no dataset at {data}", err=True)
        raise typer.Exit(2)
    cfg = _config(config)
    try:
        reports = validation.validate(session(cfg, "validate"), suite, str(data), cfg, docs)
    except validation.ValidationFailed as exc:
        typer.echo(str(exc))
        raise typer.Exit(1) from None
    for report in reports:
        typer.echo(report.describe())


@app.command()
def models() -> None:
    """List the model names `train --model` accepts."""
    from models import MODEL_NAMES

    for name in MODEL_NAMES:
        typer.echo(name)


@app.command()
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
    started = _step(f"training {cfg.train.model} on {instances}")
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
    _done(started)
    typer.echo(json.dumps({"run_id": run_id, "model_dir": result.model_dir,
                           "validation_auc": {h: m["auc"] for h, m in result.validation.items()}}))


@app.command()
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


@app.command()
def promote(
    version: Annotated[str, typer.Option(help="Model version to make champion")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit log)")] = "",
    force: Annotated[bool, typer.Option(help="Promote without a passing gate (recorded)")] = False,
    change_holdout: Annotated[bool, typer.Option("--change-holdout", help="Allow a holdout configuration change")] = False,
    config: ConfigOption = None,
) -> None:
    """Make a version the champion (aliases; the old champion becomes `previous`)."""
    from homefeed import registry

    cfg = _config(config)
    with _registry_errors():
        record = registry.promote(cfg, version, reason=reason, force=force, change_holdout=change_holdout)
    typer.echo(json.dumps(record))


@app.command()
def rollback(
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit log)")] = "manual rollback",
    config: ConfigOption = None,
) -> None:
    """Make the `previous` version the champion again."""
    from homefeed import registry

    cfg = _config(config)
    with _registry_errors():
        record = registry.rollback(cfg, reason)
    typer.echo(json.dumps(record))


@registry_app.command("show")
def registry_show(config: ConfigOption = None) -> None:
    """Champion, challenger, previous and the holdout configuration."""
    from homefeed import registry

    cfg = _config(config)
    with _registry_errors():
        state = registry.state(cfg)
    typer.echo(json.dumps(state.to_dict(), indent=2))


@registry_app.command("history")
def registry_history(config: ConfigOption = None) -> None:
    """Every promotion and rollback, oldest first."""
    from homefeed import registry

    for record in registry.history(_config(config)):
        typer.echo(json.dumps(record, sort_keys=True))


@app.command()
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
    started = _step(f"comparing {', '.join(names)} on {raw}")
    try:
        references = [m.strip() for m in paired_against.split(",") if m.strip()] if paired_against is not None else None
        rows = comparison.compare(str(raw), names, first_test_day, out, cfg, seeds, split, sequence_at, references)
    except (ValueError, PermanentError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    _done(started)
    typer.echo((out / "comparison.md").read_text())
    typer.echo(f"wrote {out / 'comparison.csv'} ({len(rows)} models), comparison.md, comparison.png")


@app.command()
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


@app.command("simulate-loop")
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
    started = _step(f"closed loop: {days} days, models {names}, retraining every {cadences} days")
    loop.compare_loops(cfg, out, days, cadences, names, warmup_days=warmup_days, window_days=warmup_days,
                       holdout_fraction=holdout_fraction, impressions_per_day=impressions_per_day, users=users)
    _done(started)
    typer.echo((out / "summary.md").read_text())
    typer.echo(f"wrote {out / 'summary.csv'}, {out / 'lift.png'} and one days.csv per loop")


@app.command("score-pool")
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
    started = _step(f"scoring {len(pin_ids)} pins against {'all' if user_ids is None else len(user_ids)} users")
    try:
        manifest = job.run(session(cfg, "score-pool"),
                           str(raw), pin_ids, str(out), cfg, user_ids, request_ts)
    except PermanentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    _done(started)
    typer.echo(json.dumps(manifest))


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default serving.host)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default serving.port)")] = None,
    config: ConfigOption = None,
) -> None:
    """Serve `POST /rank` with the model behind `serving.alias` (champion) of the registry."""
    from homefeed.serving import app as serving_app
    from homefeed.registry import NoServableModel

    cfg = _config(config)
    bind = host or cfg.serving.host
    if not cfg.serving.token and not _is_loopback(bind):
        typer.echo(f"error: listening on {bind} needs a token for /events and /admin/*: set serving.token "
                   "(HOMEFEED__SERVING__TOKEN)", err=True)
        raise typer.Exit(2)
    from homefeed.sequence_store import SequenceStoreUnavailable

    try:
        with _registry_errors():
            serving_app.run(cfg, bind, port or cfg.serving.port)
    except (NoServableModel, SequenceStoreUnavailable) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_time(text: str) -> int:
    """Milliseconds since the epoch, or an ISO date/time (UTC unless it says otherwise)."""
    from datetime import datetime, timezone

    if text.lstrip("-").isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        typer.echo(f"error: --until {text!r} is neither epoch milliseconds nor an ISO date/time", err=True)
        raise typer.Exit(2) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def _sequence_store(cfg: Config, raw: Path | None = None, snapshot_root: Path | None = None):
    """The configured store; the pins' categories and owners come from ``snapshot_root``, else
    ``raw`` when it has a pins snapshot (a raw root), else ``serving.features_root`` (for the
    service's event log, which holds actions only)."""
    from homefeed import features, schema
    from homefeed.sequence_store import SequenceLoadError, open_configured

    source = snapshot_root or (raw if raw and (raw / schema.PINS).exists() else None) or (Path(cfg.serving.features_root) if cfg.serving.features_root else None)
    if raw and source is None:
        raise SequenceLoadError(f"{raw} has no pins snapshot (an event log holds actions only): name the raw root whose pins "
                                "describe its pins with --snapshot, or set serving.features_root")
    snapshot = features.FeatureSnapshot.load(source) if source else features.FeatureSnapshot(pins={}, users={})
    return open_configured(cfg, snapshot, cfg.instances.seq_len, timeout_s=30.0)  # a batch job may wait for a serving writer


@sequences_app.command("load")
def sequences_load(
    raw: Annotated[Path, typer.Option(help="Raw root, or the service's event log (<storage root>/events), whose actions table is loaded")],
    until: Annotated[Optional[str], typer.Option(help="Load actions before this time only (epoch ms or ISO date/time, UTC)")] = None,
    reset: Annotated[bool, typer.Option("--reset", help="Empty the store first")] = False,
    snapshot: Annotated[Optional[Path], typer.Option(help="Raw root with the pins snapshot (default: --raw, else serving.features_root)")] = None,
    config: ConfigOption = None,
) -> None:
    """Fill the serving sequence store from a raw action log (idempotent: only what is new is added)."""
    from homefeed.errors import PermanentError
    from homefeed.sequence_store import SequenceStoreCorrupt, SequenceStoreUnavailable, load_actions, move_aside, store_location

    cfg = _config(config)
    until_ms = None if until is None else _parse_time(until)
    try:
        try:
            store = _sequence_store(cfg, raw, snapshot)
        except SequenceStoreCorrupt:
            if not reset:
                raise
            moved = move_aside(store_location(cfg.serving.sequence_store, cfg.storage.root))
            typer.echo(f"    the damaged store was moved aside: {', '.join(map(str, moved))}; rebuilding", err=True)
            store = _sequence_store(cfg, raw, snapshot)
        if reset:
            store.reset()
        started = _step(f"loading the actions of {raw} into {store.describe()}" + ("" if until_ms is None else f" (before {until})"))
        totals = load_actions(store, raw, until_ms, progress=lambda line: typer.echo(f"    {line}", err=True))
        store.close()
    except (PermanentError, SequenceStoreUnavailable) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    _done(started)
    typer.echo(json.dumps({"store": store.describe(), **totals}))


@sequences_app.command("show")
def sequences_show(
    user: Annotated[int, typer.Option(help="User id")],
    limit: Annotated[int, typer.Option(help="Newest actions to print")] = 10,
    config: ConfigOption = None,
) -> None:
    """A user's stored history: how many actions are kept and counted, and the newest ones."""
    from homefeed import schema
    from homefeed.sequence_store import SequenceStoreUnavailable

    cfg = _config(config)
    try:
        store = _sequence_store(cfg)
        history = store.history(user)
        store.close()
    except SequenceStoreUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    events = [] if history is None else history.events[::-1][:limit]
    typer.echo(json.dumps({
        "store": store.describe(), "user_id": user, "kept": 0 if history is None else len(history.events),
        "evicted": 0 if history is None else history.evicted_total,
        "newest": [{"ts": e.ts, "pin_id": e.pin_id, "action": schema.ACTION_NAMES_BY_CODE.get(e.action_code, "?")} for e in events],
    }, indent=2))


# --------------------------------------------------------------------------- the local platform
def _say(message: str) -> None:
    typer.echo(message, err=True)


@contextlib.contextmanager
def _platform_errors():
    from homefeed.local_platform import PlatformError

    try:
        yield
    except PlatformError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(exc.exit_code) from None


@app.command()
def airflow(
    port: Annotated[int, typer.Option(help="API server / UI port on 127.0.0.1")] = 8080,
    config: ConfigOption = None,
) -> None:
    """Start Airflow (api-server, scheduler, dag-processor, triggerer) with the project's DAGs on
    127.0.0.1 and print the login."""
    from homefeed import local_platform

    env, user, password = local_platform.standalone_env(_config(config), port, config)
    with _platform_errors():
        local_platform.migrate_airflow_db(env)
    typer.echo(f"Airflow UI: http://127.0.0.1:{port}   login: {user} / {password}   (AIRFLOW_HOME={env['AIRFLOW_HOME']})")
    typer.echo("DAGs: homefeed_retrain (trigger with the parameter form), homefeed_promote. Ctrl-C stops it.")
    raise typer.Exit(local_platform.supervise(local_platform.airflow_components(port), env, typer.echo))


@app.command()
def backfill(
    from_date: Annotated[str, typer.Option("--from-date", help="First logical date, YYYY-MM-DD")],
    to_date: Annotated[str, typer.Option("--to-date", help="Last logical date, YYYY-MM-DD")],
    conf: Annotated[str, typer.Option("--conf", help="homefeed_retrain params as JSON, e.g. {\"raw\": \"/data/raw\", \"window_days\": 7}")] = "{}",
    config: ConfigOption = None,
) -> None:
    """Backfill homefeed_retrain on the embedded Airflow: one run per scheduled date in the range.

    `airflow backfill create` with the embedded Airflow's environment; the scheduler of
    `homefeed airflow` runs the runs, one at a time.
    """
    cfg = _config(config)
    try:
        if date.fromisoformat(from_date) > date.fromisoformat(to_date):
            raise ValueError(f"--from-date {from_date} is after --to-date {to_date}")
        if not isinstance(json.loads(conf), dict):
            raise ValueError(f"--conf must be a JSON object, got {conf}")
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    from homefeed import local_platform

    with _platform_errors():
        local_platform.run_airflow(local_platform.airflow_env(cfg, config), "backfill", "create", "--dag-id", "homefeed_retrain",
                                   "--from-date", from_date, "--to-date", to_date, "--dag-run-conf", conf, "--max-active-runs", "1")


@app.command()
def run(
    raw: Annotated[Optional[Path], typer.Option(help="Raw data root; default: generate synthetic data under the storage root")] = None,
    label: Annotated[Optional[str], typer.Option(help="Run name; default: a timestamp")] = None,
    s3: Annotated[bool, typer.Option("--s3", help="S3 as the storage of record: a local SeaweedFS server (what `make run S3=1` runs)")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Airflow's, Spark's and GX's lines too (always in the run's run.log)")] = False,
    config: ConfigOption = None,
) -> None:
    """The main job: a full retraining run of the `homefeed_retrain` DAG on the embedded default.

    The terminal shows homefeed's lines (a line per stage, training progress every ~10 s); the
    whole output of the run is kept in `<storage root>/runs/<run>/run.log`."""
    from homefeed import local_platform, registry

    with _platform_errors():
        cfg, directory = local_platform.run_retraining(_config(config), raw, label, s3, config, verbose, _say)
    with _registry_errors():
        state = registry.state(cfg)
    gate = json.loads((directory / "gate.json").read_text()) if (directory / "gate.json").exists() else {}
    evaluation = json.loads((directory / "evaluate.json").read_text()) if (directory / "evaluate.json").exists() else None
    typer.echo("")
    for line in local_platform.run_summary(evaluation, gate, state, cfg.registry.model_name):
        typer.echo(line)
    typer.echo(f"report: {directory / 'report.html'}")
    command, env, page = registry.ui_command(cfg)
    typer.echo(f"MLflow UI: {' '.join(f'{k}={v}' for k, v in env.items())} {' '.join(command)}")
    typer.echo(f"    then open {page}")
    if state.champion:
        typer.echo(f"serve the champion: .venv/bin/homefeed serve   (POST /rank on http://{cfg.serving.host}:{cfg.serving.port})")
        typer.echo(_experiment_hint(state))


def _experiment_hint(state) -> str:
    """How to test the next challenger online (the offline gate is not the last word)."""
    if state.challenger and state.challenger != state.champion:
        return (f"test challenger v{state.challenger} online: .venv/bin/homefeed experiment start --challenger {state.challenger} "
                "--traffic 0.2 --reason '…'   (then `homefeed experiment readout NAME`)")
    return ("test the next challenger online: after the next retraining registers one, "
            ".venv/bin/homefeed experiment start --challenger N --traffic 0.2 --reason '…'")


# --------------------------------------------------------------------------- the one-machine stack
@contextlib.contextmanager
def _stack_errors():
    from homefeed.stack import StackError

    try:
        yield
    except StackError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@stack_app.command("up")
def stack_up(config: ConfigOption = None) -> None:
    """Start every component that is not running (each waits until it answers)."""
    from homefeed.stack import Stack

    stack = Stack(_config(config))
    with _stack_errors():
        timings = stack.up(_say)
    typer.echo(f"up in {sum(timings.values()):.0f} s; state, logs and credentials (0600) in {stack.home}")
    _print_stack(stack)
    api = stack.components().get("airflow-api-server")
    if api is not None:
        typer.echo(f"Airflow UI: {api.url}   login: admin / {stack.credentials()['airflow_password']}")
    typer.echo(f"the stack's environment for other commands: `homefeed stack env` (e.g. eval \"$(homefeed stack env)\")")


@stack_app.command("down")
def stack_down(config: ConfigOption = None) -> None:
    """Stop exactly the processes `stack up` started (their process groups)."""
    from homefeed.stack import Stack

    with _stack_errors():
        stopped = Stack(_config(config)).down(_say)
    typer.echo(f"stopped {len(stopped)} components" if stopped else "nothing was running")


@stack_app.command("status")
def stack_status(config: ConfigOption = None) -> None:
    """Each component with its state, pid and port; exit 1 when a recorded one is not running."""
    from homefeed.stack import Stack

    stack = Stack(_config(config))
    _print_stack(stack)
    if any(not c.running() for c in stack.status()):
        raise typer.Exit(1)


@stack_app.command("env")
def stack_env(config: ConfigOption = None) -> None:
    """The stack's configuration as `export NAME=value` lines (the compose file's variable names)."""
    import shlex

    from homefeed.stack import Stack

    for name, value in sorted(Stack(_config(config)).environment().items()):
        typer.echo(f"export {name}={shlex.quote(value)}")


def _print_stack(stack) -> None:
    components = stack.status()
    if not components:
        typer.echo("no component recorded (run `homefeed stack up`)")
    for c in components:
        typer.echo(f"{c.name:24} {'running' if c.running() else 'STOPPED':8} pid {c.pid or '-':<8} port {c.port or '-':<6} {c.url}")


if __name__ == "__main__":
    app()
