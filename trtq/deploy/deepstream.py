"""``trtq deploy deepstream``: a folder that DeepStream runs with ``deepstream-app -c``.

Config keys follow DeepStream-Yolo's ``config_infer_primary_yoloV8.txt`` and ``deepstream_app_config.txt``
(github.com/marcoslucianops/DeepStream-Yolo @2ccf52987ce1a18fc18ca5b3ba559a599259ade2) and the Gst-nvinfer key
names of ``gstnvinfer_property_parser.h`` (DeepStream 6.2 sources, see :mod:`trtq.deploy.nvinfer`). Two
deliberate differences from DeepStream-Yolo's file:

- ``engine-create-func-name`` is not set. With it, DeepStream-Yolo's own builder (``yolo.cpp`` lines 158-188)
  runs INT8 only through its OpenCV calibrator and ``assert``s without ``INT8_CALIB_IMG_PATH`` /
  ``INT8_CALIB_BATCH_SIZE``. Without it nvinfer parses ``onnx-file`` itself and serves ``int8-calib-file`` with
  its own ``NvDsInferInt8Calibrator`` (an ``IInt8EntropyCalibrator2`` that only reads the table:
  ``sources/libs/nvdsinfer/nvdsinfer_context_impl.cpp`` lines 52-88 and 1709-1713). The custom library is still
  needed, for ``parse-bbox-func-name=NvDsInferParseYolo``.
- ``scaling-filter=1`` (bilinear) instead of nvinfer's nearest-neighbour default, to match ultralytics' resize.

Explicit INT8 (a Q/DQ ONNX): with ``network-mode=1``, no calibration file and no engine-create function,
nvinfer warns "INT8 calibration file not specified. Trying FP16 mode." and builds without TensorRT's INT8 flag
(``sources/libs/nvdsinfer/nvdsinfer_model_builder.cpp`` lines 565-580). So the engine is built beforehand (trtexec
or ``trtq build``) under DeepStream's own engine name and ``model-engine-file`` points at it; nvinfer
deserializes an existing ``model-engine-file`` instead of building.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import onnx

from trtq.deploy import layout as ds_layout
from trtq.deploy.bundle import (
    DeployResult,
    bundle_table,
    calibrate_nvinfer,
    prepare_onnx,
    quantize_explicit,
    save_onnx,
    staged_folder,
)
from trtq.deploy.nvinfer import SCALING_FILTER_BILINEAR
from trtq.errors import TrtqError

logger = logging.getLogger(__name__)

CONF = 0.25  # trtq predict / ultralytics predict defaults
IOU = 0.7
MAX_DET = 300
CUSTOM_LIB = "nvdsinfer_custom_impl_Yolo/libnvdsinfer_custom_impl_Yolo.so"
NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}
DEFAULT_SOURCE = "file:///opt/nvidia/deepstream/deepstream/samples/streams/sample_1080p_h264.mp4"


def engine_name(batch: int, precision: str) -> str:
    """DeepStream's default engine file name, ``model_b{batch}_gpu{id}_{precision}.engine``."""
    return f"model_b{batch}_gpu0_{precision}.engine"


def infer_config(*, onnx_file: str, engine: str, calib: str | None, batch: int, precision: str, nc: int,
                 cluster_mode: int, imgsz: tuple[int, int]) -> str:
    """``config_infer_primary.txt`` (a GLib key file)."""
    lines = [
        "# Gst-nvinfer config written by trtq deploy deepstream (keys: DeepStream-Yolo config_infer_primary_yoloV8.txt)",
        "[property]",
        "gpu-id=0",
        "net-scale-factor=0.0039215697906911373",  # DeepStream-Yolo's literal: float32(1/255)
        "model-color-format=0",
        f"onnx-file={onnx_file}",
        f"model-engine-file={engine}",
    ]
    lines.append(f"int8-calib-file={calib}" if calib else "#int8-calib-file=")
    lines += [
        "labelfile-path=labels.txt",
        f"batch-size={batch}",
        f"network-mode={NETWORK_MODE[precision]}",
        f"num-detected-classes={nc}",
        "interval=0",
        "gie-unique-id=1",
        "process-mode=1",
        "network-type=0",
        f"cluster-mode={cluster_mode}",
        "maintain-aspect-ratio=1",
        "symmetric-padding=1",
        f"scaling-filter={SCALING_FILTER_BILINEAR}",
        "scaling-compute-hw=0",
        "parse-bbox-func-name=NvDsInferParseYolo",
        f"custom-lib-path={CUSTOM_LIB}",
        "# engine-create-func-name=NvDsInferYoloCudaEngineGet is left out on purpose: nvinfer then builds from",
        "# onnx-file itself and reads int8-calib-file (DeepStream-Yolo's builder would need its OpenCV calibrator).",
        "",
        "[class-attrs-all]",
        f"nms-iou-threshold={IOU}",
        f"pre-cluster-threshold={CONF}",
        f"topk={MAX_DET}",
        "",
    ]
    return "\n".join(lines)


