"""Benchmark backends: TensorRT engines timed with CUDA events, ONNX models on ONNX Runtime with a host clock.

Both produce :class:`trtq.bench.harness.Sample` objects, so one harness times and compares them.

TensorRT timing follows trtexec: a dedicated CUDA stream, pinned host buffers, device buffers allocated once
(:class:`trtq.runtime.TensorRTSession`), and per iteration four events on that stream::

    e0 | H2D copy | e1 | execute_async_v3 (or CUDA-graph launch) | e2 | D2H copy | e3

compute = e1->e2, H2D = e0->e1, D2H = e2->e3, latency = e0->e3 (``transfers=False``: no copies, latency =
compute). The host wall clock of the iteration (enqueue to ``e3.synchronize()``) is kept beside it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trtq.bench.types import Backend, Sample
from trtq.cpuisa import model_metadata, warn_if_saturating
from trtq.device import cuda_check, load_cudart
from trtq.engine_meta import engine_dla_core
from trtq.errors import TrtqError
from trtq.ort import ort_session
from trtq.runtime import model_kind

if TYPE_CHECKING:
    from trtq.device import Event, Stream
    from trtq.runtime import TensorRTSession

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------
# ONNX Runtime (host clock)
# ---------------------------------------------------------------------------------------------------------------


def onnx_precision(path: str | Path) -> str:
    """``"INT8 (Q/DQ)"`` for a model with Quantize/DequantizeLinear nodes, ``"FP16"`` for half weights, else FP32."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    if ops & {
        "QuantizeLinear",
        "DequantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "ConvInteger",
        "MatMulInteger",
    }:
        return "INT8 (Q/DQ)"
    types = [init.data_type for init in model.graph.initializer]
    if types and sum(t == onnx.TensorProto.FLOAT16 for t in types) > len(types) // 2:
        return "FP16"
    return "FP32"


class HostClockRunner:
    """Times ``session.run`` with the host clock (the right clock for CPU work)."""

    clock = "host"

    def __init__(self, session: Any, feed: dict[str, np.ndarray], notes: list[str]) -> None:
        self._session = session
        self._feed = feed
        self.notes = notes

    def run(self) -> Sample:
        t0 = time.perf_counter()
        self._session.run(None, self._feed)
        ms = (time.perf_counter() - t0) * 1e3
        return Sample(latency=ms, host=ms)

    def close(self) -> None:
        self._feed = {}


