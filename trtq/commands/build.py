from __future__ import annotations

from pathlib import Path

import click

from calibrators.ranges import ALGORITHMS, DEFAULT_ALGO, DEFAULT_PERCENTILE
from trtq.commands._options import output_option


@click.command(name="build")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--fp16", is_flag=True, help="Allow FP16 kernels.")
@click.option("--int8", is_flag=True, help="INT8 (implies FP16). A Q/DQ ONNX is always built as explicit INT8.")
@click.option("--calib", default=None, help="Calibration images: a folder, a glob, a .txt list or a data yaml.")
@click.option("--cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Calibration cache to reuse (refused when stale) or to create.")
@click.option("--force-cache", is_flag=True, help="Use --cache even if its record does not match this build.")
@click.option("--algo", type=click.Choice(ALGORITHMS), default=None,
              help=f"INT8 range algorithm [default: {DEFAULT_ALGO}, or the one a --cache was made with].")
@click.option("--percentile", type=float, default=DEFAULT_PERCENTILE, show_default=True, help="Percentile for --algo percentile.")
@click.option("--mode", type=click.Choice(["auto", "implicit", "explicit"]), default="auto", show_default=True,
              help="INT8 mode: implicit (calibrator, TensorRT 8.5-10.x, DLA), explicit (Q/DQ ONNX, TensorRT >= 10.1) "
                   "or auto (explicit where implicit INT8 is deprecated or removed).")
@click.option("--batch", type=int, default=None, help="Static batch size.")
@click.option("--min-batch", type=int, default=None, help="Dynamic batch: smallest batch of the profile.")
@click.option("--opt-batch", type=int, default=None, help="Dynamic batch: batch TensorRT tunes for (and calibrates with).")
@click.option("--max-batch", type=int, default=None, help="Dynamic batch: largest batch of the profile.")
@click.option("--imgsz", type=int, multiple=True, help="Image size for .pt export / dynamic H, W: --imgsz 640, or --imgsz H --imgsz W.")
@click.option("--workspace", type=float, default=None, help="Builder workspace limit in GiB.")
@click.option("--dla-core", type=int, default=None, help="Build for this DLA core (Jetson); needs a static batch.")
@click.option("--no-gpu-fallback", is_flag=True, help="With --dla-core: fail instead of running layers on the GPU.")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Load and save TensorRT's timing cache here (faster rebuilds).")
@click.option("--builder-opt-level", type=click.IntRange(0, 5), default=None, help="Builder optimization level 0-5.")
@click.option("--strongly-typed/--weakly-typed", default=None,
              help="Network typing (default: strongly typed on TensorRT 11, weakly typed with FP16 fallback before).")
@click.option("--version-compatible", is_flag=True,
              help="Engine that also runs on later TensorRT releases (8.6+; may be slower).")
@click.option("--hardware-compatible", is_flag=True,
              help="Engine that runs on any discrete Ampere or newer GPU (TensorRT 8.6+; built on such a GPU; not on Jetson, not DLA; may be slower).")
@click.option("--num-images", type=int, default=None, help="Calibrate on N images of the (shuffled) set.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Shuffle seed for the image order.")
@click.option("--ultralytics-header", is_flag=True,
              help='Also prefix the engine with the metadata header ultralytics.YOLO("X.engine") reads.')
@click.option("--no-verify", is_flag=True, help="Do not check the built engine against the reference outputs.")
@click.option("--ref-images", type=click.IntRange(min=0), default=8, show_default=True,
              help="Images in the reference inputs/outputs written for `trtq verify` (0: none).")
