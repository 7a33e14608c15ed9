from __future__ import annotations

from pathlib import Path

import click

from calibrators.ranges import ALGORITHMS


def _precision(int8: bool, fp16: bool) -> str:
    from trtq.errors import TrtqError

    if int8 and fp16:
        raise TrtqError("pass one of --int8 and --fp16")
    return "fp16" if fp16 else "int8"


@click.group(name="deploy")
def command() -> None:
    """Write a folder DeepStream or Triton Inference Server runs as it is (works without TensorRT)."""


@command.command(name="deepstream")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--calib", "source", default=None, help="Calibration images (INT8): a folder, glob, .txt list or data yaml.")
@click.option("--int8", is_flag=True, help="INT8 (the default).")
@click.option("--fp16", is_flag=True, help="FP16 (no calibration).")
@click.option("--mode", type=click.Choice(("implicit", "explicit")), default="implicit", show_default=True,
              help="INT8 via calib.table (TensorRT 8.5-10.x) or a Q/DQ ONNX (TensorRT >= 10.1; built beforehand).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Static batch size.")
@click.option("--dynamic", is_flag=True, help="Dynamic batch axis (up to --batch in nvinfer's profile).")
@click.option("--imgsz", type=click.IntRange(min=32), default=640, show_default=True, help="Export size for a .pt.")
@click.option("--algo", type=click.Choice(ALGORITHMS), default=None, help="Range algorithm (default: trtq's).")
@click.option("--num-images", type=int, default=None, help="Use N calibration images.")
@click.option("--trt-version", default="10.3.0", show_default=True, help="TensorRT version the calib.table header names.")
@click.option("--uri", default=None, help="Video for deepstream_app_config.txt (default: DeepStream's sample stream).")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True, help="Bundle folder.")
def deepstream(model: Path, source: str | None, int8: bool, fp16: bool, mode: str, batch: int, dynamic: bool,
               imgsz: int, algo: str | None, num_images: int | None, trt_version: str, uri: str | None,
               output: Path) -> None:
    """A DeepStream bundle for MODEL (.pt or trtq's .onnx; YOLOv8/11/26 detect): DeepStream-Yolo-layout ONNX,
    calib.table (implicit INT8) or Q/DQ ONNX (explicit), config_infer_primary.txt, labels.txt,
    deepstream_app_config.txt and README.md."""
    from trtq.deploy.deepstream import DEFAULT_SOURCE, write_deepstream

    result = write_deepstream(model, output, calib=source, precision=_precision(int8, fp16), mode=mode, batch=batch,
                              dynamic=dynamic, imgsz=imgsz, num_images=num_images, algo=algo,
                              trt_version=trt_version, uri=uri or DEFAULT_SOURCE)
    click.echo(result.summary())


@command.command(name="triton")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--calib", "source", default=None, help="Calibration images (INT8): a folder, glob, .txt list or data yaml.")
@click.option("--int8", is_flag=True, help="INT8 (the default).")
@click.option("--fp16", is_flag=True, help="FP16 (no calibration).")
@click.option("--mode", type=click.Choice(("implicit", "explicit")), default="explicit", show_default=True,
              help="INT8 engine from a Q/DQ ONNX (explicit) or from the FP32 ONNX + calibration cache (implicit).")
@click.option("--target", type=click.Choice(("tensorrt", "cpu")), default="tensorrt", show_default=True,
              help="tensorrt: a TensorRT plan (platform tensorrt_plan); cpu: trtq's CPU INT8 ONNX (onnxruntime_onnx).")
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True, help="max_batch_size (dynamic batch 1..N).")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True, help="Instances per GPU (or CPU).")
@click.option("--cc", "cc_plans", multiple=True, metavar="CC=FILE",
              help="A plan per compute capability (cc_model_filenames), e.g. --cc 8.7=orin.plan; repeatable.")
@click.option("--name", default=None, help="Model name in the repository (default: the model's stem).")
@click.option("--imgsz", type=click.IntRange(min=32), default=640, show_default=True, help="Export size for a .pt.")
@click.option("--num-images", type=int, default=None, help="Use N calibration images.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True, help="Model repository folder.")
def triton(model: Path, source: str | None, int8: bool, fp16: bool, mode: str, target: str, batch: int, instances: int,
           cc_plans: tuple[str, ...], name: str | None, imgsz: int, num_images: int | None, output: Path) -> None:
    """A Triton model repository for MODEL: REPO/<name>/config.pbtxt and REPO/<name>/1/ (the plan is built on the
    target with the printed command; --target cpu writes the ONNX Runtime INT8 model, ready to serve)."""
    from trtq.deploy.triton import write_triton

    result = write_triton(model, output, calib=source, precision=_precision(int8, fp16), mode=mode, target=target,
                          batch=batch, instances=instances, cc_plans=cc_plans, name=name, imgsz=imgsz,
                          num_images=num_images)
    click.echo(result.summary())
