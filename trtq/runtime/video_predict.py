"""``trtq predict --source VIDEO``: detections over video files, cameras and streams; annotated video and
JSON Lines out. The pipeline is :class:`trtq.runtime.stream.StreamPipeline`; drawing and encoding run in the
caller's thread while the pipeline works on the next frames."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trtq.errors import TrtqError
from trtq.fileio import signals_held
from trtq.runtime.detector import Detector
from trtq.runtime.sources import VideoSource, open_sources
from trtq.runtime.stream import StreamPipeline, StreamResult, rect_hint
from trtq.runtime.video import VideoWriter, stream_save_paths


@dataclass
class VideoRun:
    """What a video run did: frames per stream, wall time, the videos written and why it stopped."""

    frames: list[int] = field(default_factory=list)
    seconds: float = 0.0
    saved: list[Path] = field(default_factory=list)
    interrupted: bool = False

    @property
    def total(self) -> int:
        return sum(self.frames)

    @property
    def fps(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        how = "interrupted after" if self.interrupted else "processed"
        line = f"{how} {self.total} frame(s) in {self.seconds:.1f} s ({self.fps:.1f} FPS)"
        if self.saved:
            line += "; wrote " + ", ".join(str(p) for p in self.saved)
        return line


def predict_video(
    model: str | Path,
    sources: Sequence[str | os.PathLike[str]],
    *,
    conf: float = 0.25,
    iou: float = 0.7,
    max_det: int = 300,
    save: str | os.PathLike[str] | None = None,
    vid_stride: int = 1,
    live: bool | None = None,
    batch: int | None = None,
    lanes: int | None = None,
    reconnect: int = 0,
    device: int = 0,
    on_open: Callable[[VideoSource], None] | None = None,
    on_hint: Callable[[str], None] | None = None,
    on_result: Callable[[StreamResult], None] | None = None,
) -> VideoRun:
    """Run ``model`` over the frames of ``sources``; ``save``: annotated video(s) at each source's fps and
    size. Ctrl-C (``KeyboardInterrupt``) ends the run early and keeps the frames so far as a playable video."""
    run = VideoRun()
    with Detector(model, conf=conf, iou=iou, max_det=max_det, device=device) as det:
        opened = open_sources(sources, vid_stride=vid_stride, reconnect=reconnect, on_open=on_open)
        run.frames = [0] * len(opened)
        for src in opened:
            hint = rect_hint(det, src.width, src.height, src.name)
            if hint and on_hint is not None:
                on_hint(hint)
        pipeline = StreamPipeline(det, opened, live=live, batch=batch, lanes=lanes)
        if pipeline.lanes > 1 and on_hint is not None and det.on_cpu:
            on_hint(
                f"{pipeline.lanes} frames run side by side on ONNX Runtime's CPU provider (more frames per second, "
                "each frame later); --lanes 1 runs one at a time"
            )
        with contextlib.ExitStack() as stack:
            stack.callback(pipeline.close)
            writers = (
                []
                if save is None
                else [
                    stack.enter_context(
                        VideoWriter(p, s.fps if s.live else s.fps / s.vid_stride, (s.width, s.height))
                    )
                    for p, s in zip(stream_save_paths(save, len(opened)), opened, strict=True)
                ]
            )
            t0 = time.perf_counter()
            try:
                _consume(pipeline, writers, run, on_result)
            except KeyboardInterrupt:
                run.interrupted = True
            finally:
                run.seconds = time.perf_counter() - t0
                pipeline.close()
        run.saved = [w.path for w in writers if w.frames]
    return run


def _consume(
    pipeline: StreamPipeline,
    writers: list[VideoWriter],
    run: VideoRun,
    on_result: Callable[[StreamResult], None] | None,
) -> None:
    draw = None
    if writers:
        from trtq.draw import draw_detections

        draw = draw_detections
    for res in pipeline:
        image = draw(res.image, res.detections) if draw is not None else None
        with signals_held():  # written and counted together: Ctrl-C lands before or after, never between
            if image is not None:
                writers[res.stream].write(image)
            run.frames[res.stream] += 1
        if on_result is not None:
            on_result(res)


def check_save_path(save: str | os.PathLike[str]) -> None:
    """``--save`` for video names a file such as out.mp4 (not a folder)."""
    from trtq.runtime.video import FOURCC

    p = Path(save)
    if p.is_dir() or p.suffix.lower() not in FOURCC:
        raise TrtqError(f"--save for video takes a file name ending in {', '.join(sorted(FOURCC))}, got {p}")
