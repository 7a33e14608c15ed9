from __future__ import annotations

import click

from trtq.errors import TrtqError


@click.command(name="export")
def command() -> None:
    """Not available yet."""
    raise TrtqError("'trtq export' is not available in this version")
