"""Steps shared by the DeepStream and Triton writers: model intake, calibration with nvinfer's preprocessing,
and the staged (atomic) folder write."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from trtq.errors import TrtqError
from trtq.modelinfo import ModelInfo, check_model, read_model_info
from trtq.tasks import TaskLayout

logger = logging.getLogger(__name__)

SUPPORTED = "YOLOv8 / YOLO11 / YOLO26 detect models"


@dataclass
class DeployResult:
    path: Path
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"wrote {self.path}/ ({', '.join(self.files)})"]
        lines += [f"  {n}" for n in self.notes]
        return "\n".join(lines)


@contextlib.contextmanager
def staged_folder(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty private folder beside ``dest``; on success it replaces ``dest`` in one rename.

    An existing ``dest`` is moved aside first and removed after the rename. On an error or interrupt (Ctrl-C,
    SIGTERM raised as an exception) the staged folder is removed and ``dest`` is left as it was.
    """
    final = Path(dest).absolute()
    if final.exists() and not final.is_dir():
        raise TrtqError(f"{dest} exists and is not a folder")
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".trtq-tmp", dir=final.parent))
    try:
        yield stage
        os.chmod(stage, 0o755)
        old: Path | None = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".trtq-old", dir=final.parent))
            os.replace(final, old / final.name)
        os.replace(stage, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _set_static_hw(path: Path, imgsz: tuple[int, int]) -> None:
    """Fix the input's height and width (ultralytics' dynamic export makes them dynamic too)."""
    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(dims[2:], imgsz, strict=False):
        d.Clear()
        d.dim_value = int(v)
    onnx.save(model, str(path))


def prepare_onnx(model: str | os.PathLike[str], workdir: Path, *, batch: int, dynamic: bool,
                 imgsz: int | tuple[int, int] = 640, end2end: bool = False) -> tuple[Path, ModelInfo, TaskLayout]:
    """The FP32 ONNX to deploy (trtq's export of a ``.pt``, or a given trtq/ultralytics ONNX) and its layout.

    ``end2end``: export a model that has an end-to-end head (YOLO26) with that head.

    Only detect models are deployed; the refusal names what is supported.
    """
    src = Path(model)
    if src.suffix.lower() == ".onnx":
        if not src.is_file():
            raise TrtqError(f"model not found: {model}")
        path = workdir / src.name
        shutil.copyfile(src, path)
    elif src.suffix.lower() in (".pt", ".yaml", ".yml") or not src.suffix:
        from trtq.export import export_onnx

        kwargs: dict[str, Any] = {"imgsz": imgsz, "batch": 1 if dynamic else batch, "dynamic": dynamic,
                                  "output": workdir / f"{src.stem}.onnx"}
        path = None
        if end2end:  # YOLO26: its end-to-end head gives [B, 300, 6] in DeepStream-Yolo's columns, no NMS
            try:
                path = export_onnx(src, end2end=True, **kwargs)
            except TrtqError as exc:
                if "no end-to-end" not in str(exc):
                    raise
        if path is None:
            path = export_onnx(src, **kwargs)
    else:
        raise TrtqError(f"{model}: deploy takes an ultralytics .pt or trtq's exported .onnx")
    info = read_model_info(path)
    layout = _deployable(info)
    static = info.static_batch
    if src.suffix.lower() == ".onnx" and static is not None and (dynamic or batch != static):
        want = "a dynamic batch" if dynamic else f"batch {batch}"
        raise TrtqError(f"{src.name} has a static batch of {static}; for {want} pass the .pt or re-export it "
                        f"(trtq export --{'dynamic' if dynamic else f'batch {batch}'})")
    if dynamic:
        _set_static_hw(path, info.imgsz)
        info = read_model_info(path)
    return path, info, layout


def _deployable(info: ModelInfo) -> TaskLayout:
    task = info.metadata.get("task")
    if task in ("classify", "obb"):
        raise TrtqError(f"{info.path.name} is a {task} model; deploy supports {SUPPORTED} only")
    layout = check_model(info)
    if layout is None or layout.task != "detect":
        what = layout.task if layout is not None else "non-YOLO"
        raise TrtqError(
            f"{info.path.name} is a {what} model; deploy supports {SUPPORTED} only (DeepStream-Yolo's "
            "pose / segment layouts need their own parsers and are not written)"
        )
    return layout


def calibrate_nvinfer(model: Path, source: str, info: ModelInfo, *, num_images: int | None, seed: int,
                      algo: str, percentile: float, trt_version: str) -> tuple[Any, dict[str, Any]]:
    """Calibrate ``model`` on ``source`` preprocessed as nvinfer does (:class:`NvinferBatcher`).

    Returns the :class:`calibrators.table.CalibrationTable` (for ``model``'s tensor names) and the histograms.
    """
    from calibrators.calibrate import table_from_histograms
    from calibrators.collect import DEFAULT_MAX_POSITIONS, calibration_tensors, collect_histograms
    from trtq.deploy.nvinfer import NvinferBatcher

    graph = onnx.load(str(model), load_external_data=False)
    names = calibration_tensors(graph)
    del graph
    batcher = NvinferBatcher(source, input_name=info.input.name, imgsz=info.imgsz, stride=info.stride,
                             batch=1, num_images=num_images, seed=seed)
    histograms = collect_histograms(model, batcher, names, max_positions=DEFAULT_MAX_POSITIONS, progress=False,
                                    total=len(batcher.selected))
    table = table_from_histograms(histograms, batcher, info, source=source, algo=algo, percentile=percentile,
                                  trt_version=trt_version, max_positions=DEFAULT_MAX_POSITIONS)
    return table, histograms


def bundle_table(table: Any, source_model: onnx.ModelProto, bundle_path: Path, renames: dict[str, str]) -> Any:
    """``table`` restricted to what TensorRT may run in INT8 in the bundle, under the bundle's tensor names.

    nvinfer builds the engine itself and cannot pin layers to float, so the head policy is carried by the cache:
    tensors produced by nodes the head policy keeps in float (final head convs, DFL, decode, Sigmoid, output
    Concat) get no range, and TensorRT cannot run a layer in INT8 without the ranges of its tensors. The
    layout nodes appended for DeepStream-Yolo get none either.
    """
    from calibrators.table import CalibrationTable
    from trtq.headpolicy import float_nodes
    from trtq.modelinfo import model_sha256

    floats = set(float_nodes(source_model))
    float_outputs = {o for n in source_model.graph.node if n.name in floats for o in n.output}
    outputs = {o.name for o in source_model.graph.output}
    amax: dict[str, float] = {str(renames.get(k, k)): float(v) for k, v in table.amax.items() if k not in float_outputs and k not in outputs}
    return CalibrationTable(
        amax=amax,
        algorithm=table.algorithm,
        percentile=table.percentile,
        model_sha256=model_sha256(bundle_path),
        num_images=table.num_images,
        images_sha256=table.images_sha256,
        preprocessing=table.preprocessing,
        tensorrt_version=table.tensorrt_version,
    )


def quantize_explicit(model: Path, table: Any, workdir: Path) -> onnx.ModelProto:
    """trtq's default Q/DQ ONNX of ``model`` with the ranges of ``table`` (nvinfer-preprocessed statistics)."""
    from trtq.quantize import quantize
    from trtq.quantize_options import QuantizeOptions

    out = workdir / f"{model.stem}.int8.qdq.onnx"
    quantize(model, None, QuantizeOptions(algo=table.algorithm, cache=table, progress=False), output=out)
    return onnx.load(str(out))


def save_onnx(model: onnx.ModelProto, path: Path) -> None:
    onnx.save(model, str(path))
