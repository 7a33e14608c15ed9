"""`trtq predict`: run any task (detect, segment, pose, OBB) on images; draw the results or write JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from trtq.commands._options import device_option, path_option


@click.command(name="predict")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--source", required=True, help="An image, a directory, a glob ('imgs/*.jpg') or a .txt list of paths."
)
@click.option(
    "--conf", type=click.FloatRange(0, 1), default=0.25, show_default=True, help="Confidence threshold."
)
@click.option("--iou", type=click.FloatRange(0, 1), default=0.7, show_default=True, help="NMS IoU threshold.")
@click.option(
    "--max-det", type=click.IntRange(min=1), default=300, show_default=True, help="Most detections per image."
)
@path_option(
    "--save", "save", "Write images with drawn results (boxes, masks, keypoints, rotated boxes) into this directory.",
    folder=True,
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print detections as JSON on stdout (and write DIR/predictions.json with --save): boxes, scores and "
    "classes; masks (COCO RLE), keypoints or rotated boxes by task.",
)
@device_option("CUDA device index (engines).")
def command(
    model: Path,
    source: str,
    conf: float,
    iou: float,
    max_det: int,
    save: Path | None,
    as_json: bool,
    device: int,
) -> None:
    """Run MODEL (.engine or .onnx) on the images of --source: boxes, masks, keypoints or rotated boxes.

    Every ultralytics task is decoded, as its metadata says: detect, segment (masks), pose (keypoints)
    and OBB (rotated boxes), from grid or end-to-end (YOLO26) heads.

    \b
    Examples:
      trtq predict yolov8n.int8.engine --source bus.jpg --save out/
      trtq predict yolov8n.onnx --source 'images/*.jpg' --json > detections.json
    """
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
