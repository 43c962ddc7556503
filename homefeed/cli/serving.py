"""``homefeed serve | sequences load | sequences show``: the ranking service and its sequence store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from homefeed.cli.common import ConfigOption, config as _config, registry_errors as _registry_errors, step as _step
from homefeed.config import Config

commands = typer.Typer()
sequences_app = typer.Typer(help="The serving sequence store: load it from a raw log, look a user up.", no_args_is_help=True)
commands.add_typer(sequences_app, name="sequences")


@commands.command()
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
        with _step(f"loading the actions of {raw} into {store.describe()}" + ("" if until_ms is None else f" (before {until})")):
            totals = load_actions(store, raw, until_ms, progress=lambda line: typer.echo(f"    {line}", err=True))
            store.close()
    except (PermanentError, SequenceStoreUnavailable) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
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
