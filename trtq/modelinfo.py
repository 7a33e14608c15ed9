"""What an ONNX model is: inputs, outputs, ultralytics metadata and a content hash.

One small, validated description used by every stage (calibration, quantization, building, runtime),
so that shape and metadata rules live in one place.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtq.errors import TrtqError
from trtq.fileio import sha256_file
from trtq.tasks import parse_metadata_value

if TYPE_CHECKING:
    from trtq.tasks import TaskLayout

logger = logging.getLogger(__name__)

#: protobuf's hard limit: an ONNX model (with its external data) above it cannot be rewritten in memory
MAX_MODEL_BYTES = 2 * 1024**3

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
ONNX_SUFFIXES = (".onnx",)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | None, ...]  # None for a dynamic dimension
    dtype: str  # numpy dtype name, e.g. "float32"


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    metadata: dict[str, Any] = field(default_factory=dict)  # ultralytics metadata_props, parsed
    sha256: str = ""  # of the .onnx and, where present, its external data files
    opset: int = 0  # default-domain ONNX opset
    external_data: tuple[Path, ...] = ()  # files holding tensors stored outside the .onnx
    float_dtype: str = "float32"  # "float16" for a model whose weights or input are FP16

    @property
    def input(self) -> TensorSpec:
        """The single image input (YOLOv8 detectors have exactly one)."""
        return self.inputs[0]

    @property
    def imgsz(self) -> tuple[int, int]:
        """(height, width) the model expects: from the static input shape, else from metadata, else 640."""
        shape = self.input.shape
        if len(shape) == 4 and shape[2] is not None and shape[3] is not None:
            return int(shape[2]), int(shape[3])
        meta = self.metadata.get("imgsz")
        if isinstance(meta, (list, tuple)) and len(meta) == 2:
            return int(meta[0]), int(meta[1])
        if isinstance(meta, int):
            return meta, meta
        return 640, 640

    @property
    def stride(self) -> int:
        s = self.metadata.get("stride", 32)
        return int(max(s) if isinstance(s, (list, tuple)) else s)

    @property
    def names(self) -> dict[int, str]:
        names = self.metadata.get("names") or {}
        return {int(k): str(v) for k, v in names.items()} if isinstance(names, dict) else {}

    @property
    def static_batch(self) -> int | None:
        return self.input.shape[0] if self.input.shape else None

    @property
    def layout(self) -> TaskLayout:
        """What the outputs mean (task, classes, head form); raises a one-line error where trtq cannot decode them."""
        from trtq.tasks import task_layout

        shape = self.input.shape
        static = len(shape) == 4 and shape[2] is not None and shape[3] is not None
        return task_layout(
            self.metadata, [o.shape for o in self.outputs], imgsz=self.imgsz if static else None, source=str(self.path)
        )

    @property
    def layout_or_none(self) -> TaskLayout | None:
        """:func:`model_layout`, or None for a model whose outputs are not a YOLO head trtq can decode
        (a head that could be several tasks is refused: :class:`trtq.tasks.AmbiguousLayout`)."""
        from trtq.tasks import AmbiguousLayout

        try:
            return model_layout(self)
        except AmbiguousLayout:
            raise
        except TrtqError:
            return None


_ONNX_TO_NP = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 2: "uint8", 3: "int8", 9: "bool"}


def _spec(value_info: Any) -> TensorSpec:
    tt = value_info.type.tensor_type
    dims: list[int | None] = []
    for d in tt.shape.dim:
        dims.append(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None)
    return TensorSpec(value_info.name, tuple(dims), _ONNX_TO_NP.get(tt.elem_type, f"onnx:{tt.elem_type}"))


def external_data_files(model: Any, base: Path) -> tuple[Path, ...]:
    """The files (relative to ``base``, the model's folder) that hold a model's externally stored tensors."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    found: dict[str, Path] = {}
    for init in model.graph.initializer:
        if uses_external_data(init):
            location = ExternalDataInfo(init).location
            found.setdefault(location, base / location)
    return tuple(found.values())


def model_sha256(path: str | Path, external: tuple[Path, ...] | None = None) -> str:
    """sha256 of an ONNX model: of the file alone, or, for a model with external data, of the file's hash
    followed by every external file's name and hash (so a changed weights file makes caches stale)."""
    p = Path(path)
    if external is None:
        import onnx

        external = external_data_files(onnx.load(str(p), load_external_data=False), p.parent)
    if not external:
        return sha256_file(p)
    h = hashlib.sha256(sha256_file(p).encode())
    for f in external:
        h.update(f.name.encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def _float_dtype(model: Any) -> str:
    from onnx import TensorProto

    fp16 = any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer) or any(
        i.type.tensor_type.elem_type == TensorProto.FLOAT16 for i in model.graph.input
    )
    return "float16" if fp16 else "float32"


def read_model_info(path: str | Path, *, with_hash: bool = True) -> ModelInfo:
    """Read an ONNX file's interface; raise a one-line :class:`TrtqError` if it is not a usable ONNX.

    Models with external data are accepted (the data files must sit where the model says); a model
    larger than 2 GB with its data is refused, since protobuf cannot hold the graphs trtq derives from it.
    """
    import onnx

    p = Path(path)
    if not p.is_file():
        raise TrtqError(f"model not found: {p}")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:
        raise TrtqError(f"{p} is not a readable ONNX model ({type(exc).__name__}: {str(exc)[:120]})") from None
    external = external_data_files(model, p.parent)
    missing = [f for f in external if not f.is_file()]
    if missing:
        raise TrtqError(f"{p} keeps its weights in {missing[0]}, which is missing; put it next to the model")
    size = p.stat().st_size + sum(f.stat().st_size for f in external)
    if size > MAX_MODEL_BYTES:
        raise TrtqError(
            f"{p} is {size / 1024**3:.1f} GB with its external data; trtq handles models up to 2 GB "
            "(protobuf's limit for the calibration and Q/DQ graphs): export a smaller model"
        )
    initializers = {i.name for i in model.graph.initializer}
    inputs = tuple(_spec(i) for i in model.graph.input if i.name not in initializers)
    if not inputs:
        raise TrtqError(f"{p} has no graph inputs: not an image model")
    outputs = tuple(_spec(o) for o in model.graph.output)
    meta = {prop.key: parse_metadata_value(prop.value) for prop in model.metadata_props}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return ModelInfo(
        p, inputs, outputs, meta, model_sha256(p, external) if with_hash else "", opset, external, _float_dtype(model)
    )


def model_layout(info: ModelInfo) -> TaskLayout:
    """What the outputs of an ONNX model mean, the one answer every reader uses (quantize, the runtime,
    verify, compare): ultralytics metadata checked against the output shapes; without task metadata, the
    head's branches in the graph (output shapes alone cannot tell a pose model from a detector with more
    classes), else the output shapes where they are unambiguous. Raises one line otherwise
    (:class:`trtq.tasks.AmbiguousLayout` where the head could be several tasks)."""
    from trtq.tasks import refuse_ambiguous

    if "task" not in info.metadata and not _looks_like_classifier(info):
        import onnx

        from trtq.headpolicy import graph_layout

        layout = graph_layout(onnx.load(str(info.path), load_external_data=False))
        if layout is not None:
            return layout
        return refuse_ambiguous(info.layout, info.metadata, str(info.path))
    return info.layout


def check_model(info: ModelInfo) -> TaskLayout | None:
    """Raise unless trtq can work with the model: one float image input, and outputs it can decode.

    A model whose outputs trtq cannot decode (classification, a task trtq does not handle, metadata
    that contradicts the outputs) is refused with one line. The layout is :func:`model_layout`'s; a model
    without metadata whose layout cannot be told is accepted with a warning (calibration does not need the
    layout) and None is returned.
    """
    check_detector_input(info)
    try:
        return model_layout(info)
    except TrtqError as exc:
        if "task" in info.metadata or _looks_like_classifier(info):
            raise
        logger.warning("%s; trtq's runtime will not decode it", str(exc).rstrip("."))
        return None


def _looks_like_classifier(info: ModelInfo) -> bool:
    return len(info.outputs) == 1 and len(info.outputs[0].shape) == 2


def check_detector_input(info: ModelInfo) -> None:
    """Raise unless the model takes one NCHW 3-channel float image tensor."""
    if len(info.inputs) != 1:
        names = ", ".join(i.name for i in info.inputs)
        raise TrtqError(f"{info.path} has {len(info.inputs)} inputs ({names}); trtq expects one image input")
    spec = info.input
    if len(spec.shape) != 4 or spec.shape[1] not in (3, None) or not spec.dtype.startswith("float"):
        raise TrtqError(
            f"{info.path}: input {spec.name!r} is {spec.dtype}{list(spec.shape)}; expected a float NCHW image tensor "
            "[N,3,H,W] as exported by `trtq export`"
        )


def model_kind(path: str | Path) -> tuple[Path, str]:
    """``(path, "onnx" | "engine")`` from the suffix; TrtqError for a missing path, a folder or another suffix."""
    p = Path(path)
    if not p.exists():
        raise TrtqError(f"model not found: {p}")
    if p.is_dir():
        raise TrtqError(f"{p} is a directory; pass an .onnx model or an .engine file")
    suffix = p.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return p, "onnx"
    if suffix in ENGINE_SUFFIXES:
        return p, "engine"
    raise TrtqError(f"{p}: unknown model type {suffix!r}; pass an .onnx model or an .engine/.plan file")
