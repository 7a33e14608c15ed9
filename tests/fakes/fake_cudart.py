"""A fake of cuda-python's runtime module (``cuda.bindings.runtime``, or ``cuda.cudart`` before 12.6).

``install(monkeypatch, "12.9")`` makes it importable for the rest of a test. It follows the bindings of that
version where trtq relies on them:

- every call returns a tuple ``(cudaError_t, *results)``; handle types (``cudaStream_t``, ``cudaEvent_t``,
  ``cudaGraph_t``, ``cudaGraphExec_t``) are objects, not ints; each ``int(handle)`` is counted in
  ``INT_CALLS`` (cuda-bindings documents it as deprecated in favour of
  ``cuda.bindings.utils.get_cuda_native_handle``, which exists here from 12.9);
- ``cudaGraphInstantiate`` has the CUDA 11 form ``(graph, bufferSize) -> (err, exec, errorNode, log)`` on
  11.x and the CUDA 12 form ``(graph, flags) -> (err, exec)`` from 12.0; ``cudaGraphInstantiateWithFlags
  (graph, flags) -> (err, exec)`` exists from 11.4; ``cudaGraphLaunch`` takes a ``cudaGraphExec_t`` only;
- device memory is ``fake_device.MEMORY`` (so the fake TensorRT reads and writes it); page-locked host
  memory is real host memory; ``cudaFreeHost`` fills a block with 0xFF bytes (NaN as float32) before it is
  released, so a result read after the free is visibly wrong;
- a stream between ``cudaStreamBeginCapture`` and ``cudaStreamEndCapture`` records the work the fake
  TensorRT enqueues on it (``fake_device.CAPTURING``) instead of running it; ``cudaGraphLaunch`` replays it;
- events read ``fake_device.FakeClock``;
- every failing call sets the runtime's last error, which ``cudaGetLastError`` returns and resets and
  ``cudaPeekAtLastError`` only returns (CUDA runtime API, error handling); ``invalidate_capture(stream)``
  injects a capture failure: the stream's capture is invalidated (as by an operation not permitted while
  capturing, ``cudaErrorStreamCaptureUnsupported``) and ``cudaStreamEndCapture`` then returns
  ``cudaErrorStreamCaptureInvalidated`` and no graph.
"""

from __future__ import annotations

import ctypes
import enum
import sys
import types
from collections.abc import Callable
from typing import Any

import numpy as np

from tests.fakes import fake_device


class cudaError_t(enum.IntEnum):  # noqa: N801 - cuda-python's names
    """The ``cudaError_t`` codes trtq meets (values of the CUDA runtime's ``cudaError_t``, as NVIDIA/cuda-python
    ``cuda_bindings/cuda/bindings/runtime.pyx.in`` exposes them).
    """
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorInvalidResourceHandle = 400
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    """``cudaMemcpyKind`` as in NVIDIA/cuda-python ``cuda_bindings/cuda/bindings/runtime.pyx.in`` (values of the
    CUDA runtime enum).
    """
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class cudaStreamCaptureMode(enum.IntEnum):  # noqa: N801
    """``cudaStreamCaptureMode`` as in NVIDIA/cuda-python ``cuda_bindings/cuda/bindings/runtime.pyx.in`` (values of
    the CUDA runtime enum).
    """
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


def _version(version: str) -> tuple[int, int]:
    major, minor = (int(x) for x in (version.split(".") + ["0"])[:2])
    return major, minor


