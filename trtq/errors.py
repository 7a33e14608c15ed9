"""Errors and exit codes shared by the library and the CLI.

Library code raises :class:`TrtqError` for anything the user can fix (a bad path, a stale cache, a
model of the wrong kind). The message says what was wrong and how to fix it; the CLI prints it as one
line and exits with :attr:`TrtqError.exit_code`. Any other exception is a bug in trtq.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

EXIT_OK = 0
EXIT_ERROR = 1  # unexpected internal error
EXIT_USAGE = 2  # bad input (click's own usage errors use 2 as well)
EXIT_MISSING_TENSORRT = 3  # the CPU steps ran; TensorRT (or a GPU) is needed to finish
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as a shell reports it
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM)


class TrtqError(Exception):
    """A user-facing error: bad input, missing file, incompatible artefact."""

    exit_code: int = EXIT_USAGE

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class MissingDependencyError(TrtqError):
    """A dependency of an optional feature (TensorRT, pycuda, ultralytics, a GPU) is absent."""

    exit_code = EXIT_MISSING_TENSORRT


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is so that cleanup runs as for Ctrl-C."""


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` for the block (main thread only), so a terminated run cleans up
    (staged outputs removed, temp folders deleted) like an interrupted one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
