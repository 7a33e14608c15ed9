"""The video side of ``trtq predict``: progress with live FPS, JSON Lines, Ctrl-C/SIGTERM that keep the video."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from trtq.errors import TrtqError


def run_video(
    model: Path,
    sources: Sequence[str],
    *,
    conf: float,
    iou: float,
    max_det: int,
    save: Path | None,
    as_json: bool,
    vid_stride: int,
    live: bool | None,
    batch: int | None,
    lanes: int | None,
    reconnect: int,
    device: int,
) -> None:
    """Run the video pipeline with a progress bar (frames and FPS; no total for live sources)."""
    from tqdm import tqdm

    from trtq.runtime.sources import VideoSource
    from trtq.runtime.stream import StreamResult
    from trtq.runtime.video_predict import check_save_path, predict_video

    if save is not None:
        check_save_path(save)
    opened: list[VideoSource] = []
    bar: Any = None

    def on_open(src: VideoSource) -> None:
        opened.append(src)
        click.echo(f"{src.index + 1}: {src.describe()}", err=True)

    def on_hint(text: str) -> None:
        click.echo(f"note: {text}", err=True)

    def on_result(res: StreamResult) -> None:
        nonlocal bar
        if bar is None:
            live_any = any(s.frames is None for s in opened)
            total = None if live_any else sum(s.frames or 0 for s in opened)
            bar = tqdm(
                total=total,
                unit="frame",
                desc="predict",
                file=sys.stderr,
                disable=None,
                leave=False,
                dynamic_ncols=True,
            )
        bar.update(1)
        if as_json:
            sys.stdout.write(json.dumps(res.to_dict(), separators=(",", ":")) + "\n")

    def stop(signum: int, frame: object) -> None:  # a terminated run finishes the video as Ctrl-C does
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        run = predict_video(
            model,
            sources,
            conf=conf,
            iou=iou,
            max_det=max_det,
            save=save,
            vid_stride=vid_stride,
            live=live,
            batch=batch,
            lanes=lanes,
            reconnect=reconnect,
            device=device,
            on_open=on_open,
            on_hint=on_hint,
            on_result=on_result,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
        if bar is not None:
            bar.close()
    click.echo(run.summary(), err=True)
    if run.interrupted:
        raise TrtqError(
            f"interrupted after {run.total} frame(s)"
            + (
                f"; {', '.join(map(str, run.saved))} holds them (playable)"
                if run.saved
                else "; no video kept"
            ),
            exit_code=130,
        )