class OnnxRuntimeBackend:
    """An ONNX model on ONNX Runtime (CPU unless ``providers`` names others)."""

    def __init__(self, path: Path, *, providers: Sequence[str] | None = None) -> None:
        from trtq.modelinfo import read_model_info

        self.path = path
        self.info = read_model_info(path, with_hash=False)
        warn_if_saturating(model_metadata(path), path.name)
        self.session: Any = ort_session(path, providers)
        first = self.session.get_providers()[0]
        self.name = "onnxruntime-" + first.replace("ExecutionProvider", "").lower()
        self.precision = onnx_precision(path)
        static = self.info.static_batch
        self.static_batch = static
        self.default_batch = static if static is not None else 1

    def batch_skip_reason(self, batch: int) -> str | None:
        if self.static_batch is not None and batch != self.static_batch:
            return (
                f"static batch {self.static_batch} model; export with a dynamic batch "
                "(`trtq export --dynamic`) to run other batch sizes"
            )
        return None

    def _feed(self, batch: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(0)
        feed: dict[str, np.ndarray] = {}
        h, w = self.info.imgsz
        for spec in self.info.inputs:
            dims: list[int] = []
            for i, d in enumerate(spec.shape):
                if d is not None:
                    dims.append(int(d))
                elif i == 0:
                    dims.append(batch)
                elif len(spec.shape) == 4 and i in (2, 3):
                    dims.append(h if i == 2 else w)
                elif len(spec.shape) == 4 and i == 1:
                    dims.append(3)
                else:
                    raise TrtqError(
                        f"{self.path}: cannot choose a size for dynamic dimension {i} of input {spec.name!r}"
                    )
            dtype = np.dtype(spec.dtype) if not spec.dtype.startswith("onnx:") else np.dtype(np.float32)
            if dtype.kind == "f":
                feed[spec.name] = rng.random(dims, dtype=np.float32).astype(dtype)
            else:
                feed[spec.name] = np.zeros(dims, dtype=dtype)
        return feed

    def prepare(self, batch: int, *, transfers: bool, cuda_graph: bool) -> HostClockRunner:
        notes: list[str] = []
        if cuda_graph:
            notes.append("CUDA graphs apply to TensorRT engines only; not used here")
        if not transfers and not self.name.endswith("cpu"):
            notes.append("host clock: includes the copies to and from the device")
        return HostClockRunner(self.session, self._feed(batch), notes)

    def close(self) -> None:
        self.session = None


# ---------------------------------------------------------------------------------------------------------------
# TensorRT (CUDA events)
# ---------------------------------------------------------------------------------------------------------------


class CudaGraph:
    """A CUDA graph captured from one ``enqueue`` on a stream, replayed with :meth:`launch` (cuda-python).

    Instantiated with ``cudaGraphInstantiateWithFlags(graph, 0)``, which has the same form from CUDA 11.4 on
    (JetPack 5's CUDA 11 included); ``cudaGraphInstantiate`` itself changed between CUDA 11 (error node and
    log buffer) and 12 (flags).
    """

    def __init__(self, stream: Stream, enqueue: Callable[[], None]) -> None:
        rt = load_cudart("--cuda-graph")
        self._rt = rt
        instantiate = getattr(rt, "cudaGraphInstantiateWithFlags", None)
        if instantiate is None:
            raise TrtqError("CUDA graphs need cudaGraphInstantiateWithFlags (CUDA 11.4 or newer cuda-python)")
        raw = getattr(stream, "raw", None)  # the cuda-python device's own cudaStream_t
        self._stream = raw if isinstance(raw, rt.cudaStream_t) else rt.cudaStream_t(init_value=int(stream.handle))
        self._graph: Any = None
        self._exec: Any = None
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        cuda_check(rt.cudaStreamBeginCapture(self._stream, mode), "cudaStreamBeginCapture")
        try:
            enqueue()
        except BaseException:
            self._abandon_capture()
            raise
        try:
            self._graph = cuda_check(rt.cudaStreamEndCapture(self._stream), "cudaStreamEndCapture")
        except RuntimeError:
            self._clear_error()
            raise
        try:
            self._exec = cuda_check(instantiate(self._graph, 0), "cudaGraphInstantiateWithFlags")
        except BaseException:
            self.close()
            raise

    def _abandon_capture(self) -> None:
        """End a capture whose enqueue failed, without raising: the enqueue's error is the one to report.

        As trtexec's ``endCaptureOnError`` (NVIDIA/TensorRT ``samples/common/sampleDevice.h``): an invalidated
        capture ends with ``cudaErrorStreamCaptureInvalidated`` and no graph; an enqueue TensorRT refused ends
        with a graph that must not be used (destroyed here); then ``cudaGetLastError`` clears the error the
        failure left behind, so the next CUDA call does not report it.
        """
        rt = self._rt
        try:
            result: Any = rt.cudaStreamEndCapture(self._stream)  # (err, graph or None)
            err: Any = result[0]
            graph: Any = result[1] if len(result) > 1 else None
            if graph is not None and int(getattr(err, "value", err)) == 0:
                rt.cudaGraphDestroy(graph)
        except Exception as exc:  # never mask the enqueue's own error
            logger.debug("ending the failed CUDA graph capture: %s: %s", type(exc).__name__, exc)
        self._clear_error()

    def _clear_error(self) -> None:
        """``cudaGetLastError()``: read and reset the runtime's last error (never raises)."""
        try:
            self._rt.cudaGetLastError()
        except Exception as exc:
            logger.debug("cudaGetLastError: %s: %s", type(exc).__name__, exc)

    def launch(self) -> None:
        cuda_check(self._rt.cudaGraphLaunch(self._exec, self._stream), "cudaGraphLaunch")

    def close(self) -> None:
        if self._exec is not None:
            self._rt.cudaGraphExecDestroy(self._exec)
            self._exec = None
        if self._graph is not None:
            self._rt.cudaGraphDestroy(self._graph)
            self._graph = None


#: Replaced in tests by a fake; makes the graph used by ``--cuda-graph``.
GraphFactory = Callable[["Stream", Callable[[], None]], Any]
make_cuda_graph: GraphFactory = CudaGraph


class CudaEventRunner:
    """One engine at one batch size, timed with CUDA events on the session's dedicated stream."""

    clock = "cuda-event"

    def __init__(self, session: TensorRTSession, batch: int, *, transfers: bool, cuda_graph: bool) -> None:
        self.session = session
        self.transfers = transfers
        self.notes: list[str] = []
        session.set_batch(batch)
        rng = np.random.default_rng(0)
        host_in = session.input_buffer(batch)
        host_in[...] = rng.random(host_in.shape, dtype=np.float32).astype(host_in.dtype)
        dev = session.device
        self.events: tuple[Event, Event, Event, Event] = (dev.event(), dev.event(), dev.event(), dev.event())
        # one untimed run with the final shapes: inputs on the device, lazy initialisation done before capture
        session.copy_inputs()
        session.enqueue()
        session.stream.synchronize()
        self.graph: Any = None
        dla = engine_dla_core(session.meta, session.header) is not None  # trtq's record or an ultralytics header
        if cuda_graph and dla:
            # "CUDA graphs and DLA offloading are not simultaneously supported" (trtexec, NVIDIA/TensorRT
            # samples/common/sampleOptions.cpp, which disables --useCudaGraph with --useDLACore)
            self.notes.append("CUDA graph not used: DLA engine (plain enqueues)")
        elif cuda_graph:
            try:
                self.graph = make_cuda_graph(session.stream, session.enqueue)
                self.notes.append("CUDA graph replay")
            except (TrtqError, RuntimeError) as exc:
                self.notes.append(f"CUDA graph not used: {exc}")
                logger.warning(
                    "CUDA graph capture failed for %s: %s; timing plain enqueues", session.path.name, exc
                )
        if not transfers:
            self.notes.append("no transfers: GPU compute only")

    def run(self) -> Sample:
        s = self.session
        stream = s.stream
        e0, e1, e2, e3 = self.events
        t0 = time.perf_counter()
        if self.transfers:
            e0.record(stream)
            s.copy_inputs()
        e1.record(stream)
        if self.graph is not None:
            self.graph.launch()
        else:
            s.enqueue()
        e2.record(stream)
        if self.transfers:
            s.copy_outputs()
            e3.record(stream)
            e3.synchronize()
        else:
            e2.synchronize()
        host = (time.perf_counter() - t0) * 1e3
        compute = e1.elapsed_ms(e2)
        if not self.transfers:
            return Sample(latency=compute, host=host, compute=compute)
        return Sample(
            latency=e0.elapsed_ms(e3),
            host=host,
            compute=compute,
            h2d=e0.elapsed_ms(e1),
            d2h=e2.elapsed_ms(e3),
        )

    def close(self) -> None:
        if self.graph is not None:
            self.graph.close()
            self.graph = None


def engine_precision(meta: Any) -> str:
    """Display precision of an engine from its metadata: FP32, FP16, INT8 (implicit) or INT8 (explicit)."""
    if meta is None:
        return "unknown"
    p = str(getattr(meta, "precision", "") or "unknown").upper()
    mode = getattr(meta, "mode", None)
    return f"{p} ({mode})" if p == "INT8" and mode else p


class TensorRTBackend:
    """A TensorRT engine: buffers and execution context from :class:`trtq.runtime.TensorRTSession`."""

    name = "tensorrt"

    def __init__(self, path: Path, *, device: int = 0) -> None:
        from trtq.runtime import TensorRTSession

        self.session = TensorRTSession(path, device=device)
        self.precision = engine_precision(self.session.meta)
        lo, _hi = self.session.batch_range
        self.default_batch = lo
        dev = self.session.device
        cc = dev.compute_capability
        self.device_description: dict[str, Any] = {
            "gpu": dev.name,
            "gpu_compute_capability": f"{cc[0]}.{cc[1]}",
        }

    def batch_skip_reason(self, batch: int) -> str | None:
        lo, hi = self.session.batch_range
        if lo <= batch <= hi:
            return None
        if lo == hi:
            return f"static batch {lo} engine; rebuild it with a dynamic batch profile to run batch {batch}"
        return f"outside the engine's optimization profile (batch {lo}..{hi})"

    def prepare(self, batch: int, *, transfers: bool, cuda_graph: bool) -> CudaEventRunner:
        return CudaEventRunner(self.session, batch, transfers=transfers, cuda_graph=cuda_graph)

    def close(self) -> None:
        self.session.close()


def open_backend(path: str | Path, *, device: int = 0, providers: Sequence[str] | None = None) -> Backend:
    """The backend for ``path``: TensorRT for .engine/.plan/.trt, ONNX Runtime for .onnx."""
    p, kind = model_kind(path)
    if kind == "onnx":
        return OnnxRuntimeBackend(p, providers=providers)
    return TensorRTBackend(p, device=device)
