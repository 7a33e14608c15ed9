"""Ultralytics model structures built offline from ultralytics' own yaml files, exported to ONNX.

Used by the tests and ``make bench-models`` to cover every architecture and task (YOLOv8, YOLO11, YOLO26
x detect, segment, pose, OBB) without downloading anything. Weights of a COCO-trained YOLOv8 checkpoint
can be transplanted into any structure that shares its layers (``YOLO(cfg).load(pt)``), so that the
boxes are real; the other layers keep their random initialisation.

ultralytics and torch are imported on first use. Nothing is ever written beside the ``weights`` file:
the export runs in a private temporary folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtq.errors import MissingDependencyError, TrtqError
from trtq.fileio import atomic_path

logger = logging.getLogger(__name__)

ARCHITECTURES = ("yolov8n", "yolo11n", "yolo26n")
TASK_SUFFIX = {"detect": "", "segment": "-seg", "pose": "-pose", "obb": "-obb"}


@dataclass(frozen=True)
class ZooModel:
    """One structure of the zoo: ``cfg`` is an ultralytics yaml name such as ``yolo11n-seg.yaml``."""

    arch: str
    task: str

    @property
    def cfg(self) -> str:
        return f"{self.arch}{TASK_SUFFIX[self.task]}.yaml"

    @property
    def name(self) -> str:
        return f"{self.arch}{TASK_SUFFIX[self.task]}"


def zoo(archs: tuple[str, ...] = ARCHITECTURES, tasks: tuple[str, ...] = tuple(TASK_SUFFIX)) -> list[ZooModel]:
    return [ZooModel(a, t) for a in archs for t in tasks]


def model_class(cfg: str) -> Any:
    """ultralytics' model class for a yaml: ``RTDETR`` for RT-DETR configurations, else ``YOLO``."""
    from ultralytics import RTDETR, YOLO

    return RTDETR if Path(cfg).name.lower().startswith("rtdetr") else YOLO


def build_onnx(
    cfg: str,
    output: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    nc: int | None = None,
    imgsz: int | tuple[int, int] = 640,
    opset: int = 17,
    batch: int = 1,
    dynamic: bool = False,
    simplify: bool = True,
    seed: int = 0,
    **export_args: object,
) -> Path:
    """Build ``cfg`` (an ultralytics model yaml), optionally load ``weights`` into it, export to ``output``.

    ``nc`` overrides the number of classes of the yaml (ultralytics' yamls default to 80, matching
    COCO checkpoints). ``export_args`` go to ultralytics' ``export`` as they are (for example
    ``nms=False`` for YOLO26's end-to-end one-to-one head, ``[N, 300, 6]``, instead of ultralytics'
    default one-to-many grid ``[N, 4 + nc (+ extra), anchors]``).
    Returns ``output``.
    """
    try:
        import torch
        from ultralytics import YOLO
    except ImportError:
        raise MissingDependencyError("building models needs ultralytics and torch: pip install 'trtq[export]'") from None
    from trtq.export import _in_folder, _quiet_ultralytics

    out = Path(output)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory(prefix="trtq-zoo-") as tmp, _in_folder(tmp), _quiet_ultralytics():
        if nc is not None:
            from ultralytics.nn.tasks import yaml_model_load

            spec = yaml_model_load(cfg)
            spec["nc"] = nc
            import yaml

            local_cfg = Path(tmp) / Path(cfg).name
            local_cfg.write_text(yaml.safe_dump(spec))
            yolo = model_class(cfg)(str(local_cfg))
        else:
            yolo = model_class(cfg)(cfg)
        if weights is not None:
            local_pt = Path(tmp) / "weights" / Path(weights).name
            local_pt.parent.mkdir()
            shutil.copy2(weights, local_pt)
            yolo.load(str(local_pt))
            source_names = YOLO(str(local_pt)).names  # the checkpoint's class names, when the class count matches
            if len(source_names) == len(yolo.names):
                setattr(yolo.model, "names", dict(source_names))  # noqa: B010 - nn.Module's typed __setattr__
        try:
            produced = yolo.export(
                format="onnx", imgsz=imgsz, opset=opset, batch=batch, dynamic=dynamic,
                simplify=simplify, device="cpu", verbose=False, **export_args,
            )
        except Exception as exc:
            msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise TrtqError(f"ultralytics export of {cfg} failed: {msg}") from None
        with atomic_path(out) as tmp_out:
            shutil.copyfile(Path(tmp) / str(produced), tmp_out)
    logger.debug("built %s -> %s", cfg, out)
    return out

