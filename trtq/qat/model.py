"""The ultralytics model to fine-tune: loaded in float32 with BatchNorm folded, and saved back as a checkpoint.

BatchNorm is folded into the convolutions before fine-tuning, so the weights seen (and quantized per output
channel) during training are exactly the weights of the exported ONNX, and training cannot disturb BatchNorm
statistics.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtq.errors import TrtqError
from trtq.qat.numerics import require_torch

if TYPE_CHECKING:  # torch is an optional dependency (the export extra)
    from torch import nn


# The tasks and the top-level layers whose ONNX export the placement maps back to modules (YOLOv8).
QAT_TASKS = ("detect", "segment", "pose", "obb")
QAT_LAYERS = frozenset({"Conv", "C2f", "SPPF", "Concat", "Upsample", "Detect", "Segment", "Pose", "OBB"})
SUPPORTED = "qat fine-tunes YOLOv8 detect, segment, pose and OBB models"


def check_structure(yolo: Any, pt: Path) -> None:
    """Refuse, before any export or calibration, a model whose placement QAT cannot map."""
    task = getattr(yolo, "task", "detect")
    layers = getattr(getattr(yolo, "model", None), "model", None)
    names = {type(m).__name__ for m in layers} if layers is not None else set()
    foreign = sorted(names - QAT_LAYERS)
    if foreign:
        family = " (a YOLO11 / YOLO26 structure)" if {"C3k2", "C2PSA"} & set(foreign) else ""
        raise TrtqError(
            f"{pt} has {', '.join(foreign)} layers{family}; {SUPPORTED} (Conv, C2f, SPPF layers): "
            "use `trtq quantize` on its ONNX export"
        )
    if task not in QAT_TASKS:
        raise TrtqError(f"{pt} is a {task} model; {SUPPORTED}: use `trtq quantize` on its ONNX export")


def load_detection_model(pt: Path) -> tuple[Any, nn.Module]:
    """(the YOLO wrapper, its model in float32 with BatchNorm folded into the convs); refuses what QAT cannot map."""
    from trtq.export import _load_yolo

    yolo = _load_yolo(pt)
    model: Any = yolo.model
    if not isinstance(model, require_torch().nn.Module):
        raise TrtqError(f"{pt} holds no PyTorch model; qat needs an ultralytics .pt checkpoint")
    check_structure(yolo, pt)
    model = model.float().cpu()
    model.eval()
    with _quiet():
        model.fuse(verbose=False)
    for p in model.parameters():
        p.requires_grad_(True)
    return yolo, model


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    from trtq.export import _quiet_ultralytics

    with _quiet_ultralytics():
        yield


def save_checkpoint(model: nn.Module, path: Path, train_args: Mapping[str, Any] | None = None) -> Path:
    """A plain ultralytics checkpoint of ``model`` (float32, no optimizer) that ``YOLO(path)`` loads."""
    import copy

    torch = require_torch()
    plain = copy.deepcopy(model).float().cpu().eval()
    for p in plain.parameters():
        p.requires_grad_(False)
    torch.save({"model": plain, "train_args": dict(train_args or {}), "date": time.strftime("%Y-%m-%dT%H:%M:%S")}, str(path))
    return path
