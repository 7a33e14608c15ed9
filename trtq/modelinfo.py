"""What an ONNX model is: inputs, outputs, ultralytics metadata and a content hash.

One small, validated description used by every stage (calibration, quantization, building, runtime),
so that shape and metadata rules live in one place.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trtq.errors import TrtqError
from trtq.fileio import sha256_file


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
    sha256: str = ""

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


_ONNX_TO_NP = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 2: "uint8", 3: "int8", 9: "bool"}


def parse_metadata_value(value: str) -> Any:
    """Ultralytics stores metadata_props as Python literals (``{0: 'person'}``) or plain strings."""
    for parse in (ast.literal_eval, json.loads):
        try:
            return parse(value)
        except (ValueError, SyntaxError, TypeError):
            continue
    return value


def _spec(value_info: Any) -> TensorSpec:
    tt = value_info.type.tensor_type
    dims: list[int | None] = []
    for d in tt.shape.dim:
        dims.append(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None)
    return TensorSpec(value_info.name, tuple(dims), _ONNX_TO_NP.get(tt.elem_type, f"onnx:{tt.elem_type}"))


def read_model_info(path: str | Path, *, with_hash: bool = True) -> ModelInfo:
    """Read an ONNX file's interface; raise a one-line :class:`TrtqError` if it is not a usable ONNX."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise TrtqError(f"model not found: {p}")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:
        raise TrtqError(f"{p} is not a readable ONNX model ({type(exc).__name__}: {str(exc)[:120]})") from None
    initializers = {i.name for i in model.graph.initializer}
    inputs = tuple(_spec(i) for i in model.graph.input if i.name not in initializers)
    if not inputs:
        raise TrtqError(f"{p} has no graph inputs: not an image model")
    outputs = tuple(_spec(o) for o in model.graph.output)
    meta = {prop.key: parse_metadata_value(prop.value) for prop in model.metadata_props}
    return ModelInfo(p, inputs, outputs, meta, sha256_file(p) if with_hash else "")


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
