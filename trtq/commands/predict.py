from __future__ import annotations

import click

from trtq.errors import TrtqError


@click.command(name="predict")
def command() -> None:
    """Not available yet."""
    raise TrtqError("'trtq predict' is not available in this version")
