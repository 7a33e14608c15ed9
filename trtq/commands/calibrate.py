from __future__ import annotations

from pathlib import Path

import click

from calibrators.collect import DEFAULT_MAX_POSITIONS
from calibrators.ranges import ALGORITHMS, DEFAULT_ALGO, DEFAULT_PERCENTILE
from trtq.commands._options import output_option


@click.command(name="calibrate")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--calib", "source", required=True, help="Images: a folder (recursive), a glob, a .txt list or a data yaml.")
@click.option("--algo", type=click.Choice(ALGORITHMS), default=DEFAULT_ALGO, show_default=True, help="Range algorithm.")
@click.option("--percentile", type=float, default=DEFAULT_PERCENTILE, show_default=True, help="Percentile for --algo percentile.")
@click.option("--num-images", type=int, default=None, help="Use N images of the (shuffled) set.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Images per inference batch.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Shuffle seed for the image order.")
@click.option("--trt-version", default="10.3.0", show_default=True, help="TensorRT version the cache header targets.")
@click.option("--exact", is_flag=True,
              help=f"Histogram every activation value instead of at most {DEFAULT_MAX_POSITIONS} sampled spatial "
                   "positions per tensor and image (slower; min and max are exact either way).")
@output_option("Cache path, .cache (default <model>.<algo>.cache; a folder: that name inside it).")
def command(
    model: Path,
    source: str,
    algo: str,
    percentile: float,
    num_images: int | None,
    batch: int,
    seed: int,
    trt_version: str,
    exact: bool,
    output: str | None,
) -> None:
    """Calibrate an ONNX MODEL (FP32 or FP16, opset 11+) on the CPU and write a TensorRT calibration cache +
    JSON sidecar.

    The sidecar records the model hash, images, preprocessing and algorithm, so `trtq build --cache`
    can refuse a stale cache. Statistics stream: memory does not grow with the number of images.
    """
    from calibrators.calibrate import calibrate
    from calibrators.table import trt_version_code
    from trtq.errors import TrtqError
    from trtq.fileio import default_output, output_path, output_set

    if not 8500 <= trt_version_code(trt_version) < 110000:
        raise TrtqError(
            f"TensorRT {trt_version} has no implicit INT8 calibration (a cache serves TensorRT 8.5 to 10.x); "
            "for TensorRT 11 build the explicit Q/DQ model of `trtq quantize` instead"
        )
    out = output_path(output, default_output(model, f".{algo}.cache"), suffixes=(".cache",),
                      inputs=(model, source), companions=(".json",))
    with output_set():  # the cache and its sidecar land together
        result = calibrate(
            model,
            source,
            algo=algo,
            percentile=percentile,
            num_images=num_images,
            batch=batch,
            seed=seed,
            trt_version=trt_version,
            output=out,
            max_positions=None if exact else DEFAULT_MAX_POSITIONS,
            progress=True,
        )
    click.echo(result.summary())
