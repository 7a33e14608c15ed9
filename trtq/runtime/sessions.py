"""Backend sessions: what the :class:`~trtq.runtime.Detector` needs from ONNX Runtime or TensorRT.

A session owns the model, a reusable input buffer and the model's metadata; ``run`` returns every
output of the model (a segmentation model's mask prototypes included), in the model's output order.
The TensorRT session lives in :mod:`trtq.trt.session` (a base module: verification runs engines too).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from trtq.cpuisa import TARGET_CPU, TARGET_KEY, warn_if_saturating
from trtq.errors import TrtqError
from trtq.modelinfo import model_kind
from trtq.ort import ort_session

if TYPE_CHECKING:
    import onnxruntime as ort

MAX_DYNAMIC_BATCH = 32  # largest batch run at once on a dynamic-batch ONNX model


class Session(Protocol):
    """One image input, every output; the ultralytics metadata that says what the outputs mean."""

    backend: str
    input_name: str
    imgsz: tuple[int, int]
    batch_range: tuple[int, int]  # (min, max) images per inference run
    names: dict[int, str]
    stride: int
    metadata: dict[str, Any]  # parsed ultralytics metadata (task, names, kpt_shape, end2end, ...)
    output_shapes: list[tuple[int | None, ...]]  # as built; None for dynamic dimensions

    def input_buffer(self, n: int) -> np.ndarray: ...

    def run(self, n: int) -> list[np.ndarray]: ...

    def close(self) -> None: ...


class OnnxSession:
    """An ONNX model on ONNX Runtime with a reused input buffer (CPU provider unless ``providers`` says otherwise)."""

    backend = "onnxruntime"

    def __init__(self, path: Path, *, providers: Sequence[str] | None = None, threads: int | None = None) -> None:
        from trtq.tasks import parse_metadata_value

        # a TensorRT Q/DQ ONNX is simulated exactly (as TensorRT computes it); a CPU-target model runs on
        # this CPU's own integer kernels, which is what it is for (the metadata says which it is)
        session = ort_session(path, providers, exact_qdq=True, threads=threads)
        model_meta = dict(session.get_modelmeta().custom_metadata_map)
        if model_meta.get(TARGET_KEY) == TARGET_CPU:
            warn_if_saturating(model_meta, path.name)
            session = ort_session(path, providers, threads=threads)
        self.session: ort.InferenceSession | None = session
        self.providers = list(session.get_providers())
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1:
            raise TrtqError(f"{path} has {len(inputs)} inputs; trtq expects one image input")
        inp = inputs[0]
        in_shape = [d if isinstance(d, int) and d > 0 else None for d in inp.shape]
        dtypes = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
        if len(in_shape) != 4 or in_shape[1] not in (3, None) or inp.type not in dtypes:
            raise TrtqError(
                f"{path}: input {inp.name!r} is {inp.type}{in_shape}; expected a float NCHW image tensor [N,3,H,W] "
                "as exported by `trtq export`"
            )
        self.output_shapes = [tuple(d if isinstance(d, int) and d > 0 else None for d in o.shape) for o in outputs]
        meta = {k: parse_metadata_value(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
        self.metadata: dict[str, Any] = meta
        self.input_name = str(inp.name)
        self.output_names = [str(o.name) for o in outputs]
        h, w = in_shape[2], in_shape[3]
        # height and width chosen per batch: ultralytics' predictor pads such a model to the stride only
        self.dynamic_hw = h is None and w is None
        if h is None or w is None:
            size = meta.get("imgsz", 640)
            h, w = (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) else (int(size), int(size))
        self.imgsz = (h, w)
        stride = meta.get("stride", 32)
        self.stride = int(max(stride) if isinstance(stride, (list, tuple)) else stride)
        names = meta.get("names")
        self.names = {int(k): str(v) for k, v in names.items()} if isinstance(names, dict) else {}
        self.dtype = np.dtype(dtypes[inp.type])
        static = in_shape[0]
        self.batch_range = (static, static) if static is not None else (1, MAX_DYNAMIC_BATCH)
        self._static_batch = static
        self._buffer = np.zeros((self.batch_range[0], 3, *self.imgsz), dtype=self.dtype)

    def input_buffer(self, n: int) -> np.ndarray:
        if self._buffer.shape[0] < n:
            self._buffer = np.zeros((n, 3, *self.imgsz), dtype=self.dtype)
        return self._buffer[:n]

    def run(self, n: int) -> list[np.ndarray]:
        if self.session is None:
            raise TrtqError("this ONNX Runtime session is closed")
        run_n = self._static_batch or n
        outs = self.session.run(self.output_names, {self.input_name: self.input_buffer(run_n)})
        return [np.asarray(o)[:n] for o in outs]

    def run_array(self, x: np.ndarray) -> list[np.ndarray]:
        """Run one NCHW float32 batch of any height and width (a dynamic-size model); every output."""
        if self.session is None:
            raise TrtqError("this ONNX Runtime session is closed")
        n = x.shape[0]
        if self._static_batch is not None and n < self._static_batch:
            x = np.concatenate([x, np.zeros((self._static_batch - n, *x.shape[1:]), x.dtype)])
        outs = self.session.run(self.output_names, {self.input_name: x.astype(self.dtype, copy=False)})
        return [np.asarray(o)[:n] for o in outs]

    def close(self) -> None:
        self.session = None


def open_session(path: str | Path, *, device: int = 0, providers: Sequence[str] | None = None) -> Session:
    """Open ``path`` on the backend its suffix names (.onnx: ONNX Runtime; .engine/.plan/.trt: TensorRT)."""
    p, kind = model_kind(path)
    if kind == "onnx":
        return OnnxSession(p, providers=providers)
    from trtq.trt.session import TensorRTSession

    return TensorRTSession(p, device=device)
