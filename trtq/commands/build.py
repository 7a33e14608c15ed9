from __future__ import annotations

import click

from trtq.errors import TrtqError


@click.command(name="build")
def command() -> None:
    """Not available yet."""
    raise TrtqError("'trtq build' is not available in this version")
