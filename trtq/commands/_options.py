"""Click options shared by several ``trtq`` commands (same name, type and default everywhere)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def device_option(help_text: str = "CUDA device index.") -> Callable[[F], F]:
    """``--device N``: the CUDA device index (0 by default)."""
    return click.option("--device", type=click.IntRange(min=0), default=0, show_default=True, help=help_text)


def path_option(flag: str, dest: str, help_text: str, *, folder: bool = False) -> Callable[[F], F]:
    """An optional output path (``folder``: a directory, else a file), passed to the command as ``dest``."""
    kind = click.Path(file_okay=not folder, dir_okay=folder, path_type=Path)
    return click.option(flag, dest, type=kind, default=None, help=help_text)


def output_option(help_text: str, flag: str = "--output") -> Callable[[F], F]:
    """``-o/--output PATH``, kept as typed (a trailing ``/`` means a folder); checked by
    :func:`trtq.fileio.output_path` before any work."""
    return click.option("-o", flag, "output", type=str, default=None, metavar="PATH", help=help_text)
