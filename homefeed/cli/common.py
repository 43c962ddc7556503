"""What every command group of the CLI shares: the config option, loading it, how refusals exit,
and the lines a long step prints."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Annotated, Optional

import typer

from homefeed.config import Config, ConfigError, load_config

ConfigOption = Annotated[Optional[list[Path]], typer.Option("--config", "-c", help="Config overlay file (repeatable).")]


def config(files: list[Path] | None, overrides: dict | None = None) -> Config:
    """The config with its overlays; a bad one exits 2 naming the key."""
    try:
        return load_config(files, overrides=overrides)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@contextlib.contextmanager
def registry_errors():
    """A refused change exits 1 with the reason; an unreachable MLflow exits 2 saying so."""
    from homefeed import registry

    try:
        yield
    except registry.PromotionRefused as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(1) from None
    except registry.RegistryUnreachable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@contextlib.contextmanager
def refusals():
    """:func:`registry_errors`, and any other permanent error (an unknown experiment, no
    exposures to read out) exits 1 in one line."""
    from homefeed.errors import PermanentError

    with registry_errors():
        try:
            yield
        except PermanentError as exc:
            from homefeed import registry

            if isinstance(exc, registry.PromotionRefused):
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None


@contextlib.contextmanager
def step(message: str) -> Iterator[None]:
    """``==> message`` on stderr, and ``done in …`` when the block ends without an error (a
    command that fails inside it has said why instead)."""
    typer.echo(f"==> {message}", err=True)
    started = time.perf_counter()
    yield
    typer.echo(f"    done in {time.perf_counter() - started:.1f}s", err=True)