def app_config(*, uri: str, batch: int, width: int = 1920, height: int = 1080) -> str:
    """``deepstream_app_config.txt`` for one file source (DeepStream-Yolo's file, source made explicit)."""
    return f"""# deepstream-app config written by trtq deploy deepstream (after DeepStream-Yolo deepstream_app_config.txt)
[application]
enable-perf-measurement=1
perf-measurement-interval-sec=5

[tiled-display]
enable=1
rows=1
columns=1
width=1280
height=720
gpu-id=0
nvbuf-memory-type=0

[source0]
enable=1
type=3
uri={uri}
num-sources=1
gpu-id=0
cudadec-memtype=0

[sink0]
enable=1
type=2
sync=0
gpu-id=0
nvbuf-memory-type=0

[osd]
enable=1
gpu-id=0
border-width=5
text-size=15
text-color=1;1;1;1;
text-bg-color=0.3;0.3;0.3;1
font=Serif
show-clock=0
nvbuf-memory-type=0

[streammux]
gpu-id=0
live-source=0
batch-size={batch}
batched-push-timeout=40000
width={width}
height={height}
enable-padding=0
nvbuf-memory-type=0

[primary-gie]
enable=1
gpu-id=0
gie-unique-id=1
nvbuf-memory-type=0
config-file=config_infer_primary.txt

[tests]
file-loop=0
"""


def build_commands(onnx_file: str, engine: str, batch: int, dynamic: bool, imgsz: tuple[int, int]) -> list[str]:
    """Commands that build the explicit INT8 engine nvinfer loads (run in the bundle folder, on the target)."""
    shape = f"3x{imgsz[0]}x{imgsz[1]}"
    shapes = (f" --minShapes=input:1x{shape} --optShapes=input:{batch}x{shape} --maxShapes=input:{batch}x{shape}"
              if dynamic else "")
    return [
        f"/usr/src/tensorrt/bin/trtexec --onnx={onnx_file} --int8 --fp16{shapes} --saveEngine={engine}",
    ]


def _readme(*, name: str, precision: str, mode: str, onnx_file: str, engine: str, calib: str | None,
            cluster_mode: int, batch: int, dynamic: bool, imgsz: tuple[int, int], nc: int) -> str:
    build = build_commands(onnx_file, engine, batch, dynamic, imgsz)
    lines = [
        f"# {name}: DeepStream bundle ({precision.upper()}{', ' + mode if precision == 'int8' else ''})",
        "",
        "Written by `trtq deploy deepstream`. Files:",
        "",
        f"- `{onnx_file}`: the model in DeepStream-Yolo's layout (input `input` {'[batch' if dynamic else f'[{batch}'},"
        f" 3, {imgsz[0]}, {imgsz[1]}], output `output` [batch, N, 6] = x1, y1, x2, y2, score, class id).",
    ]
    if calib:
        lines.append(f"- `{calib}`: TensorRT's calibration cache for that ONNX (implicit INT8, TensorRT 8.5-10.x), "
                     "computed on images preprocessed as nvinfer preprocesses frames with this config.")
    lines += [
        f"- `config_infer_primary.txt`: Gst-nvinfer config ({nc} classes, cluster-mode={cluster_mode}).",
        "- `labels.txt`, `deepstream_app_config.txt` (one file source).",
        "",
        "## On the Jetson (or a dGPU machine with DeepStream)",
        "",
        "1. Build DeepStream-Yolo's parser library (CUDA_VER per its docs/YOLOv8.md, e.g. 12.6 for DeepStream 7.1):",
        "",
        "   ```bash",
        "   git clone https://github.com/marcoslucianops/DeepStream-Yolo",
        "   export CUDA_VER=12.6",
        "   make -C DeepStream-Yolo/nvdsinfer_custom_impl_Yolo clean && make -C DeepStream-Yolo/nvdsinfer_custom_impl_Yolo",
        "   cp -r DeepStream-Yolo/nvdsinfer_custom_impl_Yolo .   # custom-lib-path is relative to this folder",
        "   ```",
        "",
        "   No `OPENCV=1` and no `INT8_CALIB_IMG_PATH`: calibration is already done.",
    ]
    if precision == "int8" and mode == "explicit":
        lines += [
            "",
            "2. Build the engine once (nvinfer would fall back to FP16 for a Q/DQ ONNX without a calibration file):",
            "",
            "   ```bash",
            *[f"   {c}" for c in build],
            "   ```",
        ]
    else:
        lines += ["", f"2. Nothing to build by hand: nvinfer builds `{engine}` on the first run (minutes)."]
    lines += [
        "",
        "3. Run it: edit `uri=` in `deepstream_app_config.txt` (and `[streammux]` width/height to the video's), then",
        "",
        "   ```bash",
        "   deepstream-app -c deepstream_app_config.txt",
        "   ```",
        "",
        "## Notes",
        "",
        "- Preprocessing: `maintain-aspect-ratio=1`, `symmetric-padding=1`, `scaling-filter=1` (bilinear). nvinfer pads",
        "  with 0 (black), ultralytics with 114: the INT8 ranges were computed with nvinfer's padding.",
        "- `nvstreammux` scales every source to its `width`/`height` first: keep them at the video's resolution",
        "  (or set `enable-padding=1`) so the aspect ratio reaches nvinfer unchanged.",
        f"- Thresholds are trtq's (and ultralytics') predict defaults: score {CONF}, NMS IoU {IOU}, {MAX_DET} per class.",
        "- Not verified here (no DeepStream, TensorRT or GPU where this was written): the engine build, nvinfer's",
        "  GPU bilinear kernel (modelled by OpenCV INTER_LINEAR), and the frame colour conversion from NV12.",
    ]
    return "\n".join(lines) + "\n"


