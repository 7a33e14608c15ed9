from __future__ import annotations

from pathlib import Path

import click


@click.command(name="compare")
@click.argument("reference", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@click.option("--calib", "source", required=True, help="Unlabelled images: a folder, a glob, a .txt list or a data yaml.")
@click.option("--num-images", type=int, default=16, show_default=True, help="Images to compare on.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Shuffle seed for the image choice.")
@click.option("--conf", type=float, default=0.25, show_default=True, help="Detection confidence for the agreement check.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the metrics as JSON.")
def command(reference: Path, candidate: Path, source: str, num_images: int, seed: int, conf: float, json_out: Path | None) -> None:
    """Fidelity of CANDIDATE (e.g. a Q/DQ ONNX) against REFERENCE (FP32) without labels.

    Per output: SQNR (dB) and cosine similarity. For YOLO head outputs also detection agreement: detections
    decoded and matched at IoU >= 0.5, with recall, precision and class agreement.
    """
    from trtq.fidelity import compare, compare_text
    from trtq.fileio import write_json

    metrics = compare(reference, candidate, source, num_images=num_images, seed=seed, conf=conf)
    click.echo(compare_text(metrics))
    if json_out is not None:
        write_json(json_out, metrics)
