"""Errors and exit codes shared by the library and the CLI.

Library code raises :class:`TrtqError` for anything the user can fix (a bad path, a stale cache, a
model of the wrong kind). The message says what was wrong and how to fix it; the CLI prints it as one
line and exits with :attr:`TrtqError.exit_code`. Any other exception is a bug in trtq.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1  # unexpected internal error
EXIT_USAGE = 2  # bad input (click's own usage errors use 2 as well)
EXIT_MISSING_TENSORRT = 3  # the CPU steps ran; TensorRT (or a GPU) is needed to finish


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
