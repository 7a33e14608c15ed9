"""A tiny, typed interface to CUDA device memory, streams and events.

Calibrators, the runtime and the benchmark need only a handful of operations: allocate device memory,
page-locked host arrays, host<->device copies, streams and timing events. They are reached through the
:class:`Device` protocol below, implemented with pycuda (the default) or cuda-python
(``cuda.bindings.runtime``), both imported lazily. Tests use ``tests/fakes/fake_device.py``.

pycuda ships no type stubs, so its small surface is described here by hand (``_PycudaDriver``) and the
module is cast to it.
"""

from __future__ import annotations

import importlib
import logging
from types import TracebackType
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np

from trtq.errors import MissingDependencyError, TrtqError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "pycuda", "cuda-python")


# ----------------------------------------------------------------------------------------------------------
# The interface
# ----------------------------------------------------------------------------------------------------------
@runtime_checkable
class DeviceBuffer(Protocol):
    @property
    def ptr(self) -> int: ...

    @property
    def nbytes(self) -> int: ...

    def free(self) -> None: ...


@runtime_checkable
class Stream(Protocol):
    @property
    def handle(self) -> int: ...

    def synchronize(self) -> None: ...


@runtime_checkable
class Event(Protocol):
    def record(self, stream: Stream | None = None) -> None: ...

    def synchronize(self) -> None: ...

    def elapsed_ms(self, end: Event) -> float:
        """Milliseconds of GPU time from this event to ``end`` (both recorded and reached)."""
        ...


