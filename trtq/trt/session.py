"""TensorRT session: a deserialized engine with its execution context, CUDA stream and pinned buffers.

TensorRT and the CUDA bindings are imported when a session is made, never at import time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trtq.errors import TrtqError

if TYPE_CHECKING:
    from trtq.device import Device, DeviceBuffer, Stream
    from trtq.engine_meta import EngineMetadata

logger = logging.getLogger(__name__)


@dataclass
class EngineTensor:
    """One engine I/O tensor with its pinned host and device buffers (sized for the largest batch)."""

    name: str
    is_input: bool
    dtype: np.dtype[Any]
    shape: tuple[int, ...]  # as built; -1 for dynamic dimensions
    host: np.ndarray = field(repr=False)  # pinned, at the largest shape
    device: DeviceBuffer = field(repr=False)

    def host_view(self, shape: tuple[int, ...]) -> np.ndarray:
        """The leading ``prod(shape)`` elements of the pinned buffer, viewed as ``shape`` (no copy)."""
        return self.host.reshape(-1)[: int(np.prod(shape))].reshape(shape)


def _read_engine_checked(path: Path) -> tuple[bytes, EngineMetadata | None, dict[str, Any] | None]:
    """The plan, its metadata and its ultralytics header; one clear error for each kind of broken file."""
    import hashlib

    from trtq.engine_meta import read_engine, read_header

    plan, meta = read_engine(path)  # raises for a missing engine or a corrupt sidecar
    header = read_header(path)
    if not plan:
        raise TrtqError(f"{path} holds no TensorRT plan (empty file): rebuild it with `trtq build`")
    expected = meta.engine_sha256 if meta is not None else ""
    if expected and hashlib.sha256(plan).hexdigest() != expected:
        raise TrtqError(
            f"{path} does not match its metadata (sha256 differs: truncated or modified copy); "
            "copy it again or rebuild it with `trtq build`"
        )
    return plan, meta, header


class TensorRTSession:
    """A deserialized engine with one execution context, one CUDA stream and buffers allocated once.

    Used by :class:`Detector` and by the benchmark harness; every I/O tensor gets a pinned host buffer and a
    device buffer sized for the largest batch of optimization profile 0, registered once with
    ``set_tensor_address``.
    """

    backend = "tensorrt"

    def __init__(self, path: Path, *, device: int = 0) -> None:
        from trtq.trt.compat import require_tensorrt

        require_tensorrt(f"running the TensorRT engine {path.name}")
        import tensorrt as trt

        from trtq.device import get_device, is_integrated
        from trtq.engine_meta import check_compatible, configure_runtime

        plan, meta, header = _read_engine_checked(path)
        self.path = path
        self.meta: EngineMetadata | None = meta
        self.header: dict[str, Any] | None = header
        self.device: Device = get_device("auto", device)
        self._closed = False
        try:
            if meta is not None:
                check_compatible(
                    meta,
                    tensorrt_version=str(trt.__version__),
                    compute_capability=self.device.compute_capability,
                    dla_core=meta.dla_core,
                    integrated=is_integrated(self.device),
                )
            else:
                logger.warning(
                    "%s has no metadata (no .json sidecar, no header): compatibility not checked", path
                )
            from trtq.trt.compat import trt_logger

            self.runtime = trt.Runtime(trt_logger(trt))  # one logger per process (TensorRT keeps the first)
            configure_runtime(self.runtime, meta, header)  # DLA core (record or ultralytics header), host code
            try:
                engine = self.runtime.deserialize_cuda_engine(plan)
            except Exception as exc:  # some bindings raise instead of returning None
                logger.debug("deserialize_cuda_engine raised %s: %s", type(exc).__name__, exc)
                engine = None
            if engine is None:
                raise TrtqError(
                    f"TensorRT could not deserialize {path} (truncated, corrupt, or built by another TensorRT "
                    "version or for another GPU): rebuild it on this device with `trtq build`"
                )
            self.engine = engine
            context = engine.create_execution_context()
            if context is None:
                raise TrtqError(
                    f"TensorRT could not create an execution context for {path} (out of GPU memory?)"
                )
            self.context = context
            self.stream: Stream = self.device.stream()
            self.tensors: dict[str, EngineTensor] = {}
            self._setup_io(trt)
        except BaseException:
            self.close()
            raise

    def _setup_io(self, trt: Any) -> None:
        engine, context = self.engine, self.context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or not outputs:
            raise TrtqError(
                f"{self.path} has inputs {inputs} and outputs {outputs}; trtq expects one image input and an output"
            )
        self.input_name = inputs[0]
        self.output_names = outputs
        in_shape = tuple(int(d) for d in engine.get_tensor_shape(self.input_name)[:])
        if len(in_shape) != 4 or in_shape[1] not in (3, -1):
            raise TrtqError(
                f"{self.path}: input {self.input_name!r} has shape {list(in_shape)}; expected [N, 3, H, W]"
            )
        if in_shape[0] == -1 or -1 in in_shape[2:]:
            pmin, _popt, pmax = engine.get_tensor_profile_shape(self.input_name, 0)
            lo, hi = tuple(int(d) for d in pmin[:]), tuple(int(d) for d in pmax[:])
            self.batch_range = (lo[0], hi[0])
            self.imgsz = (hi[2], hi[3])
        else:
            self.batch_range = (in_shape[0], in_shape[0])
            self.imgsz = (in_shape[2], in_shape[3])
        meta, header = self.meta, self.header or {}
        if meta is not None:
            self.names = {int(k): str(v) for k, v in (meta.names or {}).items()}
            self.stride = int(meta.stride or 32)
        else:  # an engine with only an ultralytics header (or nothing at all)
            raw_names = header.get("names")
            self.names = {int(k): str(v) for k, v in raw_names.items()} if isinstance(raw_names, dict) else {}
            self.stride = int(header.get("stride") or 32)
        from trtq.engine_meta import engine_model_metadata

        self.metadata = engine_model_metadata(meta, header)
        self.output_shapes = [
            tuple(int(d) if int(d) >= 0 else None for d in engine.get_tensor_shape(n)[:]) for n in outputs
        ]
        max_in = (self.batch_range[1], 3, *self.imgsz)
        if not context.set_input_shape(self.input_name, max_in):
            raise TrtqError(f"{self.path}: input shape {list(max_in)} rejected by the engine's profile")
        self._batch = self.batch_range[1]
        for name in names:
            is_input = name == self.input_name
            shape = max_in if is_input else tuple(int(d) for d in context.get_tensor_shape(name)[:])
            if any(d < 0 for d in shape):
                raise TrtqError(
                    f"{self.path}: output {name!r} has a data-dependent shape {list(shape)}; not supported"
                )
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            host = self.device.pinned_empty(shape, dtype)
            buf = self.device.alloc(max(int(host.nbytes), 1))
            built = tuple(int(d) for d in engine.get_tensor_shape(name)[:])
            self.tensors[name] = EngineTensor(name, is_input, dtype, built, host, buf)
            if not context.set_tensor_address(name, int(buf.ptr)):
                raise TrtqError(f"{self.path}: TensorRT rejected the buffer address of {name!r}")
        self.dtype = self.tensors[self.input_name].dtype

    @property
    def output_name(self) -> str:
        return self.output_names[0]

    def set_batch(self, n: int) -> None:
        """Select the batch size of the next runs (input shape of profile 0)."""
        lo, hi = self.batch_range
        if not lo <= n <= hi:
            raise TrtqError(f"{self.path.name}: batch {n} is outside the engine's range {lo}..{hi}")
        if n != self._batch:
            if not self.context.set_input_shape(self.input_name, (n, 3, *self.imgsz)):
                raise TrtqError(f"{self.path.name}: TensorRT rejected batch {n}")
            self._batch = n

    @property
    def batch(self) -> int:
        return self._batch

    def shape_of(self, name: str) -> tuple[int, ...]:
        """Current shape of ``name`` for the selected batch."""
        if name == self.input_name:
            return (self._batch, 3, *self.imgsz)
        return tuple(int(d) for d in self.context.get_tensor_shape(name)[:])

    def input_buffer(self, n: int) -> np.ndarray:
        return self.tensors[self.input_name].host_view((n, 3, *self.imgsz))

    def copy_inputs(self) -> None:
        t = self.tensors[self.input_name]
        self.device.htod(t.device, t.host_view(self.shape_of(t.name)), self.stream)

    def enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.handle):
            raise TrtqError(f"TensorRT failed to run {self.path.name} (execute_async_v3 returned False)")

    def copy_outputs(self) -> None:
        for name in self.output_names:
            t = self.tensors[name]
            self.device.dtoh(t.host_view(self.shape_of(name)), t.device, self.stream)

    def run(self, n: int) -> list[np.ndarray]:
        run_n = n if self.batch_range[0] <= n else self.batch_range[0]
        self.set_batch(run_n)
        self.copy_inputs()
        self.enqueue()
        self.copy_outputs()
        self.stream.synchronize()
        return [self.tensors[name].host_view(self.shape_of(name))[:n] for name in self.output_names]

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        # TensorRT objects first (while the CUDA context is current), then device memory, then the context.
        for attr in ("context", "engine", "runtime"):
            if hasattr(self, attr):
                delattr(self, attr)
        for t in getattr(self, "tensors", {}).values():
            t.device.free()
        self.tensors = {}
        if hasattr(self, "stream"):
            del self.stream
        self.device.close()
