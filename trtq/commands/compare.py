from __future__ import annotations

import click

from trtq.errors import TrtqError


@click.command(name="compare")
def command() -> None:
    """Not available yet."""
    raise TrtqError("'trtq compare' is not available in this version")