def make_fake_cudart(version: str = "12.9") -> types.ModuleType:
    """A fresh fake runtime module of cuda-python ``version`` ("11.8", "12.0", "12.9", "13.0", ...)."""
    vt = _version(version)
    name = "cuda.bindings.runtime" if vt >= (12, 6) else "cuda.cudart"
    mod = types.ModuleType(name)
    mod.__version__ = version
    mod.cudaError_t = cudaError_t
    mod.cudaMemcpyKind = cudaMemcpyKind
    mod.cudaStreamCaptureMode = cudaStreamCaptureMode
    ok = cudaError_t.cudaSuccess
    calls: list[tuple[Any, ...]] = []
    counters = {"int": 0}
    pinned: dict[int, np.ndarray] = {}
    freed_pinned: list[np.ndarray] = []  # kept so that a dangling view reads garbage instead of crashing
    mod.CALLS = calls
    mod.PINNED = pinned

    def int_calls() -> int:
        return counters["int"]

    last_error = [ok]
    invalidated: set[int] = set()

    def _fail(code: cudaError_t) -> cudaError_t:
        last_error[0] = code
        return code

    def cudaGetLastError() -> tuple[Any]:  # noqa: N802
        err, last_error[0] = last_error[0], ok
        calls.append(("cudaGetLastError", int(err)))
        return (err,)

    def cudaPeekAtLastError() -> tuple[Any]:  # noqa: N802
        return (last_error[0],)

    def invalidate_capture(stream: Any) -> None:
        """Inject a capture failure on ``stream`` (a handle or its address); see the module docstring."""
        h = handle_of(stream)
        if h in fake_device.CAPTURING:
            invalidated.add(h)
            _fail(cudaError_t.cudaErrorStreamCaptureUnsupported)

    mod.int_calls = int_calls

    class _Handle:
        """A cuda-python handle object: ``init_value`` is the address; ``int()`` is counted."""

        _next = [0x7000]

        def __init__(self, init_value: int = 0) -> None:
            if init_value:
                self._ptr = int(init_value)
            else:
                _Handle._next[0] += 0x10
                self._ptr = _Handle._next[0]

        def __int__(self) -> int:
            counters["int"] += 1
            return self._ptr

        def getPtr(self) -> int:  # noqa: N802
            return self._ptr

        def __eq__(self, other: object) -> bool:
            return type(other) is type(self) and getattr(other, "_ptr", None) == self._ptr

        def __hash__(self) -> int:
            return hash((type(self).__name__, self._ptr))

        def __repr__(self) -> str:
            return f"<{type(self).__name__} {self._ptr:#x}>"

    class cudaStream_t(_Handle):  # noqa: N801
        """Handle type ``cudaStream_t`` (NVIDIA/cuda-python ``cuda_bindings/cuda/bindings/runtime.pyx.in``: an
        object, not an int).
        """

    class cudaEvent_t(_Handle):  # noqa: N801
        """Handle type ``cudaEvent_t`` (NVIDIA/cuda-python ``cuda_bindings/cuda/bindings/runtime.pyx.in``)."""

    class cudaGraph_t(_Handle):  # noqa: N801
        """Handle type ``cudaGraph_t`` (NVIDIA/cuda-python ``cuda_bindings/cuda/bindings/runtime.pyx.in``)."""

    class cudaGraphExec_t(_Handle):  # noqa: N801
        """Handle type ``cudaGraphExec_t`` (NVIDIA/cuda-python ``cuda_bindings/cuda/bindings/runtime.pyx.in``);
        ``cudaGraphLaunch`` takes only this type.
        """

    class cudaGraphNode_t(_Handle):  # noqa: N801
        """Handle type ``cudaGraphNode_t`` (NVIDIA/cuda-python ``cuda_bindings/cuda/bindings/runtime.pyx.in``)."""

    mod.cudaStream_t, mod.cudaEvent_t, mod.cudaGraph_t = cudaStream_t, cudaEvent_t, cudaGraph_t
    mod.cudaGraphExec_t, mod.cudaGraphNode_t = cudaGraphExec_t, cudaGraphNode_t

    def handle_of(obj: Any) -> int:
        return obj.getPtr() if isinstance(obj, _Handle) else int(obj)

    def get_cuda_native_handle(obj: Any) -> int:
        """``cuda.bindings.utils.get_cuda_native_handle``: handle objects only (an int is a TypeError)."""
        if not isinstance(obj, _Handle):
            raise TypeError("Unknown type: " + str(type(obj)))
        return obj.getPtr()

    mod.handle_of = handle_of
    mod.get_cuda_native_handle = get_cuda_native_handle
    mod.invalidate_capture = invalidate_capture

    # ------------------------------------------------------------------------------------------ device
    def cudaGetDeviceCount() -> tuple[Any, int]:  # noqa: N802
        return ok, 1

    def cudaSetDevice(index: int) -> tuple[Any]:  # noqa: N802
        return (ok,)

    def cudaGetDeviceProperties(index: int) -> tuple[Any, Any]:  # noqa: N802
        return ok, types.SimpleNamespace(name=b"Fake Orin\x00\x00", major=8, minor=7, integrated=1)

    def cudaDeviceSynchronize() -> tuple[Any]:  # noqa: N802
        calls.append(("cudaDeviceSynchronize",))
        return (ok,)

    # ------------------------------------------------------------------------------------------ memory
    def cudaMalloc(nbytes: int) -> tuple[Any, int]:  # noqa: N802
        ptr = next(fake_device._NEXT) * 0x100000
        fake_device.MEMORY[ptr] = np.zeros(max(int(nbytes), 1), dtype=np.uint8)
        calls.append(("cudaMalloc", int(nbytes), ptr))
        return ok, ptr

    def cudaFree(ptr: int) -> tuple[Any]:  # noqa: N802
        calls.append(("cudaFree", int(ptr)))
        if fake_device.MEMORY.pop(int(ptr), None) is None:
            return (cudaError_t.cudaErrorInvalidValue,)
        return (ok,)

    def cudaMallocHost(nbytes: int) -> tuple[Any, int]:  # noqa: N802
        block = np.zeros(max(int(nbytes), 1), dtype=np.uint8)
        ptr = int(block.ctypes.data)
        pinned[ptr] = block
        calls.append(("cudaMallocHost", int(nbytes), ptr))
        return ok, ptr

    def cudaFreeHost(ptr: int) -> tuple[Any]:  # noqa: N802
        calls.append(("cudaFreeHost", int(ptr)))
        block = pinned.pop(int(ptr), None)
        if block is None:
            return (cudaError_t.cudaErrorInvalidValue,)
        block[...] = 0xFF  # what a reader of freed page-locked memory may see: here, NaNs
        freed_pinned.append(block)
        return (ok,)

    def _copy(dst: int, src: int, nbytes: int, kind: Any) -> None:
        if int(kind) == cudaMemcpyKind.cudaMemcpyHostToDevice:
            data = np.frombuffer(ctypes.string_at(int(src), int(nbytes)), dtype=np.uint8)
            fake_device.write_device(int(dst), data)
        elif int(kind) == cudaMemcpyKind.cudaMemcpyDeviceToHost:
            data = fake_device.read_device(int(src), int(nbytes), np.uint8)
            ctypes.memmove(int(dst), data.ctypes.data, int(nbytes))
        else:
            raise NotImplementedError(f"fake cudart: memcpy kind {kind}")

    def cudaMemcpy(dst: int, src: int, nbytes: int, kind: Any) -> tuple[Any]:  # noqa: N802
        calls.append(("cudaMemcpy", int(kind), int(nbytes)))
        _copy(dst, src, nbytes, kind)
        return (ok,)

    def cudaMemcpyAsync(dst: int, src: int, nbytes: int, kind: Any, stream: Any) -> tuple[Any]:  # noqa: N802
        if not isinstance(stream, (cudaStream_t, int)):
            raise TypeError(f"Argument 'stream' is not instance of type cudaStream_t: {stream!r}")
        calls.append(("cudaMemcpyAsync", int(kind), int(nbytes), handle_of(stream)))
        ops = fake_device.CAPTURING.get(handle_of(stream))
        if ops is not None:
            ops.append(lambda: _copy(dst, src, nbytes, kind))
        else:
            _copy(dst, src, nbytes, kind)
        return (ok,)

    # ------------------------------------------------------------------------------------------ streams
    live_streams: set[int] = set()

    def cudaStreamCreate() -> tuple[Any, Any]:  # noqa: N802
        stream = cudaStream_t()
        live_streams.add(stream.getPtr())
        calls.append(("cudaStreamCreate", stream.getPtr()))
        return ok, stream

    def cudaStreamSynchronize(stream: Any) -> tuple[Any]:  # noqa: N802
        calls.append(("cudaStreamSynchronize", handle_of(stream)))
        return (ok,)

    def cudaStreamDestroy(stream: Any) -> tuple[Any]:  # noqa: N802
        calls.append(("cudaStreamDestroy", handle_of(stream)))
        live_streams.discard(handle_of(stream))
        return (ok,)

    def cudaStreamBeginCapture(stream: Any, mode: Any) -> tuple[Any]:  # noqa: N802
        h = handle_of(stream)
        calls.append(("cudaStreamBeginCapture", h, int(mode)))
        if h not in live_streams or h in fake_device.CAPTURING:
            return (cudaError_t.cudaErrorInvalidValue,)  # the legacy default stream cannot be captured
        fake_device.CAPTURING[h] = []
        return (ok,)

    graphs: dict[int, list[Callable[[], None]]] = {}
    execs: dict[int, list[Callable[[], None]]] = {}

    def cudaStreamEndCapture(stream: Any) -> tuple[Any, Any]:  # noqa: N802
        h = handle_of(stream)
        ops = fake_device.CAPTURING.pop(h, None)
        calls.append(("cudaStreamEndCapture", h, None if ops is None else len(ops)))
        if ops is None or h in invalidated:
            invalidated.discard(h)
            return _fail(cudaError_t.cudaErrorStreamCaptureInvalidated), None
        graph = cudaGraph_t()
        graphs[graph.getPtr()] = ops
        return ok, graph

    # ------------------------------------------------------------------------------------------ graphs
    def _instantiate(graph: Any) -> Any:
        if not isinstance(graph, cudaGraph_t) or graph.getPtr() not in graphs:
            raise TypeError(f"Argument 'graph' is not instance of type cudaGraph_t: {graph!r}")
        exe = cudaGraphExec_t()
        execs[exe.getPtr()] = list(graphs[graph.getPtr()])
        return exe

    if vt >= (12, 0):

        def cudaGraphInstantiate(graph: Any, flags: int = 0) -> tuple[Any, Any]:  # noqa: N802
            calls.append(("cudaGraphInstantiate", int(flags)))
            return ok, _instantiate(graph)

    else:

        def cudaGraphInstantiate(graph: Any, bufferSize: int) -> tuple[Any, Any, Any, bytes]:  # noqa: N802, N803
            # CUDA 11: cudaGraphInstantiate(pGraphExec, graph, pErrorNode, pLogBuffer, bufferSize)
            calls.append(("cudaGraphInstantiate", int(bufferSize)))
            return ok, _instantiate(graph), cudaGraphNode_t(), b""

    mod.cudaGraphInstantiate = cudaGraphInstantiate
    if vt >= (11, 4):

        def cudaGraphInstantiateWithFlags(graph: Any, flags: int) -> tuple[Any, Any]:  # noqa: N802
            calls.append(("cudaGraphInstantiateWithFlags", int(flags)))
            return ok, _instantiate(graph)

        mod.cudaGraphInstantiateWithFlags = cudaGraphInstantiateWithFlags

    def cudaGraphLaunch(graph_exec: Any, stream: Any) -> tuple[Any]:  # noqa: N802
        if not isinstance(graph_exec, cudaGraphExec_t):
            raise TypeError(f"Argument 'graphExec' is not instance of type cudaGraphExec_t: {graph_exec!r}")
        if graph_exec.getPtr() not in execs:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        calls.append(("cudaGraphLaunch", graph_exec.getPtr(), handle_of(stream)))
        for op in execs[graph_exec.getPtr()]:
            op()
        return (ok,)

    def cudaGraphExecDestroy(graph_exec: Any) -> tuple[Any]:  # noqa: N802
        calls.append(("cudaGraphExecDestroy", handle_of(graph_exec)))
        execs.pop(handle_of(graph_exec), None)
        return (ok,)

    def cudaGraphDestroy(graph: Any) -> tuple[Any]:  # noqa: N802
        calls.append(("cudaGraphDestroy", handle_of(graph)))
        graphs.pop(handle_of(graph), None)
        return (ok,)

    # ------------------------------------------------------------------------------------------ events
    times: dict[int, float] = {}

    def cudaEventCreate() -> tuple[Any, Any]:  # noqa: N802
        return ok, cudaEvent_t()

    def cudaEventRecord(event: Any, stream: Any) -> tuple[Any]:  # noqa: N802
        times[handle_of(event)] = fake_device.FakeClock.now_ms
        calls.append(("cudaEventRecord", handle_of(event), handle_of(stream)))
        return (ok,)

    def cudaEventSynchronize(event: Any) -> tuple[Any]:  # noqa: N802
        return (ok,)

    def cudaEventElapsedTime(start: Any, end: Any) -> tuple[Any, float]:  # noqa: N802
        a, b = times.get(handle_of(start)), times.get(handle_of(end))
        if a is None or b is None:
            return cudaError_t.cudaErrorInvalidResourceHandle, 0.0
        return ok, float(b - a)

    def cudaEventDestroy(event: Any) -> tuple[Any]:  # noqa: N802
        times.pop(handle_of(event), None)
        return (ok,)

    for fn in (cudaGetLastError, cudaPeekAtLastError, cudaGetDeviceCount, cudaSetDevice, cudaGetDeviceProperties, cudaDeviceSynchronize, cudaMalloc,
               cudaFree, cudaMallocHost, cudaFreeHost, cudaMemcpy, cudaMemcpyAsync, cudaStreamCreate,
               cudaStreamSynchronize, cudaStreamDestroy, cudaStreamBeginCapture, cudaStreamEndCapture,
               cudaGraphLaunch, cudaGraphExecDestroy, cudaGraphDestroy, cudaEventCreate, cudaEventRecord,
               cudaEventSynchronize, cudaEventElapsedTime, cudaEventDestroy):
        setattr(mod, fn.__name__, fn)
    return mod


