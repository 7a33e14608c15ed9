from __future__ import annotations

from pathlib import Path

import click


@click.command(name="eval")
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--data", required=True, help="A data yaml, a folder of images with YOLO labels, or a COCO instances JSON.")
@click.option("--images", type=click.Path(path_type=Path), default=None, help="Image folder for a COCO JSON --data.")
@click.option("--imgsz", type=int, default=640, show_default=True, help="Inference size.")
@click.option("--batch", type=int, default=1, show_default=True, help="Batch size.")
@click.option("--compare", is_flag=True, help="Print one table with the deltas against the first model.")
@click.option("--per-class", is_flag=True, help="Also print mAP per class.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the results as JSON.")
def command(
    models: tuple[Path, ...],
    data: str,
    images: Path | None,
    imgsz: int,
    batch: int,
    compare: bool,
    per_class: bool,
    json_out: Path | None,
) -> None:
    """Measure mAP50-95 and mAP50 of MODELS (.pt, ONNX, Q/DQ ONNX, .engine) with ultralytics' validator.

    NMS as in `yolo val`: conf 0.001, IoU 0.7, at most 300 detections. Several models (or --compare)
    give one table with the differences against the first.
    """
    from trtq.evaluate import compare_table, evaluate_many, result_table
    from trtq.fileio import write_json

    results = evaluate_many(list(models), data, imgsz=imgsz, batch=batch, per_class=per_class, images=images)
    if compare or len(results) > 1:
        click.echo(compare_table(results))
        if per_class:
            for r in results:
                click.echo("")
                click.echo(result_table(r))
    else:
        click.echo(result_table(results[0]))
    if json_out is not None:
        write_json(json_out, results if len(results) > 1 else results[0])
