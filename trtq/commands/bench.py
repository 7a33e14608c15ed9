from __future__ import annotations

import click

from trtq.errors import TrtqError


@click.command(name="bench")
def command() -> None:
    """Not available yet."""
    raise TrtqError("'trtq bench' is not available in this version")