def install(monkeypatch: Any, version: str = "12.9", *, hide_pycuda: bool = True) -> types.ModuleType:
    """Make the fake importable where cuda-python ``version`` puts its runtime module; hide pycuda."""
    rt = make_fake_cudart(version)
    vt = _version(version)
    cuda_pkg = types.ModuleType("cuda")
    cuda_pkg.__path__ = []  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cuda", cuda_pkg)
    if vt >= (12, 6):
        bindings = types.ModuleType("cuda.bindings")
        bindings.__path__ = []  # type: ignore[attr-defined]
        bindings.runtime = rt  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", rt)
        monkeypatch.setitem(sys.modules, "cuda.cudart", None)
        if vt >= (12, 9):
            utils = types.ModuleType("cuda.bindings.utils")
            utils.get_cuda_native_handle = rt.get_cuda_native_handle  # type: ignore[attr-defined]
            bindings.utils = utils  # type: ignore[attr-defined]
            monkeypatch.setitem(sys.modules, "cuda.bindings.utils", utils)
        else:
            monkeypatch.setitem(sys.modules, "cuda.bindings.utils", None)
    else:
        cuda_pkg.cudart = rt  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "cuda.bindings", None)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
        monkeypatch.setitem(sys.modules, "cuda.bindings.utils", None)
        monkeypatch.setitem(sys.modules, "cuda.cudart", rt)
    if hide_pycuda:
        monkeypatch.setitem(sys.modules, "pycuda", None)
        monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    return rt


__all__ = ["install", "make_fake_cudart"]
