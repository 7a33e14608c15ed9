from __future__ import annotations

import click

from trtq.errors import TrtqError


@click.command(name="eval")
def command() -> None:
    """Not available yet."""
    raise TrtqError("'trtq eval' is not available in this version")
