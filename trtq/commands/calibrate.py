from __future__ import annotations

import click

from trtq.errors import TrtqError


@click.command(name="calibrate")
def command() -> None:
    """Not available yet."""
    raise TrtqError("'trtq calibrate' is not available in this version")
