from __future__ import annotations

from pathlib import Path

import click

from calibrators.ranges import DEFAULT_ALGO, DEFAULT_PERCENTILE
from trtq.amax import QUANTIZE_ALGOS
from trtq.commands._options import output_option
from trtq.cpuisa import ISA_AUTO, ISA_CHOICES, TARGET_CPU
from trtq.quantize_options import CPU_DEFAULT_ALGO, TARGETS, QuantizeOptions


@click.command(name="quantize")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--calib", "source", help="Calibration images: a folder (recursive), a glob, a .txt list or a data yaml.")
@click.option("--target", type=click.Choice(TARGETS), default=TARGETS[0], show_default=True,
              help="Who runs the INT8 model: TensorRT (Q/DQ on weighted-op inputs), or ONNX Runtime's CPU provider "
                   "(Q/DQ on every body tensor, u8 asymmetric activations, so it runs integer kernels).")
@click.option("--algo", type=click.Choice(QUANTIZE_ALGOS), default=None,
              help=f"Activation range algorithm ('auto': per tensor, the candidate with the smallest histogram error). "
                   f"Default: {DEFAULT_ALGO} for tensorrt, {CPU_DEFAULT_ALGO} for cpu.")
@click.option("--percentile", type=float, default=DEFAULT_PERCENTILE, show_default=True,
              help="Percentile for --algo percentile (and auto's percentile candidate).")
@click.option("--exclude", multiple=True, metavar="NODE", help="Keep this node (name or pattern like '/model.22/*') in float; repeatable.")
@click.option("--max-drop", type=float, default=None, metavar="POINTS",
              help="Keep the most sensitive layers in float until mAP50-95 is within POINTS of FP32 (needs --data).")
@click.option("--data", default=None, help="Labelled data for --max-drop: a data yaml, a labelled image folder or a COCO JSON.")
@click.option("--cache", "table", type=click.Path(path_type=Path), default=None,
              help="Use the ranges (and algorithm) of a calibration cache from `trtq calibrate` instead of calibrating.")
@click.option("--force-cache", is_flag=True, help="Use --cache even if its record says it was made from another model.")
@click.option("--num-images", type=int, default=None, help="Use N images of the (shuffled) calibration set.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Images per calibration batch.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Shuffle seed for the image order.")
@click.option("--no-head-policy", is_flag=True,
              help="Also quantize the head (branch last convs, DFL) and attention MatMuls (costs accuracy).")
@click.option("--quantize-head", is_flag=True,
              help="Quantize the last conv of every head branch too; DFL, decode, Sigmoid and output Concat stay float.")
@click.option("--no-concat-unify", is_flag=True, help="Do not give the inputs of a Concat one shared scale.")
@click.option("--int8-weights", is_flag=True, help="Store weights as INT8 (smaller file; TensorRT >= 10 and ONNX Runtime only).")
@click.option("--ref-images", type=click.IntRange(min=0), default=8, show_default=True,
              help="Images in the reference inputs/outputs written for `trtq verify` (0: none; needs --calib).")
@click.option("--reduce-range", is_flag=True,
              help="--target cpu: 7-bit weights on any --cpu-isa (no 16-bit saturation; half the weight resolution).")
@click.option("--cpu-isa", type=click.Choice(ISA_CHOICES), default=ISA_AUTO, show_default=True,
              help="--target cpu: the CPU the model is for (auto: this one). avx2 (x86 without VNNI) gets 8-bit weights "
                   "whose pairs cannot saturate its 16-bit sums; avx-vnni, avx512-vnni and arm64 full 8-bit weights.")
@output_option("Q/DQ ONNX path, .onnx (default <model>.int8.qdq.onnx; <model>.int8.cpu.onnx for --target cpu; "
               "a folder: that name inside it).")
