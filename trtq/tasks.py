"""What a YOLO model's outputs mean: task, classes and the layout of every output row, in one place.

Ultralytics exports four decodable tasks, each in two head forms:

=========  =====================================  ============================================
task       grid output (one-to-many, needs NMS)   end-to-end output (YOLO26 one-to-one, no NMS)
=========  =====================================  ============================================
detect     ``(N, 4 + nc, A)``                     ``(N, K, 6)``: x1 y1 x2 y2 score class
segment    ``(N, 4 + nc + nm, A)`` + protos       ``(N, K, 6 + nm)`` + protos ``(N, nm, H/4, W/4)``
pose       ``(N, 4 + nc + kpts, A)``              ``(N, K, 6 + kpts)``, kpts = k * (2 or 3)
obb        ``(N, 4 + nc + 1, A)`` (angle last)    ``(N, K, 7)``: cx cy w h score class angle
=========  =====================================  ============================================

where ``A`` is the number of anchors (``sum(H/s * W/s)`` over the strides 8, 16, 32) and the grid's
box rows are ``cx, cy, w, h`` in input pixels (``x1 y1 x2 y2`` for YOLO26's grid head is not used by
ultralytics' exports). The layout is read from ultralytics' metadata (``task``, ``names``,
``kpt_shape``, ``end2end``) and checked against the output shapes; when metadata is missing it is
inferred from the shapes, and anything that cannot be decoded (classification, unknown layouts) is
refused with one line. Pure Python: imported by the runtime, which must stay light.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trtq.errors import TrtqError

TASKS = ("detect", "segment", "pose", "obb")
STRIDES = (8, 16, 32)
Shape = Sequence[int | None]


class AmbiguousLayout(TrtqError):
    """A model without ultralytics metadata whose head cannot be told from its graph: its output could be a
    detector's or another task's (a pose model with 80 classes has the rows of a 131-class detector)."""


def refuse_ambiguous(layout: TaskLayout, metadata: Mapping[str, Any], source: str) -> TaskLayout:
    """``layout`` unless it was guessed from a grid output's row count alone (no task, no class names): then
    one line saying so. Call it only where the graph could not tell the head's branches apart."""
    if layout.inferred and layout.task == "detect" and not layout.end2end and not metadata.get("names"):
        raise AmbiguousLayout(
            f"{source} has no ultralytics metadata (task, names) and its head could not be told from its graph: "
            f"its {layout.row_size}-row output may be a {layout.nc}-class detector or a pose, OBB or segment "
            "model; export it with ultralytics or `trtq export` (they write the metadata)"
        )
    return layout


@dataclass(frozen=True)
class TaskLayout:
    """The decoded meaning of a YOLO model's outputs (see the module docstring)."""

    task: str
    nc: int
    end2end: bool = False
    kpt_shape: tuple[int, int] | None = None  # pose: (keypoints, 2 or 3 values each)
    nm: int = 0  # segment: mask coefficients per detection (= prototype channels)
    inferred: bool = False  # True when metadata was missing and the layout came from shapes alone

    @property
    def extra(self) -> int:
        """Values per detection after the box, score(s) and class: mask coefficients, keypoints or angle."""
        if self.task == "segment":
            return self.nm
        if self.task == "pose":
            assert self.kpt_shape is not None
            return self.kpt_shape[0] * self.kpt_shape[1]
        return 1 if self.task == "obb" else 0

    @property
    def row_size(self) -> int:
        """Channels of the grid output (``4 + nc + extra``) or values per end-to-end detection (``6 + extra``)."""
        return 6 + self.extra if self.end2end else 4 + self.nc + self.extra

    def describe(self) -> str:
        head = "end-to-end" if self.end2end else "grid"
        parts = [f"{self.task}", f"{self.nc} classes", f"{head} head"]
        if self.kpt_shape:
            parts.append(f"{self.kpt_shape[0]}x{self.kpt_shape[1]} keypoints")
        if self.nm:
            parts.append(f"{self.nm} mask coefficients")
        return ", ".join(parts)


#: ultralytics models trtq does not handle, by the head class their export records (metadata ``head``), with
#: the words of their description for exports that predate that key
UNSUPPORTED_MODELS = (
    ("RTDETRDecoder", ("rtdetr", "rt-detr"), "an RT-DETR model (transformer decoder head)"),
    ("WorldDetect", ("world",), "a YOLO-World model (open-vocabulary head fed with text embeddings)"),
    ("YOLOEDetect", ("yoloe",), "a YOLOE model (open-vocabulary head fed with prompt embeddings)"),
    ("YOLOESegment", (), "a YOLOE model (open-vocabulary head fed with prompt embeddings)"),
)


def refuse_unsupported(metadata: Mapping[str, Any], source: str = "model") -> None:
    """One line, before any work, for an ultralytics export trtq cannot quantize or decode: RT-DETR,
    YOLO-World, YOLOE, and any model exported with ``nms=True`` (NMS inside the graph)."""
    head = str(metadata.get("head", ""))
    # "Ultralytics YOLOv8s-worldv2 model trained on DATA": the model's name, not the data's
    name = str(metadata.get("description", "")).lower().removeprefix("ultralytics ").split(" model")[0]
    for head_class, words, what in UNSUPPORTED_MODELS:
        if head == head_class or (not head and any(w in name for w in words)):
            raise TrtqError(f"{source} is {what}, which trtq does not support; it handles YOLOv8, YOLO11 and YOLO26 "
                            "detect, segment, pose and obb models")
    args = metadata.get("args")
    if isinstance(args, Mapping) and _as_bool(args.get("nms")):
        raise TrtqError(f"{source} was exported with nms=True (NMS inside the graph, which trtq does not quantize or "
                        "decode); re-export it without nms=True (`trtq export MODEL.pt`) and let trtq run NMS")


