"""Video sources for :meth:`Detector.stream` and ``trtq predict --source``: files, cameras, network streams and
GStreamer pipelines through OpenCV's ``VideoCapture``, read as ultralytics' loaders read them.

- A file is read frame by frame, every frame in order (``LoadImagesAndVideos``): with ``vid_stride`` N, N frames
  are grabbed and the last one decoded.
- A camera index (``"0"``), an ``rtsp://``/``rtmp://``/``tcp://``/``http(s)://`` URL or a GStreamer pipeline
  (a string with ``!``, e.g. ``nvarguscamerasrc ! ... ! appsink``) is *live*: it is read as fast as it comes
  and, with ``live``, only the newest frame is kept (``LoadStreams`` without ``buffer``).
- A ``.streams`` file lists sources separated by white space (ultralytics' format).

Network streams are opened with OpenCV's open and read timeouts, so a URL with nothing behind it fails in
bounded time. A dropped live stream is reopened up to ``reconnect`` times (each attempt is logged), then the
stream ends with an error: nothing loops forever.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from trtq.errors import TrtqError

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES: tuple[str, ...] = (
    ".asf", ".avi", ".gif", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".ts", ".wmv", ".webm",
)  # fmt: skip
NETWORK_PREFIXES: tuple[str, ...] = ("rtsp://", "rtmp://", "tcp://", "http://", "https://", "udp://")
OPEN_TIMEOUT_MS = 10_000  # network streams: how long opening may take
READ_TIMEOUT_MS = 10_000  # network streams: how long one frame may take before the stream counts as dropped
FALLBACK_FPS = 30.0  # when the source reports no usable frame rate (as ultralytics)


def source_kind(source: str) -> str:
    """``camera``, ``gstreamer``, ``network`` or ``file``."""
    s = source.strip()
    if s.isnumeric():
        return "camera"
    if "!" in s:
        return "gstreamer"
    if s.lower().startswith(NETWORK_PREFIXES):
        return "network"
    return "file"


def is_video_source(source: str | os.PathLike[str]) -> bool:
    """Whether ``source`` is read as video (not as images): a video file, camera, stream or ``.streams`` list."""
    from trtq.images import is_image_url

    s = str(source)
    if is_image_url(s):  # http(s)://host/x.jpg is an image to download, not a stream
        return False
    return (
        source_kind(s) != "file" or s.lower().endswith(".streams") or Path(s).suffix.lower() in VIDEO_SUFFIXES
    )


def expand_sources(sources: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Sources with every ``.streams`` file replaced by the sources it lists (split on white space)."""
    out: list[str] = []
    for src in sources:
        s = str(src)
        if s.lower().endswith(".streams"):
            path = Path(s)
            if not path.is_file():
                raise TrtqError(f"streams list not found: {path}")
            listed = path.read_text(encoding="utf-8-sig").split()
            if not listed:
                raise TrtqError(f"{path} lists no sources (one file, camera index or URL per line)")
            out.extend(listed)
        else:
            out.append(s)
    if not out:
        raise TrtqError("no video source given")
    return out


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's own warnings (a missing camera prints several) while a source is opened."""
    utils: Any = getattr(cv2, "utils", None)
    log = getattr(utils, "logging", None)
    if log is None:
        yield
        return
    previous = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        log.setLogLevel(previous)


def _capture(source: str, kind: str, timeout_ms: int) -> cv2.VideoCapture:
    if kind == "camera":
        return cv2.VideoCapture(int(source))
    if kind == "gstreamer":
        return cv2.VideoCapture(source, cv2.CAP_GSTREAMER)
    if kind == "network":
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
        return cv2.VideoCapture(source, cv2.CAP_FFMPEG, params)
    return cv2.VideoCapture(source)


def _describe(source: str, kind: str) -> str:
    if kind == "camera":
        return f"camera {source}"
    if kind == "gstreamer":
        return "the GStreamer pipeline"
    return source