def command(
    model: Path,
    source: str | None,
    target: str,
    algo: str | None,
    percentile: float,
    exclude: tuple[str, ...],
    max_drop: float | None,
    data: str | None,
    table: Path | None,
    force_cache: bool,
    num_images: int | None,
    batch: int,
    seed: int,
    no_head_policy: bool,
    quantize_head: bool,
    no_concat_unify: bool,
    int8_weights: bool,
    ref_images: int,
    reduce_range: bool,
    cpu_isa: str,
    output: str | None,
) -> None:
    """Write an explicit INT8 Q/DQ ONNX of MODEL (runs on ONNX Runtime CPU and TensorRT).

    With --target cpu the layout is made for ONNX Runtime's CPU provider instead: every tensor of the
    network body is quantized (u8, asymmetric zero point), so convs, SiLU, residual Adds and Concats run as
    integer kernels (QLinearConv, QLinearSigmoid, QLinearMul, QLinearAdd, QLinearConcat). TensorRT cannot
    build that model; `trtq build` refuses it.

    Weights are quantized per output channel, activations per tensor; what decodes stays float for every
    task (the last conv of each head branch: box, class, mask coefficients, keypoints, angle; the mask
    prototype's last conv; DFL, box/keypoint/angle decode, Sigmoid, end-to-end selection, output Concat)
    and so does YOLO11/YOLO26 attention. FP16 models keep FP16 (scales in float16, opset 19); opset 11-12
    models are upgraded to 13. A report (.report.json and .report.md) next to the output lists every
    quantized tensor with its range and what stayed float per head branch, with the reason.
    """
    from trtq.cpu_target import CPU_SUFFIX, quantize_cpu
    from trtq.errors import TrtqError
    from trtq.fileio import default_output, output_path, output_set
    from trtq.quantize import quantize

    options = QuantizeOptions(
        target=target, algo=algo, percentile=percentile, exclude=exclude, num_images=num_images, batch=batch,
        seed=seed, head_policy=not no_head_policy, quantize_head=quantize_head, unify_concat=not no_concat_unify,
        int8_weights=int8_weights, cache=table, force_cache=force_cache, max_drop=max_drop, data=data,
        cpu_isa=cpu_isa, reduce_range=reduce_range,
    )
    options.validate()  # before the output is checked: a wrong option is the first thing to fix
    cpu = target == TARGET_CPU
    default = default_output(model, CPU_SUFFIX if cpu else ".int8.qdq.onnx")
    out = output_path(output, default, suffixes=(".onnx",), inputs=(model, table, source, data),
                      companions=OUTPUT_COMPANIONS)
    if source is None and (cpu or table is None):
        raise TrtqError("quantize --target cpu needs calibration images: pass --calib DIR" if cpu else
                        "quantize needs calibration images: pass --calib DIR (or --cache CACHE from `trtq calibrate`)")
    with output_set():  # the model, its report and its references land together, or none of them
        write = quantize_cpu if cpu else quantize
        result = write(model, source, options, output=out)
        _write_reference(result.path, source, ref_images, seed)
    click.echo(result.summary())
    _echo_reference(result.path, source, ref_images)


# files written beside the output: the report, and the reference inputs/outputs (and their record) for `trtq verify`
OUTPUT_COMPANIONS = ("stem:.report.json", "stem:.report.md", "stem:.ref-inputs.json", "stem:.ref-outputs.json",
                     "stem:.ref.json")


def _write_reference(model: Path, source: str | None, ref_images: int, seed: int) -> None:
    """Reference inputs and outputs for `trtq verify` (trtq.reference), staged with the model: one image per
    feed for a dynamic-batch model (whatever the calibration batch)."""
    if ref_images and source is not None:
        from trtq.fileio import current
        from trtq.reference import write_reference

        write_reference(current(model), source, artifact=model, num_images=ref_images, seed=seed,
                        what=f"Q/DQ ONNX {model.name}")


def _echo_reference(model: Path, source: str | None, ref_images: int) -> None:
    """Say where the references are; without any (--ref-images 0, no --calib), remove an earlier run's once the
    new model has landed: they belong to another model (kept when they name these very bytes)."""
    from trtq.reference import reference_paths, remove_reference

    if ref_images and source is not None:
        name = reference_paths(model).outputs_path.name
        click.echo(f"reference {name}: check an engine (or a copy) of it with `trtq verify`")
        return
    removed = remove_reference(reference_paths(model), keep_for=model)
    if removed:
        click.echo(f"removed the earlier references {', '.join(p.name for p in removed)} (they belong to another model)")
