"""``python -m homefeed.cli``: the same CLI as the ``homefeed`` command."""

from homefeed.cli import app

app()
