"""``homefeed``: one typed CLI whose commands are the functions the DAGs and tests call.

One module per command group: :mod:`.data` (simulate, import, build and check datasets),
:mod:`.training` (train, evaluate, compare, monitor), :mod:`.release` (the registry's aliases),
:mod:`.experiments` (online A/B tests), :mod:`.serving` (the service and its sequence store),
:mod:`.local` (the platform on this machine); :mod:`.common` holds what they share.
"""

from __future__ import annotations

import sys

import typer

from homefeed.cli import data, experiments, local, release, serving, training

app = typer.Typer(help="homefeed: train, check and ship a home-feed ranking model.", no_args_is_help=True, add_completion=False)
for group in (data, training, release, experiments, serving, local):
    app.add_typer(group.commands)


@app.callback()
def _main() -> None:
    """Progress of long steps (epochs, stages) goes to stderr through logging."""
    import logging

    from homefeed import progress

    logging.basicConfig(level=logging.INFO, format="    %(message)s", stream=sys.stderr)
    progress.quiet_libraries()