class VideoSource:
    """One opened source: its OpenCV capture, size, frame rate and frame count (``None`` when live).

    ``read()`` returns the next frame (after ``vid_stride``) or ``None`` at the end; live sources that drop
    are reopened up to ``reconnect`` times.
    """

    def __init__(
        self,
        source: str,
        *,
        index: int = 0,
        vid_stride: int = 1,
        reconnect: int = 0,
        timeout_ms: int = OPEN_TIMEOUT_MS,
    ) -> None:
        if vid_stride < 1:
            raise TrtqError(f"vid_stride must be at least 1, got {vid_stride}")
        self.source = source.strip()
        self.index = index
        self.kind = source_kind(self.source)
        self.live = self.kind != "file"
        self.vid_stride = int(vid_stride)
        self.reconnect = int(reconnect)
        self.timeout_ms = int(timeout_ms)
        self.name = _describe(self.source, self.kind)
        self.reconnects = 0
        self._first: np.ndarray | None = None
        self._cap = self._open()
        cap = self._cap
        self.width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        self.fps = fps if math.isfinite(fps) and 0 < fps < 1000 else FALLBACK_FPS  # may be 0, NaN or 90 kHz
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if not self.live else 0
        self.frames: int | None = count // self.vid_stride if count > 0 else None
        first = self._grab_and_retrieve()
        if first is None:
            cap.release()
            what = (
                "no frame could be decoded (corrupt or not a video)" if not self.live else "it sent no frame"
            )
            raise TrtqError(f"cannot read {self.name}: {what}")
        self._first = first
        self.height, self.width = int(first.shape[0]), int(first.shape[1])

    def _open(self) -> cv2.VideoCapture:
        if self.kind == "file" and not Path(self.source).is_file():
            raise TrtqError(f"video not found: {self.source}")
        with _quiet_opencv():
            cap = _capture(self.source, self.kind, self.timeout_ms)
        if not cap.isOpened():
            cap.release()
            hint = {
                "camera": "no such camera, or it is in use",
                "network": f"nothing answered within {self.timeout_ms / 1000:.0f} s, or the URL is wrong",
                "gstreamer": "check the pipeline with gst-launch-1.0, and that OpenCV was built with GStreamer",
                "file": "not a video OpenCV can decode, or a corrupt file",
            }[self.kind]
            raise TrtqError(f"cannot open {self.name}: {hint}")
        return cap

    def _grab_and_retrieve(self) -> np.ndarray | None:
        """Grab ``vid_stride`` frames and decode the last (ultralytics' ``LoadImagesAndVideos``)."""
        cap = self._cap
        for _ in range(self.vid_stride):
            if not cap.grab():
                return None
        ok, frame = cap.retrieve()
        if not ok or frame is None or frame.size == 0:
            return None
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        return frame

    def read(self) -> np.ndarray | None:
        """The next frame, or ``None`` when a file ends. A live source that drops is reopened up to
        ``reconnect`` times; after that :class:`TrtqError` says so."""
        if self._first is not None:
            frame, self._first = self._first, None
            return frame
        frame = self._grab_and_retrieve()
        while frame is None and self.live:
            if self.reconnects >= self.reconnect:
                tries = (
                    f" after {self.reconnects} reconnect(s)" if self.reconnect else " (--reconnect N retries)"
                )
                raise TrtqError(f"{self.name} stopped sending frames{tries}")
            self.reconnects += 1
            logger.warning("%s dropped: reconnecting (%d/%d)", self.name, self.reconnects, self.reconnect)
            self._cap.release()
            time.sleep(min(0.5 * self.reconnects, 5.0))
            try:
                self._cap = self._open()
            except TrtqError as exc:
                logger.warning("%s", exc)
                continue
            frame = self._grab_and_retrieve()
        return frame

    def close(self) -> None:
        self._cap.release()

    def describe(self) -> str:
        count = f"{self.frames} frames" if self.frames is not None else "live"
        return f"{self.name}: {self.width}x{self.height} at {self.fps:.2f} FPS, {count}"


@dataclass
class Frame:
    """One decoded frame: which stream, its number in that stream, the BGR image and the decode time."""

    stream: int
    index: int
    image: np.ndarray
    decode_ms: float


END = object()  # end of a stream


class FrameReader:
    """A thread that reads one :class:`VideoSource` into a bounded queue.

    Files put every frame (waiting while the queue is full); ``live`` sources keep only the newest frame,
    dropping the stale one so latency stays bounded. The queue ends with :data:`END`, or with the
    :class:`BaseException` that stopped the reader. ``stop`` ends the thread within one frame.
    """

    def __init__(self, source: VideoSource, *, live: bool, depth: int = 4, stop: threading.Event) -> None:
        self.source = source
        self.live = live
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=1 if live else max(depth, 1))
        self.stop = stop
        self.dropped = 0
        self.thread = threading.Thread(target=self._run, name=f"trtq-reader-{source.index}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _put(self, item: Any) -> None:
        if self.live:
            while True:
                try:
                    self.queue.put_nowait(item)
                    return
                except queue.Full:
                    with contextlib.suppress(queue.Empty):
                        self.queue.get_nowait()
                        self.dropped += 1
        put_blocking(self.queue, item, self.stop)

    def _run(self) -> None:
        n = 0
        try:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                image = self.source.read()
                if image is None:
                    break
                self._put(Frame(self.source.index, n, image, (time.perf_counter() - t0) * 1e3))
                n += 1
            self._put_final(END)
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put_final(exc)
        finally:
            self.source.close()

    def _put_final(self, item: Any) -> None:
        if self.live:  # the end marker must not be dropped: make room for it
            with contextlib.suppress(queue.Empty):
                while self.queue.full():
                    self.queue.get_nowait()
        put_blocking(self.queue, item, self.stop)


def put_blocking(q: queue.Queue[Any], item: Any, stop: threading.Event, poll: float = 0.05) -> bool:
    """Put ``item`` on ``q``, waiting while it is full; give up (False) once ``stop`` is set."""
    while not stop.is_set():
        try:
            q.put(item, timeout=poll)
            return True
        except queue.Full:
            continue
    return False


def get_blocking(q: queue.Queue[Any], stop: threading.Event, poll: float = 0.05) -> Any:
    """The next item of ``q``; :data:`STOPPED` once ``stop`` is set."""
    while not stop.is_set():
        try:
            return q.get(timeout=poll)
        except queue.Empty:
            continue
    return STOPPED


STOPPED = object()  # returned by get_blocking when the pipeline stops


def open_sources(
    sources: Sequence[str | os.PathLike[str]],
    *,
    vid_stride: int = 1,
    reconnect: int = 0,
    timeout_ms: int = OPEN_TIMEOUT_MS,
    on_open: Callable[[VideoSource], None] | None = None,
) -> list[VideoSource]:
    """Open every source (``.streams`` files expanded); on a failure close the ones already open."""
    opened: list[VideoSource] = []
    try:
        for i, s in enumerate(expand_sources(sources)):
            src = VideoSource(s, index=i, vid_stride=vid_stride, reconnect=reconnect, timeout_ms=timeout_ms)
            opened.append(src)
            if on_open is not None:
                on_open(src)
    except BaseException:
        for src in opened:
            src.close()
        raise
    return opened