@runtime_checkable
class Device(Protocol):
    name: str
    compute_capability: tuple[int, int]

    def alloc(self, nbytes: int) -> DeviceBuffer: ...

    def pinned_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray: ...

    def htod(self, dst: DeviceBuffer, src: np.ndarray, stream: Stream | None = None) -> None: ...

    def dtoh(self, dst: np.ndarray, src: DeviceBuffer, stream: Stream | None = None) -> None: ...

    def stream(self) -> Stream: ...

    def event(self) -> Event: ...

    def synchronize(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Device: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


# ----------------------------------------------------------------------------------------------------------
# pycuda (typed by hand: it has no stubs)
# ----------------------------------------------------------------------------------------------------------
class _PycudaAllocation(Protocol):
    def free(self) -> None: ...

    def __int__(self) -> int: ...


class _PycudaStream(Protocol):
    handle: int

    def synchronize(self) -> None: ...


class _PycudaEvent(Protocol):
    def record(self, stream: _PycudaStream | None = None) -> _PycudaEvent: ...

    def synchronize(self) -> _PycudaEvent: ...

    def time_till(self, end: _PycudaEvent) -> float: ...


class _PycudaContext(Protocol):
    def push(self) -> None: ...

    def pop(self) -> None: ...

    def synchronize(self) -> None: ...


class _PycudaDevice(Protocol):
    def name(self) -> str: ...

    def compute_capability(self) -> tuple[int, int]: ...

    def retain_primary_context(self) -> _PycudaContext: ...


class _PycudaDriver(Protocol):
    def init(self) -> None: ...

    def Device(self, index: int) -> _PycudaDevice: ...  # noqa: N802 - pycuda's name

    def mem_alloc(self, nbytes: int) -> _PycudaAllocation: ...

    def pagelocked_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray: ...

    def memcpy_htod(self, dst: _PycudaAllocation, src: np.ndarray) -> None: ...

    def memcpy_dtoh(self, dst: np.ndarray, src: _PycudaAllocation) -> None: ...

    def memcpy_htod_async(self, dst: _PycudaAllocation, src: np.ndarray, stream: _PycudaStream) -> None: ...

    def memcpy_dtoh_async(self, dst: np.ndarray, src: _PycudaAllocation, stream: _PycudaStream) -> None: ...

    def Stream(self) -> _PycudaStream: ...  # noqa: N802

    def Event(self) -> _PycudaEvent: ...  # noqa: N802

    class Context:
        @staticmethod
        def synchronize() -> None: ...


class _PycudaBuffer:
    def __init__(self, alloc: _PycudaAllocation, nbytes: int) -> None:
        self._alloc: _PycudaAllocation | None = alloc
        self._ptr = int(alloc)
        self._nbytes = nbytes

    @property
    def ptr(self) -> int:
        return self._ptr

    @property
    def nbytes(self) -> int:
        return self._nbytes

    @property
    def allocation(self) -> _PycudaAllocation:
        if self._alloc is None:
            raise TrtqError("device buffer used after free()")
        return self._alloc

    def free(self) -> None:
        if self._alloc is not None:
            self._alloc.free()
            self._alloc = None


class _PycudaStreamWrap:
    def __init__(self, stream: _PycudaStream) -> None:
        self.raw = stream

    @property
    def handle(self) -> int:
        return int(self.raw.handle)

    def synchronize(self) -> None:
        self.raw.synchronize()


class _PycudaEventWrap:
    def __init__(self, event: _PycudaEvent) -> None:
        self.raw = event

    def record(self, stream: Stream | None = None) -> None:
        self.raw.record(stream.raw if isinstance(stream, _PycudaStreamWrap) else None)

    def synchronize(self) -> None:
        self.raw.synchronize()

    def elapsed_ms(self, end: Event) -> float:
        if not isinstance(end, _PycudaEventWrap):
            raise TypeError("elapsed_ms needs an event of the same device")
        end.raw.synchronize()
        return float(self.raw.time_till(end.raw))


class PycudaDevice:
    """pycuda on the device's primary context (the one TensorRT and the CUDA runtime use)."""

    backend = "pycuda"

    def __init__(self, index: int = 0) -> None:
        try:
            module = importlib.import_module("pycuda.driver")
        except ImportError as exc:
            raise MissingDependencyError(f"pycuda is not installed ({exc}); pip install pycuda") from None
        self._cuda = cast(_PycudaDriver, module)
        try:
            self._cuda.init()
            dev = self._cuda.Device(index)
            self._ctx: _PycudaContext | None = dev.retain_primary_context()
            self._ctx.push()
        except Exception as exc:
            raise MissingDependencyError(f"no usable CUDA device {index} ({type(exc).__name__}: {exc})") from None
        self.name = str(dev.name())
        cc = dev.compute_capability()
        self.compute_capability = (int(cc[0]), int(cc[1]))
        self._buffers: list[_PycudaBuffer] = []

    def alloc(self, nbytes: int) -> DeviceBuffer:
        buf = _PycudaBuffer(self._cuda.mem_alloc(max(int(nbytes), 1)), int(nbytes))
        self._buffers.append(buf)
        return buf

    def pinned_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return self._cuda.pagelocked_empty(tuple(int(s) for s in shape), np.dtype(dtype))

    def htod(self, dst: DeviceBuffer, src: np.ndarray, stream: Stream | None = None) -> None:
        alloc = _require_pycuda_buffer(dst).allocation
        src = np.ascontiguousarray(src)
        if isinstance(stream, _PycudaStreamWrap):
            self._cuda.memcpy_htod_async(alloc, src, stream.raw)
        else:
            self._cuda.memcpy_htod(alloc, src)

    def dtoh(self, dst: np.ndarray, src: DeviceBuffer, stream: Stream | None = None) -> None:
        alloc = _require_pycuda_buffer(src).allocation
        if isinstance(stream, _PycudaStreamWrap):
            self._cuda.memcpy_dtoh_async(dst, alloc, stream.raw)
        else:
            self._cuda.memcpy_dtoh(dst, alloc)

    def stream(self) -> Stream:
        return _PycudaStreamWrap(self._cuda.Stream())

    def event(self) -> Event:
        return _PycudaEventWrap(self._cuda.Event())

    def synchronize(self) -> None:
        self._cuda.Context.synchronize()

    def close(self) -> None:
        for buf in self._buffers:
            buf.free()
        self._buffers.clear()
        if self._ctx is not None:
            self._ctx.pop()  # exactly one pop per push
            self._ctx = None

    def __enter__(self) -> PycudaDevice:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _require_pycuda_buffer(buf: DeviceBuffer) -> _PycudaBuffer:
    if not isinstance(buf, _PycudaBuffer):
        raise TypeError("buffer was not allocated by this pycuda device")
    return buf


# ----------------------------------------------------------------------------------------------------------
# cuda-python (cuda.bindings.runtime): every call returns (err, *results)
# ----------------------------------------------------------------------------------------------------------
def _cudart() -> Any:
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise MissingDependencyError("cuda-python is not installed; pip install cuda-python (or pycuda)")


def _check(result: Any) -> Any:
    """Unpack ``(err, *values)``; raise on a CUDA error."""
    if isinstance(result, tuple):
        err, *values = result
    else:
        err, values = result, []
    code = int(getattr(err, "value", err))
    if code != 0:
        raise RuntimeError(f"CUDA error {code} ({getattr(err, 'name', err)})")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


class _CudaPythonBuffer:
    def __init__(self, rt: Any, ptr: int, nbytes: int) -> None:
        self._rt = rt
        self._ptr = int(ptr)
        self._nbytes = int(nbytes)
        self._live = True

    @property
    def ptr(self) -> int:
        return self._ptr

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def free(self) -> None:
        if self._live:
            _check(self._rt.cudaFree(self._ptr))
            self._live = False


class _CudaPythonStream:
    def __init__(self, rt: Any) -> None:
        self._rt = rt
        self.raw: Any = _check(rt.cudaStreamCreate())

    @property
    def handle(self) -> int:
        return int(self.raw)

    def synchronize(self) -> None:
        _check(self._rt.cudaStreamSynchronize(self.raw))


class _CudaPythonEvent:
    def __init__(self, rt: Any) -> None:
        self._rt = rt
        self.raw: Any = _check(rt.cudaEventCreate())

    def record(self, stream: Stream | None = None) -> None:
        raw = stream.raw if isinstance(stream, _CudaPythonStream) else 0
        _check(self._rt.cudaEventRecord(self.raw, raw))

    def synchronize(self) -> None:
        _check(self._rt.cudaEventSynchronize(self.raw))

    def elapsed_ms(self, end: Event) -> float:
        if not isinstance(end, _CudaPythonEvent):
            raise TypeError("elapsed_ms needs an event of the same device")
        end.synchronize()
        return float(_check(self._rt.cudaEventElapsedTime(self.raw, end.raw)))


class CudaPythonDevice:
    """cuda-python runtime API on the primary context (no push/pop needed)."""

    backend = "cuda-python"

    def __init__(self, index: int = 0) -> None:
        self._rt = _cudart()
        try:
            count = int(_check(self._rt.cudaGetDeviceCount()))
            if count <= index:
                raise RuntimeError(f"{count} CUDA device(s) visible")
            _check(self._rt.cudaSetDevice(index))
            props = _check(self._rt.cudaGetDeviceProperties(index))
        except MissingDependencyError:
            raise
        except Exception as exc:
            raise MissingDependencyError(f"no usable CUDA device {index} ({type(exc).__name__}: {exc})") from None
        raw_name = getattr(props, "name", b"")
        self.name = raw_name.decode(errors="replace").rstrip("\x00") if isinstance(raw_name, bytes) else str(raw_name)
        self.compute_capability = (int(props.major), int(props.minor))
        self._buffers: list[_CudaPythonBuffer] = []
        self._pinned: list[int] = []

    def alloc(self, nbytes: int) -> DeviceBuffer:
        ptr = _check(self._rt.cudaMalloc(max(int(nbytes), 1)))
        buf = _CudaPythonBuffer(self._rt, int(ptr), int(nbytes))
        self._buffers.append(buf)
        return buf

    def pinned_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        nbytes = max(count * dt.itemsize, 1)
        ptr = int(_check(self._rt.cudaMallocHost(nbytes)))
        self._pinned.append(ptr)
        import ctypes

        raw = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr))
        return raw[: count * dt.itemsize].view(dt).reshape(shape)

    def _copy(self, dst: int, src: int, nbytes: int, kind: Any, stream: Stream | None) -> None:
        if isinstance(stream, _CudaPythonStream):
            _check(self._rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream.raw))
        else:
            _check(self._rt.cudaMemcpy(dst, src, nbytes, kind))

    def htod(self, dst: DeviceBuffer, src: np.ndarray, stream: Stream | None = None) -> None:
        src = np.ascontiguousarray(src)
        if src.nbytes > dst.nbytes:
            raise ValueError(f"copy of {src.nbytes} bytes into a device buffer of {dst.nbytes}")
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._copy(dst.ptr, int(src.ctypes.data), src.nbytes, kind, stream)

    def dtoh(self, dst: np.ndarray, src: DeviceBuffer, stream: Stream | None = None) -> None:
        if not dst.flags["C_CONTIGUOUS"]:
            raise ValueError("dtoh needs a C-contiguous destination array")
        nbytes = min(dst.nbytes, src.nbytes)
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._copy(int(dst.ctypes.data), src.ptr, nbytes, kind, stream)

    def stream(self) -> Stream:
        return _CudaPythonStream(self._rt)

    def event(self) -> Event:
        return _CudaPythonEvent(self._rt)

    def synchronize(self) -> None:
        _check(self._rt.cudaDeviceSynchronize())

    def close(self) -> None:
        for buf in self._buffers:
            buf.free()
        self._buffers.clear()
        for ptr in self._pinned:
            _check(self._rt.cudaFreeHost(ptr))
        self._pinned.clear()

    def __enter__(self) -> CudaPythonDevice:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def get_device(backend: str = "auto", index: int = 0) -> Device:
    """Open CUDA device ``index`` through pycuda (default) or cuda-python.

    ``auto`` tries pycuda, then cuda-python. Raises :class:`MissingDependencyError` (exit code 3) when
    neither is installed or no GPU is visible, naming what was tried.
    """
    if backend not in BACKENDS:
        raise TrtqError(f"unknown device backend {backend!r}; use one of {', '.join(BACKENDS)}")
    order = ["pycuda", "cuda-python"] if backend == "auto" else [backend]
    reasons: list[str] = []
    for name in order:
        try:
            return PycudaDevice(index) if name == "pycuda" else CudaPythonDevice(index)
        except MissingDependencyError as exc:
            reasons.append(f"{name}: {exc}")
    raise MissingDependencyError("no CUDA device available: " + "; ".join(reasons))
