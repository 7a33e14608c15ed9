"""``Detector.stream``: detections over video, one stage per thread, stages joined by bounded queues.

::

    reader (one per source) -> [frames] -> preprocess -> [tensors] -> inference -> [outputs]
        -> postprocess -> [results] -> the caller's loop (draw, encode, JSON)

Every stage runs while the others do: decoding frame k+2, letterboxing k+1 and the model on k overlap, so the
frame rate approaches that of the slowest stage instead of the sum of all. OpenCV, numpy's large copies and
ONNX Runtime / TensorRT release the GIL, so the threads really run side by side.

- Files keep every frame, in order. Live sources (cameras, URLs, GStreamer) with ``live=True`` keep only the
  newest frame, so latency stays bounded when the model is slower than the camera.
- Several sources are batched together: one inference per round over one frame of every stream (when the
  model takes that batch; otherwise one call per frame), each result tagged with its stream. A live stream
  with no frame within ``push_timeout`` of the round's first sits the round out, so one stalled camera does
  not stop the others.
- One source with ``batch`` > 1 runs up to ``batch`` consecutive frames per inference.
- ``lanes`` inferences run side by side (:meth:`Detector.inference_lanes`): on ONNX Runtime's CPU provider, files
  default to 2 lanes (frame k on one core group while frame k+1 runs on the other: more frames per second than
  one frame spread over every core, at twice the per-frame latency), live sources to 1. Postprocessing puts the
  results back in order.
- The queues are small (``depth``), so memory is bounded and a slow consumer slows the readers down.
- Every thread ends on every exit path: the generator finishing, ``close()``, an exception in any stage
  (raised in the caller's thread) and ``KeyboardInterrupt`` in the caller. Threads are daemons as a last
  resort only; they are joined.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from trtq.errors import TrtqError
from trtq.runtime.decode import Detections
from trtq.runtime.sources import (
    END,
    STOPPED,
    Frame,
    FrameReader,
    VideoSource,
    get_blocking,
    put_blocking,
)


class StreamModel(Protocol):
    """What the pipeline needs of a model: :class:`~trtq.runtime.Detector` is one."""

    path: Path
    imgsz: tuple[int, int]
    stride: int
    batch_range: tuple[int, int]

    @property
    def input_dtype(self) -> np.dtype[Any]: ...

    def fill_input(self, dst: np.ndarray, image: np.ndarray, *, rgb: bool = False) -> None: ...

    def run_tensor(self, tensor: np.ndarray) -> list[np.ndarray]: ...

    def input_hw(self, image_hw: tuple[int, int]) -> tuple[int, int]: ...

    def cpu_lanes(self) -> int: ...

    def inference_lanes(self, n: int) -> contextlib.AbstractContextManager[list[Callable[[np.ndarray], list[np.ndarray]]]]: ...

    def decode_outputs(
        self,
        outputs: Sequence[np.ndarray],
        shapes: Sequence[tuple[int, ...]],
        input_hw: tuple[int, int] | None = None,
    ) -> list[Detections]: ...


STAGES = ("decode", "preprocess", "inference", "postprocess")
JOIN_TIMEOUT_S = 10.0
LIVE_POLL_S = 0.002  # how often a round of several live streams looks for their next frames


@dataclass
class StreamResult:
    """The detections of one frame of one stream, the frame itself and what each stage cost (ms)."""

    stream: int  # index of the source (order given; .streams files expanded)
    frame: int  # frame number in that stream (after vid_stride)
    image: np.ndarray = field(repr=False)  # the BGR frame
    detections: Detections
    source: str
    timing: dict[str, float]  # decode, preprocess, inference, postprocess: ms for this frame's batch
    batch: int  # frames in the inference batch this frame ran in

    def to_dict(self) -> dict[str, Any]:
        h, w = self.detections.image_shape
        return {
            "stream": self.stream,
            "source": self.source,
            "frame": self.frame,
            "width": w,
            "height": h,
            "ms": {k: round(v, 2) for k, v in self.timing.items()},
            "detections": self.detections.to_list(),
        }


@dataclass
class _Batch:
    seq: int  # order of the batch in the pipeline (lanes may finish out of order)
    frames: list[Frame]
    tensor: np.ndarray
    timing: dict[str, float]
    outputs: list[np.ndarray] | None = None


def stream_batch(det: StreamModel, n_streams: int, batch: int | None) -> int:
    """Frames per inference: ``batch`` if given (clipped to the model's range), else one per stream when the
    model takes that many at once (dynamic batch, or a static batch equal to the stream count), else 1."""
    lo, hi = det.batch_range
    if batch is not None:
        if batch < 1:
            raise TrtqError(f"batch must be at least 1, got {batch}")
        return max(1, min(batch, hi)) if lo != hi else hi
    if n_streams > 1 and lo <= n_streams <= hi:
        return n_streams
    return 1


def default_lanes(det: StreamModel, *, live: bool) -> int:
    """Inferences side by side when none is asked: one for live sources (lowest latency), else the model's
    :meth:`cpu_lanes`."""
    return 1 if live else det.cpu_lanes()


def rect_hint(det: StreamModel, width: int, height: int, name: str, *, threshold: float = 0.75) -> str | None:
    """One line when a rectangular export fitted to this frame's aspect would do much less work than the
    model's square input (the fraction of the canvas that is padding), with the ``trtq export`` command."""
    mh, mw = det.imgsz
    if det.input_hw((height, width)) != (mh, mw) or width <= 0 or height <= 0:  # a dynamic model fits itself
        return None
    s = max(int(det.stride), 1)
    side = max(mh, mw)
    r = side / max(width, height)
    rh = int(math.ceil(max(round(height * r), 1) / s) * s)
    rw = int(math.ceil(max(round(width * r), 1) / s) * s)
    frac = (rh * rw) / (mh * mw)
    if frac >= threshold or (rh, rw) == (mh, mw):
        return None
    return (
        f"{name} is {width}x{height}: a {rh}x{rw} input does {frac:.0%} of the work of this {mh}x{mw} model; "
        f"export one with `trtq export {det.path.stem}.pt --imgsz {rh} {rw}`"
    )


class StreamPipeline:
    """The threads behind :meth:`Detector.stream`; iterate it for :class:`StreamResult` objects, in order.

    ``sources``: opened :class:`VideoSource` objects (closed by the pipeline). ``live``: keep only the newest
    frame of live sources (default: True for live sources). ``depth``: queue length between stages.
    ``lanes``: inferences run side by side (default: the model's :meth:`cpu_lanes` when every source is a
    file, else 1). ``push_timeout``: with several live sources, how long a round waits for the other streams
    after its first frame (default: one frame period of the fastest live source, 20-200 ms).
    """

    def __init__(
        self,
        det: StreamModel,
        sources: Sequence[VideoSource],
        *,
        live: bool | None = None,
        batch: int | None = None,
        depth: int = 2,
        lanes: int | None = None,
        push_timeout: float | None = None,
    ) -> None:
        if not sources:
            raise TrtqError("no video source to read")
        if lanes is not None and lanes < 1:
            raise TrtqError(f"lanes must be at least 1, got {lanes}")
        self.det = det
        self.sources = list(sources)
        self.batch = stream_batch(det, len(self.sources), batch)
        self._stop = threading.Event()
        self.readers = [
            FrameReader(
                s,
                live=(s.live if live is None else live and s.live),
                depth=max(depth, self.batch) + 1,
                stop=self._stop,
            )
            for s in self.sources
        ]
        if lanes is None:
            lanes = default_lanes(det, live=any(r.live for r in self.readers))
        self.lanes = lanes
        if push_timeout is None:
            rates = [float(getattr(s, "fps", 0) or 0) for s in self.sources if s.live]
            push_timeout = min(max(1.0 / max(rates), 0.02), 0.2) if rates and max(rates) > 0 else 0.04
        self.push_timeout = float(push_timeout)
        self._q_pre: queue.Queue[Any] = queue.Queue(maxsize=max(depth, lanes))
        self._q_post: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._q_out: queue.Queue[Any] = queue.Queue(maxsize=depth * max(self.batch, 1) + 1)
        self._threads = [
            threading.Thread(
                target=self._guard, args=(self._preprocess, self._q_pre), name="trtq-preprocess", daemon=True
            ),
            threading.Thread(
                target=self._guard, args=(self._infer, self._q_post), name="trtq-inference", daemon=True
            ),
            threading.Thread(
                target=self._guard,
                args=(self._postprocess, self._q_out),
                name="trtq-postprocess",
                daemon=True,
            ),
        ]
        self._started = False
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._started:
            return
        self._started = True
        for r in self.readers:
            r.start()
        for t in self._threads:
            t.start()

    def close(self) -> None:
        """Stop every thread and wait for them (idempotent); release the sources."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        threads = [*self._threads, *(r.thread for r in self.readers)]
        for t in threads:
            if t.is_alive():
                t.join(JOIN_TIMEOUT_S)
        if not self._started:
            for s in self.sources:
                s.close()

    @property
    def threads(self) -> list[threading.Thread]:
        return [*self._threads, *(r.thread for r in self.readers)]

    def __iter__(self) -> Iterator[StreamResult]:
        self.start()
        try:
            while True:
                item = get_blocking(self._q_out, self._stop)
                if item is END or item is STOPPED:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def _guard(self, stage: Callable[[], None], out: Any) -> None:
        """Run a stage; hand an exception (or the end) downstream instead of losing it."""
        try:
            stage()
        except BaseException as exc:
            put_blocking(out, exc, self._stop)

    # -- stages ----------------------------------------------------------------------------------------------
    def _take(self, r: FrameReader, active: list[FrameReader]) -> Frame | BaseException | None:
        """The next frame of ``r``; ``None`` when it ended (and is dropped from ``active``) or on stop."""
        item = get_blocking(r.queue, self._stop)
        if item is END or item is STOPPED:
            if r in active:
                active.remove(r)
            return None
        return item

    def _next_frames(self, active: list[FrameReader]) -> list[Frame]:
        """One frame of every active stream (several streams), or up to ``batch`` frames of one stream
        (a live stream does not wait to fill a batch)."""
        frames: list[Frame] = []
        if len(self.readers) > 1:
            for r in [r for r in active if not r.live]:  # files: every frame, in order
                item = self._take(r, active)
                if isinstance(item, BaseException):
                    raise item
                if item is not None:
                    frames.append(item)
            frames += self._gather_live([r for r in active if r.live], active, started=bool(frames))
            return frames
        r = active[0]
        while len(frames) < self.batch and not (frames and r.live) and r in active:
            item = self._take(r, active)
            if isinstance(item, BaseException):
                raise item
            if item is not None:
                frames.append(item)
        return frames

    def _gather_live(self, live: list[FrameReader], active: list[FrameReader], *, started: bool) -> list[Frame]:
        """A frame of each live stream that has one within ``push_timeout`` of the round's first frame (as
        DeepStream's muxer pushes a partial batch): a stalled camera leaves the others running; it rejoins
        with its next frame. Waits for the first frame as long as it takes (the readers end dropped streams)."""
        frames: list[Frame] = []
        deadline = time.perf_counter() + self.push_timeout if started else None
        waiting = list(live)
        while waiting and not self._stop.is_set():
            got = False
            for r in list(waiting):
                try:
                    item = r.queue.get_nowait()
                except queue.Empty:
                    continue
                got = True
                waiting.remove(r)
                if item is END or item is STOPPED:
                    active.remove(r)
                elif isinstance(item, BaseException):
                    raise item
                else:
                    frames.append(item)
                    if deadline is None:
                        deadline = time.perf_counter() + self.push_timeout
            if deadline is not None and time.perf_counter() >= deadline:
                break
            if not got:
                time.sleep(LIVE_POLL_S)
        return frames

    def _preprocess(self) -> None:
        det = self.det
        active = list(self.readers)
        seq = 0
        while active and not self._stop.is_set():
            frames = self._next_frames(active)
            if self._stop.is_set():
                return
            if not frames:
                continue
            t0 = time.perf_counter()
            shapes = {f.image.shape[:2] for f in frames}  # one shape: a dynamic model's minimum rectangle
            h, w = det.input_hw(next(iter(shapes))) if len(shapes) == 1 else det.imgsz
            tensor = np.empty((len(frames), 3, h, w), dtype=det.input_dtype)
            for i, f in enumerate(frames):
                det.fill_input(tensor[i], f.image)
            pre = (time.perf_counter() - t0) * 1e3
            decode = max(f.decode_ms for f in frames)
            if not put_blocking(
                self._q_pre, _Batch(seq, frames, tensor, {"decode": decode, "preprocess": pre}), self._stop
            ):
                return
            seq += 1
        put_blocking(self._q_pre, END, self._stop)

    def _infer(self) -> None:
        det = self.det
        if getattr(det, "backend", None) == "tensorrt" and hasattr(det, "overlapped"):
            with det.overlapped() as runner:  # pyright: ignore[reportAttributeAccessIssue]
                self._infer_overlapped(runner)
            return
        with det.inference_lanes(self.lanes) as runs:
            helpers = [
                threading.Thread(
                    target=self._guard,
                    args=(lambda run=run: self._infer_lane(run), self._q_post),
                    name=f"trtq-inference-{k}",
                    daemon=True,
                )
                for k, run in enumerate(runs[1:], start=1)
            ]
            for t in helpers:
                t.start()
            try:
                ended = self._infer_lane(runs[0])
            except BaseException as exc:  # the caller hears of it first, then every lane stops
                put_blocking(self._q_post, exc, self._stop)
                ended = False
            finally:
                for t in helpers:  # the lanes' sessions close when the block ends: after every lane stopped
                    while t.is_alive():
                        t.join(0.05)
                        if self._stop.is_set():
                            t.join(JOIN_TIMEOUT_S)
                            break
            if ended:
                put_blocking(self._q_post, END, self._stop)

    def _infer_lane(self, run: Callable[[np.ndarray], list[np.ndarray]]) -> bool:
        """One lane: batches from the preprocess queue through ``run`` until the end (True: the input ended;
        the end marker is put back for the other lanes) or a stop / an upstream error (False)."""
        while True:
            item = get_blocking(self._q_pre, self._stop)
            if item is STOPPED:
                return False
            if item is END:
                put_blocking(self._q_pre, END, self._stop)  # every lane sees the end
                return True
            if isinstance(item, BaseException):
                put_blocking(self._q_post, item, self._stop)
                return False
            t0 = time.perf_counter()
            item.outputs = run(item.tensor)
            item.timing["inference"] = (time.perf_counter() - t0) * 1e3
            if not put_blocking(self._q_post, item, self._stop):
                return False

    def _infer_overlapped(self, runner: Any) -> None:
        """TensorRT: batch k+1 is copied in and queued while batch k executes (:mod:`trtq.runtime.overlap`)."""
        pending: deque[tuple[_Batch, float]] = deque()

        def finish() -> bool:
            item, t0 = pending.popleft()
            item.outputs = runner.collect()
            item.timing["inference"] = (time.perf_counter() - t0) * 1e3
            return put_blocking(self._q_post, item, self._stop)

        while True:
            if pending and self._q_pre.empty() and not finish():  # nothing to overlap with: no added latency
                return
            item = get_blocking(self._q_pre, self._stop)
            if item is STOPPED:
                return
            if item is END or isinstance(item, BaseException):
                while pending:
                    if not finish():
                        return
                put_blocking(self._q_post, item, self._stop)
                return
            if len(pending) == runner.SLOTS and not finish():
                return
            pending.append((item, time.perf_counter()))
            runner.submit(item.tensor)
            if len(pending) == runner.SLOTS and not finish():
                return

    def _postprocess(self) -> None:
        pending: dict[int, _Batch] = {}  # lanes finish out of order: hold a batch until its turn
        next_seq = 0
        while True:
            item = get_blocking(self._q_post, self._stop)
            if item is STOPPED:
                return
            if item is END or isinstance(item, BaseException):
                put_blocking(self._q_out, item, self._stop)
                return
            pending[item.seq] = item
            while next_seq in pending:
                if not self._emit(pending.pop(next_seq)):
                    return
                next_seq += 1

    def _emit(self, item: _Batch) -> bool:
        """Decode one batch and hand its frames' results to the caller (False once the pipeline stops)."""
        det = self.det
        if item.outputs is None:  # every lane sets them before handing the batch on
            raise TrtqError(f"batch {item.seq} reached postprocessing without outputs")
        t0 = time.perf_counter()
        hw = (int(item.tensor.shape[2]), int(item.tensor.shape[3]))
        dets = det.decode_outputs(item.outputs, [f.image.shape[:2] for f in item.frames], hw)
        item.timing["postprocess"] = (time.perf_counter() - t0) * 1e3
        for f, d in zip(item.frames, dets, strict=True):
            src = self.sources[f.stream]
            res = StreamResult(
                f.stream, f.index, f.image, d, src.source, dict(item.timing), len(item.frames)
            )
            if not put_blocking(self._q_out, res, self._stop):
                return False
        return True
