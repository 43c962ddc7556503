"""``homefeed promote | rollback | registry show | registry history``: the registry's aliases, by hand."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from homefeed.cli.common import ConfigOption, config as _config, registry_errors as _registry_errors

commands = typer.Typer()
registry_app = typer.Typer(help="Inspect the model registry.", no_args_is_help=True)
commands.add_typer(registry_app, name="registry")


@commands.command()
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


@commands.command()
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


