"""Writing annotated video that is never left broken.

Frames go to a temporary file next to the destination (:func:`trtq.fileio.atomic_path`); ``close()``
finishes the container (OpenCV writes the MP4 index on release) and renames it into place. Leaving the
``with`` block on ``KeyboardInterrupt`` finishes and keeps the frames written so far (a shorter, playable
video); any other exception, or no frame at all, removes the temporary file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import TracebackType

import cv2
import numpy as np

from trtq.errors import TrtqError
from trtq.fileio import atomic_path, signals_held

FOURCC: dict[str, str] = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}


class _Discard(Exception):
    """Thrown into the temporary path's context so it removes the file."""


class VideoWriter:
    """An atomic OpenCV video writer at ``fps`` and ``size`` (width, height) for ``path`` (.mp4/.avi/...)."""

    def __init__(self, path: str | os.PathLike[str], fps: float, size: tuple[int, int]) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in FOURCC:
            raise TrtqError(f"cannot write video {self.path}: use one of {', '.join(sorted(FOURCC))}")
        self.size = (int(size[0]), int(size[1]))
        self.fps = float(fps)
        self.frames = 0
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.path, suffix=suffix))
        self._writer: cv2.VideoWriter | None = cv2.VideoWriter(
            str(tmp), cv2.VideoWriter.fourcc(*FOURCC[suffix]), self.fps, self.size
        )
        if not self._writer.isOpened():
            self._discard()
            raise TrtqError(f"OpenCV cannot write {suffix} video to {self.path} (codec {FOURCC[suffix]})")

    def write(self, frame: np.ndarray) -> None:
        if self._writer is None:
            raise TrtqError(f"{self.path} is already closed")
        h, w = frame.shape[:2]
        if (w, h) != self.size:
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_LINEAR)
        with signals_held():  # Ctrl-C / SIGTERM after this write: the frame is in the file and counted
            self._writer.write(frame)
            self.frames += 1

    def close(self) -> Path | None:
        """Finish the file and move it into place; with no frame written, remove it (returns None)."""
        if self._writer is None:
            return self.path if self.frames else None
        writer, self._writer = self._writer, None
        try:
            writer.release()
        except BaseException:
            self._stack.__exit__(_Discard, _Discard(), None)
            raise
        if not self.frames:
            self._stack.__exit__(_Discard, _Discard(), None)
            return None
        self._stack.close()
        return self.path

    def _discard(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.release()
        self._stack.__exit__(_Discard, _Discard(), None)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None or issubclass(exc_type, KeyboardInterrupt):
            self.close()  # interrupted: the frames so far make a shorter, playable video
        else:
            self._discard()


def stream_save_paths(save: str | os.PathLike[str], n_streams: int) -> list[Path]:
    """Where each stream's video goes: ``save`` itself for one stream, ``<stem>_<i><suffix>`` for several."""
    p = Path(save)
    if n_streams == 1:
        return [p]
    return [p.with_name(f"{p.stem}_{i}{p.suffix}") for i in range(n_streams)]