def parse_metadata_value(value: str) -> Any:
    """Ultralytics stores metadata_props as Python literals (``{0: 'person'}``) or plain strings."""
    for parse in (ast.literal_eval, json.loads):
        try:
            return parse(value)
        except (ValueError, SyntaxError, TypeError):
            continue
    return value


def anchor_count(imgsz: tuple[int, int], strides: Sequence[int] = STRIDES) -> int:
    h, w = imgsz
    return sum(math.ceil(h / s) * math.ceil(w / s) for s in strides)


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _kpt_shape(value: Any) -> tuple[int, int] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    return None


def task_layout(
    metadata: Mapping[str, Any],
    output_shapes: Sequence[Shape],
    *,
    imgsz: tuple[int, int] | None = None,
    source: str = "model",
) -> TaskLayout:
    """The layout of a model's outputs from its (parsed) ultralytics metadata and its output shapes.

    ``output_shapes`` lists every graph output in order (``None`` for a dynamic dimension). Raises a
    one-line :class:`TrtqError` for a model trtq cannot decode.
    """
    refuse_unsupported(metadata, source)
    if not output_shapes:
        raise TrtqError(f"{source} has no outputs")
    first = tuple(output_shapes[0])
    task = metadata.get("task")
    if task == "classify" or (task is None and len(first) == 2):
        raise TrtqError(f"{source} is a classification model; trtq handles detect, segment, pose and obb models")
    if task is not None and task not in TASKS:
        raise TrtqError(f"{source} is a {task!r} model; trtq handles detect, segment, pose and obb models")
    if len(first) != 3:
        raise TrtqError(
            f"{source}: output 0 has shape {list(first)}; expected a YOLO head output (N, 4+classes, anchors) "
            "or an end-to-end output (N, detections, 6+)"
        )
    names = metadata.get("names")
    nc = len(names) if isinstance(names, Mapping) and names else None
    protos = next((tuple(s) for s in output_shapes[1:] if len(s) == 4), None)
    nm = int(protos[1]) if protos is not None and protos[1] is not None else 0
    if task is None and protos is not None:
        task = "segment"

    end2end = _as_bool(metadata.get("end2end"))
    if end2end is None:
        end2end = _looks_end2end(first, imgsz)

    inferred = "task" not in metadata
    kpt = _kpt_shape(metadata.get("kpt_shape"))
    rows = first[2] if end2end else first[1]
    if rows is None:
        raise TrtqError(f"{source}: output 0 has a dynamic row size {list(first)}; cannot decode it")
    if task is None:
        task, nc, kpt = _infer_task(int(rows), nc, end2end, source)
    if task == "segment" and not nm:
        raise TrtqError(f"{source} is a segmentation model without a mask-prototype output")
    if task == "pose" and kpt is None:
        if nc is None:
            raise TrtqError(f"{source} is a pose model without kpt_shape metadata; re-export it with ultralytics")
        extra = int(rows) - (6 if end2end else 4 + nc)
        kpt = (extra // 3, 3) if extra > 0 and extra % 3 == 0 else (extra // 2, 2) if extra > 0 and extra % 2 == 0 else None
        if kpt is None:
            raise TrtqError(f"{source}: cannot tell the keypoint layout from {int(rows)} output rows")
    extra = {"segment": nm, "pose": (kpt[0] * kpt[1]) if kpt else 0, "obb": 1}.get(task, 0)
    if nc is None:
        if end2end:
            raise TrtqError(f"{source} has no class names in its metadata; cannot tell how many classes it has")
        nc = int(rows) - 4 - extra
    layout = TaskLayout(task, nc, end2end, kpt if task == "pose" else None, nm if task == "segment" else 0, inferred)
    if int(rows) != layout.row_size:
        what = f"{int(rows)} values per detection" if end2end else f"{int(rows)} channels"
        raise TrtqError(
            f"{source}: output 0 has {what}, but a {layout.describe()} model has {layout.row_size}; "
            "the metadata does not match the outputs"
        )
    return layout


def _looks_end2end(shape: tuple[int | None, ...], imgsz: tuple[int, int] | None) -> bool:
    """Grid outputs put the anchors last; end-to-end outputs put a few values per detection last."""
    last = shape[2]
    if imgsz is not None and last == anchor_count(imgsz):
        return False
    return last is not None and shape[1] is not None and last < shape[1] and last <= 6 + 32 + 3 * 17


def _infer_task(rows: int, nc: int | None, end2end: bool, source: str) -> tuple[str, int | None, tuple[int, int] | None]:
    """Task from the row size alone (no ``task`` metadata): only unambiguous cases are accepted."""
    if end2end:
        if rows == 6:
            return "detect", nc, None
        if rows == 7:
            return "obb", nc, None
        if (rows - 6) % 3 == 0:
            return "pose", nc, ((rows - 6) // 3, 3)
        raise TrtqError(f"{source}: cannot tell the task of an end-to-end output with {rows} values per detection")
    if nc is None:
        return "detect", rows - 4, None  # a plain detector is the only reading without class names
    extra = rows - 4 - nc
    if extra == 0:
        return "detect", nc, None
    if extra == 1:
        return "obb", nc, None
    if extra > 0 and extra % 3 == 0:
        return "pose", nc, (extra // 3, 3)
    raise TrtqError(f"{source}: {rows} output channels do not fit {nc} classes; add ultralytics metadata (task)")
