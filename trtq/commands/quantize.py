from __future__ import annotations

from pathlib import Path

import click

from trtq.quantize import DEFAULT_ALGO, DEFAULT_PERCENTILE, QUANTIZE_ALGOS


@click.command(name="quantize")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--calib", "source", help="Calibration images: a folder (recursive), a glob, a .txt list or a data yaml.")
@click.option("--algo", type=click.Choice(QUANTIZE_ALGOS), default=DEFAULT_ALGO, show_default=True,
              help="Activation range algorithm ('auto': per tensor, the candidate with the smallest histogram error).")
@click.option("--percentile", type=float, default=DEFAULT_PERCENTILE, show_default=True,
              help="Percentile for --algo percentile (and auto's percentile candidate).")
@click.option("--exclude", multiple=True, metavar="NODE", help="Keep this node (name or pattern like '/model.22/*') in float; repeatable.")
@click.option("--max-drop", type=float, default=None, metavar="POINTS",
              help="Keep the most sensitive layers in float until mAP50-95 is within POINTS of FP32 (needs --data).")
@click.option("--data", default=None, help="Labelled data for --max-drop: a data yaml, a labelled image folder or a COCO JSON.")
@click.option("--cache", "table", type=click.Path(path_type=Path), default=None,
              help="Use the ranges (and algorithm) of a calibration cache from `trtq calibrate` instead of calibrating.")
@click.option("--num-images", type=int, default=None, help="Use N images of the (shuffled) calibration set.")
@click.option("--batch", type=int, default=1, show_default=True, help="Images per calibration batch.")
@click.option("--seed", type=int, default=0, show_default=True, help="Shuffle seed for the image order.")
@click.option("--no-head-policy", is_flag=True, help="Also quantize the YOLOv8 head's final convs (costs accuracy).")
@click.option("--quantize-head", is_flag=True,
              help="Quantize the head's six final convs too; the DFL, box decode, Sigmoid and output Concat stay float.")
@click.option("--no-concat-unify", is_flag=True, help="Do not give the inputs of a Concat one shared scale.")
@click.option("--int8-weights", is_flag=True, help="Store weights as INT8 (smaller file; TensorRT >= 10 and ONNX Runtime only).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Q/DQ ONNX path (default <model>.int8.qdq.onnx).")
def command(
    model: Path,
    source: str | None,
    algo: str,
    percentile: float,
    exclude: tuple[str, ...],
    max_drop: float | None,
    data: str | None,
    table: Path | None,
    num_images: int | None,
    batch: int,
    seed: int,
    no_head_policy: bool,
    quantize_head: bool,
    no_concat_unify: bool,
    int8_weights: bool,
    output: Path | None,
) -> None:
    """Write an explicit INT8 Q/DQ ONNX of MODEL (runs on ONNX Runtime CPU and TensorRT).

    Weights are quantized per output channel, activations per tensor; the YOLOv8 head's final convs, DFL,
    box decode, Sigmoid and output Concat stay float. A report (.report.json and .report.md) next to the
    output lists every quantized tensor with its range and every node kept in float, with the reason.
    """
    from trtq.errors import TrtqError
    from trtq.quantize import quantize

    if source is None and table is None:
        raise TrtqError("quantize needs calibration images: pass --calib DIR (or --cache CACHE from `trtq calibrate`)")
    result = quantize(
        model,
        source,
        algo=algo,
        percentile=percentile,
        exclude=exclude,
        max_drop=max_drop,
        data=data,
        num_images=num_images,
        batch=batch,
        seed=seed,
        output=output,
        table=table,
        head_policy=not no_head_policy,
        quantize_head=quantize_head,
        unify_concat=not no_concat_unify,
        int8_weights=int8_weights,
        progress=True,
    )
    click.echo(result.summary())
