"""``trtq export``: Ultralytics YOLOv8 ``.pt`` -> ONNX, offline, simplified with onnxslim.

The ONNX keeps ultralytics' metadata (names, stride, imgsz, task, ...) in ``metadata_props``, which
every later stage reads. ultralytics and torch are imported only here, on first use.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from trtq.errors import MissingDependencyError, TrtqError
from trtq.fileio import atomic_path, default_output

logger = logging.getLogger(__name__)

_MODEL_NAME_HINT = "an ultralytics model name such as yolov8n.pt (downloaded by ultralytics where the network allows)"


def _load_yolo(model: str | Path):  # noqa: ANN202 - ultralytics type
    try:
        from ultralytics import YOLO
    except ImportError:
        raise MissingDependencyError(
            "exporting a .pt model needs ultralytics and torch: pip install 'trtq[export]'", exit_code=2
        ) from None
    src = Path(str(model))
    if src.suffix.lower() not in (".pt", ".yaml", ".yml"):
        raise TrtqError(f"{model}: export takes an ultralytics .pt checkpoint (or a model name like yolov8n.pt)")
    if not src.exists() and src.parent != Path("."):
        raise TrtqError(f"model not found: {model}")
    try:
        yolo = YOLO(str(model), task="detect")
    except FileNotFoundError:
        raise TrtqError(f"model not found: {model} (pass a path to a .pt file, or {_MODEL_NAME_HINT})") from None
    except Exception as exc:  # ultralytics raises many kinds for a bad or unreachable checkpoint
        msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise TrtqError(f"cannot load {model} with ultralytics: {msg.lstrip('❌⚠️ ')}") from None
    if getattr(yolo, "task", "detect") != "detect":
        raise TrtqError(f"{model} is a {yolo.task} model; trtq handles YOLOv8 detection models")
    return yolo


@contextlib.contextmanager
def _quiet_ultralytics():  # noqa: ANN202
    """Keep ultralytics' banner and progress lines out of trtq's output unless -v was given."""
    from ultralytics.utils import LOGGER

    old = LOGGER.level
    if not logger.isEnabledFor(logging.DEBUG):
        LOGGER.setLevel(logging.WARNING)
    try:
        with contextlib.ExitStack() as stack:
            if not logger.isEnabledFor(logging.DEBUG):
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
            yield
    finally:
        LOGGER.setLevel(old)


def export_onnx(
    model: str | Path,
    *,
    imgsz: int | tuple[int, int] = 640,
    opset: int = 17,
    batch: int = 1,
    dynamic: bool = False,
    output: str | Path | None = None,
    simplify: bool = True,
) -> Path:
    """Export ``model`` to ONNX and return its path (default: ``<model>.onnx`` next to the .pt).

    ``dynamic`` makes batch (and ultralytics' H/W) dynamic; ``batch`` sets the static batch otherwise.
    """
    if opset < 13:
        raise TrtqError(f"opset {opset} is too old for INT8 Q/DQ (per-channel needs 13); use --opset 13 or newer")
    if batch < 1:
        raise TrtqError(f"batch must be at least 1, got {batch}")
    yolo = _load_yolo(model)
    out = Path(output) if output is not None else default_output(model, ".onnx")
    if out.suffix.lower() != ".onnx":
        raise TrtqError(f"output {out} must end in .onnx")
    with tempfile.TemporaryDirectory(prefix="trtq-export-") as tmp:
        # ultralytics writes next to the weights it loaded: export from a private copy.
        ckpt = getattr(yolo, "ckpt_path", None)
        work_pt = Path(tmp) / (Path(str(ckpt)).name if ckpt else "model.pt")
        if ckpt and Path(ckpt).is_file():
            shutil.copy2(ckpt, work_pt)
            yolo = _load_yolo(work_pt)
        try:
            with _quiet_ultralytics():
                produced = yolo.export(
                    format="onnx",
                    imgsz=imgsz,
                    opset=opset,
                    batch=batch,
                    dynamic=dynamic,
                    simplify=simplify,
                    device="cpu",
                    nms=False,
                    verbose=False,
                )
        except Exception as exc:
            msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise TrtqError(f"ultralytics export of {model} failed: {msg}") from None
        produced_path = Path(str(produced))
        if not produced_path.is_file():
            raise TrtqError(f"ultralytics export of {model} produced no ONNX file")
        with atomic_path(out) as tmp_out:
            shutil.copyfile(produced_path, tmp_out)
    logger.debug("exported %s -> %s", model, out)
    return out