@output_option("Engine path, .engine (default engines/<model>.<precision>.engine; a folder: that name inside it).")
def command(
    model: Path,
    fp16: bool,
    int8: bool,
    calib: str | None,
    cache: Path | None,
    force_cache: bool,
    algo: str | None,
    percentile: float,
    mode: str,
    batch: int | None,
    min_batch: int | None,
    opt_batch: int | None,
    max_batch: int | None,
    imgsz: tuple[int, ...],
    workspace: float | None,
    dla_core: int | None,
    no_gpu_fallback: bool,
    timing_cache: Path | None,
    builder_opt_level: int | None,
    strongly_typed: bool | None,
    version_compatible: bool,
    hardware_compatible: bool,
    num_images: int | None,
    seed: int,
    ultralytics_header: bool,
    no_verify: bool,
    ref_images: int,
    output: str | None,
) -> None:
    """Build a TensorRT engine from MODEL (.pt, FP32 .onnx or Q/DQ .onnx).

    \b
    Examples:
      trtq build yolov8n.pt --int8 --calib ./images
      trtq build yolov8n.onnx --int8 --cache engines/yolov8n.percentile.cache
      trtq build yolov8n.int8.onnx                      # explicit INT8 from a Q/DQ ONNX
      trtq build yolov8n.onnx --fp16 --min-batch 1 --opt-batch 8 --max-batch 16

    Writes X.engine and X.engine.json (what the engine is and how it was made). With --calib, reference
    inputs/outputs (Polygraphy JSON) are written too, and the engine is checked against them (exit 1 and the
    Polygraphy debugging commands when it does not match; --no-verify skips the check). Without TensorRT the CPU
    steps (export, calibration cache, Q/DQ ONNX) still run, then it exits with code 3 and the command
    that finishes the build on the target.
    """
    from trtq.trt.builder import build
    from trtq.trt.options import BuildOptions

    out = _engine_output(output, inputs=(model, calib, cache, timing_cache))

    options = BuildOptions(
        fp16=fp16,
        int8=int8,
        calib=calib,
        cache=cache,
        force_cache=force_cache,
        algo=algo,
        percentile=percentile,
        mode=mode,
        batch=batch,
        min_batch=min_batch,
        opt_batch=opt_batch,
        max_batch=max_batch,
        imgsz=list(imgsz) if imgsz else None,
        workspace=workspace,
        dla_core=dla_core,
        gpu_fallback=not no_gpu_fallback,
        timing_cache=timing_cache,
        builder_opt_level=builder_opt_level,
        strongly_typed=strongly_typed,
        version_compatible=version_compatible,
        hardware_compatible=hardware_compatible,
        ultralytics_header=ultralytics_header,
        output=out,
        num_images=num_images,
        seed=seed,
        verify=not no_verify,
        reference_images=ref_images,
    )
    result = build(model, options)
    meta = result.metadata
    mode_txt = f" ({result.mode} INT8)" if result.mode else ""
    click.echo(f"engine: {result.engine_path} [{result.precision}{mode_txt}] in {result.seconds:.1f} s")
    if meta is not None:
        click.echo(f"  TensorRT {meta.tensorrt_version}, {meta.gpu_name or 'GPU ?'}; record {result.engine_path}.json")
    if result.float_layers:
        click.echo(f"  {len(result.float_layers)} head layers kept in float (see the .json record)")
    if result.calibration_batches:
        click.echo(f"  calibrated on {result.calibration_batches} batches; cache {result.cache_path}")
    if result.verification is not None:  # trtq.verify (a failing engine raised VerificationFailed)
        v = result.verification
        click.echo(f"  verification: {v.get('status')}" + (f" ({v['reason']})" if v.get("reason") else ""))


def _engine_output(output: str | None, *, inputs: tuple[str | Path | None, ...]) -> Path | None:
    """``-o`` checked before any work: an .engine file (not an input, nor its record), or a folder for the
    default name (made here; the builder names the engine inside it once the precision is known)."""
    from trtq.fileio import check_writable, names_folder, output_path

    if output is None:
        return None
    if names_folder(output):
        check_writable(output)
        folder = Path(output)
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return output_path(output, "model.engine", suffixes=(".engine",), inputs=inputs,
                       companions=(".json", "stem:.ref-inputs.json", "stem:.ref-outputs.json"))
