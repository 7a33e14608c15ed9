"""`trtq predict`: run any task (detect, segment, pose, OBB) on images; draw the results or write JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from trtq.commands._options import device_option
from trtq.errors import TrtqError


@click.command(name="predict")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("more_sources", nargs=-1, metavar="")
@click.option(
    "--source",
    required=True,
    help="An image, a directory, a glob ('imgs/*.jpg'), a .txt list of paths or an http(s) image URL; or video: files, camera "
    "indexes (0), rtsp:// or http:// URLs, GStreamer pipelines, .streams lists; several video sources after "
    "--source run batched together.",
)
@click.option(
    "--conf", type=click.FloatRange(0, 1), default=0.25, show_default=True, help="Confidence threshold."
)
@click.option("--iou", type=click.FloatRange(0, 1), default=0.7, show_default=True, help="NMS IoU threshold.")
@click.option(
    "--max-det", type=click.IntRange(min=1), default=300, show_default=True, help="Most detections per image."
)
@click.option(
    "--save",
    "save",
    type=click.Path(path_type=Path),
    default=None,
    help="Images: write them with drawn results (boxes, masks, keypoints, rotated boxes) into this directory. "
    "Video: write the annotated video to this file (out.mp4; out_<i>.mp4 per stream for several).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print detections as JSON on stdout (and write DIR/predictions.json with --save): boxes, scores and "
    "classes; masks (COCO RLE), keypoints or rotated boxes by task. Video: JSON Lines, one line per frame.",
)
@click.option("--vid-stride", type=click.IntRange(min=1), default=1, show_default=True,
              help="Video: run every Nth frame.")
@click.option("--live/--no-live", default=None,
              help="Video: keep only the newest frame of live sources (default for cameras and URLs).")
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="Video: frames per inference (default: one per stream when the model takes it).")
@click.option("--lanes", type=click.IntRange(min=1), default=None,
              help="Video: inferences run side by side (ONNX Runtime on CPU: sessions sharing the cores; default 2 "
              "for files on a machine with 2+ cores, 1 for live sources and engines).")
@click.option("--reconnect", type=click.IntRange(min=0), default=0, show_default=True,
              help="Video: reopen a dropped live stream up to N times.")
@device_option("CUDA device index (engines).")
def command(
    model: Path,
    more_sources: tuple[str, ...],
    source: str,
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
    """Run MODEL (.engine or .onnx) on the images or video of --source: boxes, masks, keypoints or rotated boxes.

    Every ultralytics task is decoded, as its metadata says: detect, segment (masks), pose (keypoints)
    and OBB (rotated boxes), from grid or end-to-end (YOLO26) heads.

    \b
    Examples:
      trtq predict yolov8n.int8.engine --source bus.jpg --save out/
      trtq predict yolov8n.onnx --source 'images/*.jpg' --json > detections.json
      trtq predict yolov8n.int8.engine --source video.mp4 --save out.mp4
      trtq predict yolov8n.onnx --source 0 rtsp://cam/stream --json > frames.jsonl
    """
    from trtq.runtime.sources import is_video_source

    sources = (source, *more_sources)
    if any(is_video_source(s) for s in sources):
        from trtq.commands._video import run_video

        run_video(model, sources, conf=conf, iou=iou, max_det=max_det, save=save, as_json=as_json,
                  vid_stride=vid_stride, live=live, batch=batch, lanes=lanes, reconnect=reconnect,
                  device=device)
        return
    if more_sources:
        raise TrtqError(f"several sources are for video; for images give one folder, glob or list ({sources})")
    from trtq.runtime import Prediction, predict

    def report(pred: Prediction) -> None:
        click.echo(pred.summary(), err=as_json)

    results = predict(
        model,
        source,
        conf=conf,
        iou=iou,
        max_det=max_det,
        save=save,
        json_path=(save / "predictions.json") if (save is not None and as_json) else None,
        device=device,
        on_result=report,
    )
    if as_json:
        doc = {
            "model": str(model),
            "task": results[0].detections.task if results else None,
            "conf": conf,
            "iou": iou,
            "images": [r.to_dict() for r in results],
            "skipped": results.skipped,
        }
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    if save is not None:
        click.echo(f"saved {len(results)} image(s) to {save}", err=True)
