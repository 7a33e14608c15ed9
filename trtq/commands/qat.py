from __future__ import annotations

from pathlib import Path

import click

from trtq.commands._options import output_option
from trtq.qat import DEFAULT_BATCH, DEFAULT_EPOCHS, DEFAULT_LR


@click.command(name="qat")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", default=None, help="ultralytics data yaml: labelled training images (its train split) in the model's task format.")
@click.option("--epochs", type=int, default=DEFAULT_EPOCHS, show_default=True, help="Fine-tuning epochs.")
@click.option("--batch", type=int, default=DEFAULT_BATCH, show_default=True, help="Images per fine-tuning step.")
@click.option("--lr", type=float, default=DEFAULT_LR, show_default=True, help="Initial learning rate (AdamW, cosine to lr/100).")
@click.option("--imgsz", type=int, default=640, show_default=True, help="Image size for fine-tuning and export.")
@click.option("--quantize-head", is_flag=True,
              help="Quantize the head's six final convs too (all convs INT8); the DFL and box decode stay float.")
@click.option("--distill", is_flag=True, help="Fine-tune against the FP32 model's outputs (no labels needed, only images).")
@click.option("--calib", default=None, help="Calibration images (folder, glob, .txt list or data yaml) [default: --data's train split].")
@click.option("--num-images", type=int, default=None, help="Fine-tune on N images of the (shuffled) training set.")
@click.option("--calib-images", type=int, default=None, help="Calibrate on N images of the (shuffled) calibration set.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed for image order and augmentation.")
@output_option("Q/DQ ONNX path, .onnx (default <model>.qat.int8.qdq.onnx; a folder: that name inside it).")
def command(
    model: Path,
    data: str | None,
    epochs: int,
    batch: int,
    lr: float,
    imgsz: int,
    quantize_head: bool,
    distill: bool,
    calib: str | None,
    num_images: int | None,
    calib_images: int | None,
    seed: int,
    output: str | None,
) -> None:
    """Quantization-aware fine-tuning of an ultralytics MODEL.pt (YOLOv8 detect, segment, pose or OBB); writes a Q/DQ INT8 ONNX.

    Fake quantization goes exactly where `trtq quantize` puts Q/DQ (per-channel weights, per-tensor
    activations, shared Concat scales, residual Adds); ranges start from trtq's calibration. Fine-tunes with
    ultralytics' trainer for the model's task on --data's labels, or with --distill against the FP32 model
    on images alone.
    Also writes the fine-tuned float ONNX with a calibration cache (implicit INT8) and a report.
    """
    from trtq.fileio import default_output, output_path
    from trtq.qat import qat

    out = output_path(output, default_output(model, ".qat.int8.qdq.onnx"), suffixes=(".onnx",),
                      inputs=(model, data, calib), companions=QAT_COMPANIONS)
    result = qat(
        model,
        data=data,
        calib=calib,
        epochs=epochs,
        batch=batch,
        lr=lr,
        imgsz=imgsz,
        quantize_head=quantize_head,
        distill=distill,
        output=out,
        num_images=num_images,
        calib_images=calib_images,
        seed=seed,
        progress=True,
    )
    click.echo(result.summary())


# files written beside the Q/DQ ONNX (trtq.qat.output_paths)
QAT_COMPANIONS = ("stem:.float.onnx", "stem:.cache", "stem:.cache.json", "stem:.report.json", "stem:.report.md")
