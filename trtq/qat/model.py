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


def load_detection_model(pt: Path) -> tuple[Any, nn.Module]:
    """(the YOLO wrapper, its DetectionModel in float32 with BatchNorm folded into the convs)."""
    from trtq.export import _load_yolo

    yolo = _load_yolo(pt)
    model: Any = yolo.model
    if not isinstance(model, require_torch().nn.Module):
        raise TrtqError(f"{pt} holds no PyTorch model; qat needs an ultralytics .pt checkpoint")
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