def write_deepstream(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    calib: str | None,
    precision: str = "int8",
    mode: str = "implicit",
    batch: int = 1,
    dynamic: bool = False,
    imgsz: int = 640,
    num_images: int | None = None,
    seed: int = 0,
    algo: str | None = None,
    trt_version: str = "10.3.0",
    uri: str = DEFAULT_SOURCE,
) -> DeployResult:
    """Write the DeepStream bundle folder ``output`` (atomically: all or nothing)."""
    from calibrators.ranges import DEFAULT_ALGO, DEFAULT_PERCENTILE
    from calibrators.table import trt_version_code

    if precision not in ("int8", "fp16"):
        raise TrtqError(f"precision must be int8 or fp16, got {precision}")
    if mode not in ("implicit", "explicit"):
        raise TrtqError(f"--mode must be implicit or explicit, got {mode}")
    if batch < 1:
        raise TrtqError(f"--batch must be at least 1, got {batch}")
    if precision == "int8" and not calib:
        raise TrtqError("INT8 needs calibration images: pass --calib DIR (or --fp16)")
    if precision == "int8" and mode == "implicit" and not 8500 <= trt_version_code(trt_version) < 110000:
        raise TrtqError(f"TensorRT {trt_version} has no implicit INT8; use --mode explicit (Q/DQ ONNX)")
    algo = algo or DEFAULT_ALGO
    with tempfile.TemporaryDirectory(prefix="trtq-deploy-") as tmp:
        work = Path(tmp)
        src, info, task_layout = prepare_onnx(model, work, batch=batch, dynamic=dynamic, imgsz=imgsz,
                                                  end2end=True)
        name = Path(model).stem
        cluster_mode = 4 if task_layout.end2end else 2
        with staged_folder(output) as stage:
            result = DeployResult(Path(output))
            source_model = onnx.load(str(src))
            onnx_file, calib_file, table = f"{name}.onnx", None, None
            if precision == "int8":
                table, _ = calibrate_nvinfer(src, str(calib), info, num_images=num_images, seed=seed, algo=algo,
                                             percentile=DEFAULT_PERCENTILE, trt_version=trt_version)
                if mode == "explicit":
                    onnx_file = f"{name}.int8.onnx"
                    graph = quantize_explicit(src, table, work)
                else:
                    graph = source_model
            else:
                graph = source_model
            bundle = ds_layout.to_deepstream_layout(graph, task_layout)
            ds_layout.static_batch_input(bundle, None if dynamic else batch)
            save_onnx(bundle, stage / onnx_file)
            if table is not None and mode == "implicit":
                calib_file = "calib.table"
                renames = {info.input.name: ds_layout.INPUT_NAME}
                bundle_table(table, source_model, stage / onnx_file, renames).save(stage / calib_file)
            engine = engine_name(batch, precision)
            (stage / "config_infer_primary.txt").write_text(infer_config(
                onnx_file=onnx_file, engine=engine, calib=calib_file, batch=batch, precision=precision,
                nc=task_layout.nc, cluster_mode=cluster_mode, imgsz=info.imgsz))
            names = info.names or {i: str(i) for i in range(task_layout.nc)}
            (stage / "labels.txt").write_text("".join(f"{names[i]}\n" for i in sorted(names)))
            (stage / "deepstream_app_config.txt").write_text(app_config(uri=uri, batch=batch))
            (stage / "README.md").write_text(_readme(
                name=name, precision=precision, mode=mode, onnx_file=onnx_file, engine=engine, calib=calib_file,
                cluster_mode=cluster_mode, batch=batch, dynamic=dynamic, imgsz=info.imgsz, nc=task_layout.nc))
            result.files = sorted(p.name for p in stage.iterdir())
            if precision == "int8" and mode == "explicit":
                result.notes.append("on the target, build the engine first: "
                                    + build_commands(onnx_file, engine, batch, dynamic, info.imgsz)[0])
            result.notes.append(f"on the target: deepstream-app -c {Path(output) / 'deepstream_app_config.txt'}")
    return result
