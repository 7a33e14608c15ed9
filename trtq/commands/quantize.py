from __future__ import annotations

import click

from trtq.errors import TrtqError


@click.command(name="quantize")
def command() -> None:
    """Not available yet."""
    raise TrtqError("'trtq quantize' is not available in this version")
