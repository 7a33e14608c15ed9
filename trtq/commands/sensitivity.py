from __future__ import annotations

import click

from trtq.errors import TrtqError


@click.command(name="sensitivity")
def command() -> None:
    """Not available yet."""
    raise TrtqError("'trtq sensitivity' is not available in this version")
