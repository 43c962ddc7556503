"""``homefeed generate | import-kuairand | build-instances | instances show | config | validate``: the data and its checks."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Annotated, Optional

import typer

from homefeed.cli.common import ConfigOption, config as _config, step as _step

commands = typer.Typer()
instances_app = typer.Typer(help="Inspect a published instance dataset.", no_args_is_help=True)
commands.add_typer(instances_app, name="instances")


@commands.command()
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
    with _step(f"simulating {cfg.simulator.impressions} impressions over {cfg.simulator.days} days"):
        counts = simulate.generate(cfg.simulator, out)
    typer.echo(json.dumps({"out": str(out), **counts}))


@commands.command("import-kuairand")
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
    with _step(f"importing KuaiRand-Pure from {src} (requests: {request_window}, history before the log: {'on' if history else 'off'})"):
        try:
            counts = kuairand.import_kuairand(src, out, request_window, history, cfg.train.time_window_ms + cfg.instances.delay_ms)
        except (kuairand.KuaiRandFormatError, FileNotFoundError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    typer.echo(json.dumps({"out": str(out), **counts}))


@commands.command("build-instances")
def build_instances(
    raw: Annotated[Path, typer.Option(help="Raw data root")],
    out: Annotated[Path, typer.Option(help="Instance dataset to publish")],
    start: Annotated[Optional[str], typer.Option(help="First impression day, YYYY-MM-DD")] = None,
    end: Annotated[Optional[str], typer.Option(help="Last impression day, YYYY-MM-DD")] = None,
    pin_embeddings: Annotated[Optional[Path], typer.Option(help="`homefeed embed-pins` output to use instead of the pins' content vectors")] = None,
    config: ConfigOption = None,
) -> None:
    """Build labelled instances with realtime sequences (Spark)."""
    from homefeed.spark import session
    from homefeed.storage import StorageError
    from jobs import build_instances as job

    cfg = _config(config)
    with _step(f"building instances from {raw}"):
        try:
            manifest = job.run(session(cfg, "build-instances"), str(raw), str(out), cfg,
                               date.fromisoformat(start) if start else None, date.fromisoformat(end) if end else None,
                               pin_embeddings=str(pin_embeddings) if pin_embeddings else None)
        except (job.InputDataError, StorageError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    typer.echo(json.dumps({"out": str(out), "rows": manifest["output_rows"], "sequences": manifest["sequence_rows"],
                           "splits": {k: v["rows"] for k, v in manifest["splits"].items()}}))


@commands.command("embed-pins")
def embed_pins(
    raw: Annotated[Path, typer.Option(help="Raw data root")],
    end: Annotated[str, typer.Option(help="The last day whose engagement it may read, YYYY-MM-DD (inclusive)")],
    out: Annotated[Path, typer.Option(help="Embedding table to publish (pin_id, embedding, source)")],
    method: Annotated[Optional[str], typer.Option(help="word2vec | als; empty: the config's embeddings.method")] = None,
    config: ConfigOption = None,
) -> None:
    """Learn pin embeddings from engagement up to --end (Spark MLlib), a PinSage stand-in."""
    from homefeed.spark import session
    from homefeed.storage import StorageError
    from jobs import embed_pins as job

    cfg = _config(config, {"embeddings": {"method": method}} if method else None)
    try:
        last_day = date.fromisoformat(end)
    except ValueError:
        typer.echo(f"error: --end {end!r} is not a date (YYYY-MM-DD)", err=True)
        raise typer.Exit(2) from None
    with _step(f"learning {cfg.embeddings.method} pin embeddings from {raw} up to {last_day}"):
        try:
            manifest = job.run(session(cfg, "embed-pins"), str(raw), str(out), cfg, last_day)
        except (job.InputDataError, StorageError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    typer.echo(json.dumps({"out": str(out), "method": manifest["method"], "learned": manifest["learned"],
                           "content": manifest["content"], "coverage": manifest["coverage"]}))


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


@commands.command("config")
def show_config(config: ConfigOption = None) -> None:
    """Print the configuration a command would run with: every default (homefeed/config.py holds
    each once), the overlay files and HOMEFEED__… variables applied, secrets redacted."""
    import yaml

    typer.echo(yaml.safe_dump(_config(config).redacted(), sort_keys=False), nl=False)


@commands.command()
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


