"""``trtq export``: Ultralytics YOLO ``.pt`` -> ONNX, offline, simplified with onnxslim.

Every task trtq decodes (detect, segment, pose, OBB) of every architecture (YOLOv8, YOLO11, YOLO26, ...);
classification models are refused. YOLO26's head exports as ultralytics' default one-to-many grid
(``[N, 4 + nc (+ extra), anchors]``, decoded with NMS) or, with ``end2end=True``, as its end-to-end
one-to-one head (``[N, 300, 6 (+ extra)]``, no NMS). The ONNX keeps ultralytics' metadata (names,
stride, imgsz, task, end2end, kpt_shape, ...) in ``metadata_props``, which every later stage reads.
ultralytics and torch are imported only here, on first use.
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
from trtq.tasks import TASKS

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
        with _quiet_ultralytics():
            yolo = YOLO(str(model))
    except FileNotFoundError:
        raise TrtqError(f"model not found: {model} (pass a path to a .pt file, or {_MODEL_NAME_HINT})") from None
    except Exception as exc:  # ultralytics raises many kinds for a bad or unreachable checkpoint
        msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise TrtqError(f"cannot load {model} with ultralytics: {msg.lstrip('❌⚠️ ')}") from None
    task = getattr(yolo, "task", "detect")
    if task not in TASKS:
        raise TrtqError(f"{model} is a {task} model; trtq handles detect, segment, pose and obb models")
    return yolo


def _has_end2end_head(yolo: object) -> bool:
    layers = getattr(getattr(yolo, "model", None), "model", None)
    try:
        head = layers[-1]  # type: ignore[index]
    except (TypeError, IndexError, KeyError):
        return False
    return getattr(head, "one2one_cv2", None) is not None


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


@contextlib.contextmanager
def _in_folder(path: str):  # noqa: ANN202
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def export_onnx(
    model: str | Path,
    *,
    imgsz: int | tuple[int, int] = 640,
    opset: int = 17,
    batch: int = 1,
    dynamic: bool = False,
    output: str | Path | None = None,
    simplify: bool = True,
    end2end: bool | None = None,
) -> Path:
    """Export ``model`` to ONNX and return its path (default: ``<model>.onnx`` next to the .pt).

    ``imgsz`` is one size or ``(height, width)``. ``dynamic`` makes batch (and ultralytics' H/W) dynamic;
    ``batch`` sets the static batch otherwise. ``end2end``: True exports YOLO26's end-to-end one-to-one
    head, False or None ultralytics' default one-to-many head (a model without an end-to-end head is
    refused with True). Opset 11 and 12 are accepted (a Q/DQ model is upgraded to 13 by `trtq quantize`).
    """
    if opset < 11:
        raise TrtqError(f"opset {opset} is too old; use --opset 11 or newer (17 recommended)")
    if batch < 1:
        raise TrtqError(f"batch must be at least 1, got {batch}")
    sizes = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz)
    if len(sizes) != 2 or any(int(v) < 32 for v in sizes):
        raise TrtqError(f"--imgsz must be one size or H W, each at least 32; got {' '.join(map(str, sizes))}")
    if opset < 13:
        logger.warning("opset %d: fine for calibration caches; `trtq quantize` upgrades it to 13 for Q/DQ", opset)
    yolo = _load_yolo(model)
    if end2end and not _has_end2end_head(yolo):
        raise TrtqError(f"{model} has no end-to-end (one-to-one) head; drop --end2end (YOLO26 models have one)")
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
            # a model built from a yaml has no weights file: ultralytics then writes into the working folder
            with _quiet_ultralytics(), _in_folder(tmp):
                produced = yolo.export(
                    format="onnx",
                    imgsz=list(sizes) if sizes[0] != sizes[1] else sizes[0],
                    opset=opset,
                    batch=batch,
                    dynamic=dynamic,
                    simplify=simplify,
                    device="cpu",
                    nms=False if end2end else None,  # nms=False selects the one-to-one head; no NMS is embedded
                    verbose=False,
                )
        except Exception as exc:
            msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise TrtqError(f"ultralytics export of {model} failed: {msg}") from None
        produced_path = Path(tmp) / str(produced)  # (an absolute path stays as it is)
        if not produced_path.is_file():
            raise TrtqError(f"ultralytics export of {model} produced no ONNX file")
        with atomic_path(out) as tmp_out:
            shutil.copyfile(produced_path, tmp_out)
    logger.debug("exported %s -> %s", model, out)
    return out
