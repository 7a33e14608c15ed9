from __future__ import annotations

import click

from trtq.errors import TrtqError


@click.command(name="inspect")
def command() -> None:
    """Not available yet."""
    raise TrtqError("'trtq inspect' is not available in this version")
