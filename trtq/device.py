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
import weakref
from types import TracebackType
from typing import Any, Protocol, TypeVar, cast, runtime_checkable

import numpy as np

from trtq.errors import MissingDependencyError, TrtqError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "pycuda", "cuda-python")

_D = TypeVar("_D", bound="_BufferedDevice")


#: Compute capabilities that only Jetson / DRIVE system-on-chip GPUs have (Tegra X1 5.3, TX2 6.2, Xavier 7.2,
#: Orin 8.7, Thor 10.1 under CUDA 12.x and 11.0 under CUDA 13): used when a device does not say whether it is
#: integrated.
INTEGRATED_COMPUTE_CAPABILITIES = frozenset({(5, 3), (6, 2), (7, 2), (8, 7), (10, 1), (11, 0)})


def is_integrated(device: object) -> bool:
    """Whether ``device`` is an integrated (Jetson / DRIVE) GPU sharing memory with the CPU.

    Read from the device's ``integrated`` attribute (CUDA's ``cudaDeviceProp.integrated`` /
    ``CU_DEVICE_ATTRIBUTE_INTEGRATED``) where it has one, else from the compute capability.
    """
    flag = getattr(device, "integrated", None)
    if flag is not None:
        return bool(flag)
    cc = getattr(device, "compute_capability", None)
    return cc is not None and (int(cc[0]), int(cc[1])) in INTEGRATED_COMPUTE_CAPABILITIES


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


class _Buffer:
    """A device allocation of ``nbytes`` at ``ptr``; :meth:`free` releases it once."""

    def __init__(self, ptr: int, nbytes: int) -> None:
        self._ptr = int(ptr)
        self._nbytes = int(nbytes)
        self._live = True

    @property
    def ptr(self) -> int:
        return self._ptr

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def _release(self) -> None:
        raise NotImplementedError

    def free(self) -> None:
        if self._live:
            self._release()
            self._live = False


class _BufferedDevice:
    """What both CUDA bindings share: buffer bookkeeping, checked copies, ``close`` and the context manager.

    Subclasses allocate (``_alloc``), copy (``_htod``, ``_dtoh``) and release their own resources
    (``_close_backend``, after every buffer is freed).
    """

    name: str
    compute_capability: tuple[int, int]
    integrated: bool | None = None  # CUDA's "integrated" device attribute (Jetson / DRIVE), None if unknown

    def __init__(self) -> None:
        self._buffers: list[_Buffer] = []

    def _alloc(self, nbytes: int) -> _Buffer:
        raise NotImplementedError

    def _htod(self, dst: _Buffer, src: np.ndarray, stream: Stream | None) -> None:
        raise NotImplementedError

    def _dtoh(self, dst: np.ndarray, src: _Buffer, stream: Stream | None) -> None:
        raise NotImplementedError

    def _close_backend(self) -> None:
        return None

    def _own(self, buf: DeviceBuffer) -> _Buffer:
        if not isinstance(buf, _Buffer) or buf not in self._buffers:
            raise TypeError("buffer was not allocated by this device")
        if not buf._live:
            raise TrtqError("device buffer used after free()")
        return buf

    def alloc(self, nbytes: int) -> DeviceBuffer:
        buf = self._alloc(int(nbytes))
        self._buffers.append(buf)
        return buf

    def htod(self, dst: DeviceBuffer, src: np.ndarray, stream: Stream | None = None) -> None:
        """Copy ``src`` to the start of ``dst``; it must fit (the bindings copy without a bounds check)."""
        buf = self._own(dst)
        src = np.ascontiguousarray(src)
        if src.nbytes > buf.nbytes:
            raise ValueError(f"copy of {src.nbytes} bytes into a device buffer of {buf.nbytes}")
        self._htod(buf, src, stream)

    def dtoh(self, dst: np.ndarray, src: DeviceBuffer, stream: Stream | None = None) -> None:
        """Fill ``dst`` (C-contiguous, at most ``src.nbytes``) from the start of ``src``."""
        buf = self._own(src)
        if not dst.flags["C_CONTIGUOUS"]:
            raise ValueError("dtoh needs a C-contiguous destination array")
        if dst.nbytes > buf.nbytes:
            raise ValueError(f"copy of {dst.nbytes} bytes out of a device buffer of {buf.nbytes}")
        self._dtoh(dst, buf, stream)

    def close(self) -> None:
        try:
            for buf in self._buffers:
                buf.free()
        finally:  # the backend is released even when a free fails (pycuda: one pop per push)
            self._buffers.clear()
            self._close_backend()

    def __enter__(self: _D) -> _D:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _PycudaBuffer(_Buffer):
    def __init__(self, alloc: _PycudaAllocation, nbytes: int) -> None:
        super().__init__(int(alloc), nbytes)
        self.allocation = alloc

    def _release(self) -> None:
        self.allocation.free()


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


class PycudaDevice(_BufferedDevice):
    """pycuda on the device's primary context (the one TensorRT and the CUDA runtime use).

    The context is pushed here and popped by :meth:`close`, exactly once, after every buffer is freed; like
    every pycuda context it belongs to the thread that opened the device.
    """

    backend = "pycuda"

    def __init__(self, index: int = 0) -> None:
        super().__init__()
        try:
            module = importlib.import_module("pycuda.driver")
        except ImportError as exc:
            raise MissingDependencyError(f"pycuda is not installed ({exc}); pip install pycuda") from None
        self._cuda = cast(_PycudaDriver, module)
        self._ctx: _PycudaContext | None = None
        try:
            self._cuda.init()
            dev = self._cuda.Device(index)
            ctx = dev.retain_primary_context()
            ctx.push()
            self._ctx = ctx
            self.name = str(dev.name())
            cc = dev.compute_capability()
            self.compute_capability = (int(cc[0]), int(cc[1]))
            self.integrated = _pycuda_integrated(module, dev)
        except Exception as exc:
            self._close_backend()  # a context pushed before the failure is popped again
            raise MissingDependencyError(f"no usable CUDA device {index} ({type(exc).__name__}: {exc})") from None

    def _alloc(self, nbytes: int) -> _Buffer:
        return _PycudaBuffer(self._cuda.mem_alloc(max(nbytes, 1)), nbytes)

    def pinned_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return self._cuda.pagelocked_empty(tuple(int(s) for s in shape), np.dtype(dtype))

    def _htod(self, dst: _Buffer, src: np.ndarray, stream: Stream | None) -> None:
        alloc = cast(_PycudaBuffer, dst).allocation
        if isinstance(stream, _PycudaStreamWrap):
            self._cuda.memcpy_htod_async(alloc, src, stream.raw)
        else:
            self._cuda.memcpy_htod(alloc, src)

    def _dtoh(self, dst: np.ndarray, src: _Buffer, stream: Stream | None) -> None:
        alloc = cast(_PycudaBuffer, src).allocation
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

    def _close_backend(self) -> None:
        if self._ctx is not None:
            self._ctx.pop()  # exactly one pop per push
            self._ctx = None


# ----------------------------------------------------------------------------------------------------------
# cuda-python (cuda.bindings.runtime): every call returns (err, *results)
# ----------------------------------------------------------------------------------------------------------
def _pycuda_integrated(driver: Any, dev: Any) -> bool | None:
    """``CU_DEVICE_ATTRIBUTE_INTEGRATED`` through pycuda (``device_attribute.INTEGRATED``), None if unreadable."""
    attr = getattr(getattr(driver, "device_attribute", None), "INTEGRATED", None)
    if attr is None:
        return None
    try:
        return bool(dev.get_attribute(attr))
    except Exception as exc:  # an old pycuda or driver without the attribute
        log.debug("CU_DEVICE_ATTRIBUTE_INTEGRATED not readable: %s", exc)
        return None


def load_cudart(purpose: str = "the cuda-python device backend") -> Any:
    """The cuda-python runtime module (``cuda.bindings.runtime``, or the older ``cuda.cudart``).

    Raises :class:`MissingDependencyError` naming ``purpose`` when cuda-python is not installed.
    """
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise MissingDependencyError(f"{purpose} needs cuda-python, which is not installed; pip install cuda-python")


def native_handle(obj: Any) -> int:
    """The address behind a cuda-python handle object (``cudaStream_t``, ``cudaEvent_t``, ...) as an int.

    cuda-bindings deprecates ``int(obj)`` for this in favour of ``cuda.bindings.utils.get_cuda_native_handle``
    (12.9 and later); older bindings (JetPack 5's cuda-python 11.x) only have ``int()``. Plain ints pass through.
    """
    if isinstance(obj, int):
        return obj
    try:
        utils = importlib.import_module("cuda.bindings.utils")
    except ImportError:
        utils = None
    getter = getattr(utils, "get_cuda_native_handle", None)
    if getter is not None:
        return int(getter(obj))
    return int(obj)


def cuda_check(result: Any, what: str = "CUDA call") -> Any:
    """Unpack a cuda-python ``(err, *values)`` result: None, the one value or a tuple; raise on a CUDA error."""
    if isinstance(result, tuple):
        err, *values = result
    else:
        err, values = result, []
    code = int(getattr(err, "value", err))
    if code != 0:
        raise RuntimeError(f"{what} failed: CUDA error {code} ({getattr(err, 'name', err)})")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


class _CudaPythonBuffer(_Buffer):
    def __init__(self, rt: Any, ptr: int, nbytes: int) -> None:
        super().__init__(ptr, nbytes)
        self._rt = rt

    def _release(self) -> None:
        cuda_check(self._rt.cudaFree(self._ptr), "cudaFree")


class _CudaPythonStream:
    def __init__(self, rt: Any) -> None:
        self._rt = rt
        self.raw: Any = cuda_check(rt.cudaStreamCreate(), "cudaStreamCreate")
        self._handle = native_handle(self.raw)

    @property
    def handle(self) -> int:
        return self._handle

    def synchronize(self) -> None:
        cuda_check(self._rt.cudaStreamSynchronize(self.raw), "cudaStreamSynchronize")


class _CudaPythonEvent:
    def __init__(self, rt: Any) -> None:
        self._rt = rt
        self.raw: Any = cuda_check(rt.cudaEventCreate(), "cudaEventCreate")

    def record(self, stream: Stream | None = None) -> None:
        raw = stream.raw if isinstance(stream, _CudaPythonStream) else 0
        cuda_check(self._rt.cudaEventRecord(self.raw, raw), "cudaEventRecord")

    def synchronize(self) -> None:
        cuda_check(self._rt.cudaEventSynchronize(self.raw), "cudaEventSynchronize")

    def elapsed_ms(self, end: Event) -> float:
        if not isinstance(end, _CudaPythonEvent):
            raise TypeError("elapsed_ms needs an event of the same device")
        end.synchronize()
        return float(cuda_check(self._rt.cudaEventElapsedTime(self.raw, end.raw), "cudaEventElapsedTime"))


def _free_host(rt: Any, ptr: int) -> None:
    try:
        cuda_check(rt.cudaFreeHost(ptr), "cudaFreeHost")
    except Exception as exc:  # a finalizer must not raise (e.g. CUDA already torn down at interpreter exit)
        log.debug("cudaFreeHost(%#x) failed: %s", ptr, exc)


class _PinnedHost:
    """``nbytes`` of page-locked host memory (``cudaMallocHost``), seen by numpy as a uint8 array.

    Every array made from it keeps this object alive (numpy's ``base`` chain), and ``cudaFreeHost`` runs when
    the last of them is gone, so an array returned to a caller stays valid after the device is closed.
    """

    def __init__(self, rt: Any, nbytes: int) -> None:
        self.ptr = int(cuda_check(rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        self.nbytes = nbytes
        self.__array_interface__ = {"data": (self.ptr, False), "shape": (nbytes,), "typestr": "|u1", "version": 3}
        self._finalizer = weakref.finalize(self, _free_host, rt, self.ptr)


class CudaPythonDevice(_BufferedDevice):
    """cuda-python runtime API on the primary context (no push/pop needed).

    Page-locked host arrays (:meth:`pinned_empty`) own their memory: it is released when the last array
    viewing it is garbage collected, not by :meth:`close`, so results read from them outlive the device.
    """

    backend = "cuda-python"

    def __init__(self, index: int = 0) -> None:
        super().__init__()
        self._rt = load_cudart()
        try:
            count = int(cuda_check(self._rt.cudaGetDeviceCount(), "cudaGetDeviceCount"))
            if count <= index:
                raise RuntimeError(f"{count} CUDA device(s) visible")
            cuda_check(self._rt.cudaSetDevice(index), "cudaSetDevice")
            props = cuda_check(self._rt.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
        except Exception as exc:
            raise MissingDependencyError(f"no usable CUDA device {index} ({type(exc).__name__}: {exc})") from None
        raw_name = getattr(props, "name", b"")
        self.name = raw_name.decode(errors="replace").rstrip("\x00") if isinstance(raw_name, bytes) else str(raw_name)
        self.compute_capability = (int(props.major), int(props.minor))
        flag = getattr(props, "integrated", None)  # cudaDeviceProp.integrated: 1 on Jetson / DRIVE
        self.integrated = None if flag is None else bool(int(flag))
        self._streams: list[_CudaPythonStream] = []
        self._events: list[_CudaPythonEvent] = []

    def _alloc(self, nbytes: int) -> _Buffer:
        ptr = cuda_check(self._rt.cudaMalloc(max(nbytes, 1)), "cudaMalloc")
        return _CudaPythonBuffer(self._rt, int(ptr), nbytes)

    def pinned_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        nbytes = max(count * dt.itemsize, 1)
        raw = np.asarray(_PinnedHost(self._rt, nbytes))  # raw.base is the owner: freed with the last view
        return raw[: count * dt.itemsize].view(dt).reshape(shape)

    def _copy(self, dst: int, src: int, nbytes: int, kind: Any, stream: Stream | None) -> None:
        if isinstance(stream, _CudaPythonStream):
            cuda_check(self._rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream.raw), "cudaMemcpyAsync")
        else:
            cuda_check(self._rt.cudaMemcpy(dst, src, nbytes, kind), "cudaMemcpy")

    def _htod(self, dst: _Buffer, src: np.ndarray, stream: Stream | None) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._copy(dst.ptr, int(src.ctypes.data), src.nbytes, kind, stream)

    def _dtoh(self, dst: np.ndarray, src: _Buffer, stream: Stream | None) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._copy(int(dst.ctypes.data), src.ptr, dst.nbytes, kind, stream)

    def stream(self) -> Stream:
        stream = _CudaPythonStream(self._rt)
        self._streams.append(stream)
        return stream

    def event(self) -> Event:
        event = _CudaPythonEvent(self._rt)
        self._events.append(event)
        return event

    def synchronize(self) -> None:
        cuda_check(self._rt.cudaDeviceSynchronize(), "cudaDeviceSynchronize")

    def _close_backend(self) -> None:
        # unlike pycuda's objects, cuda-python handles are not released when they are garbage collected
        for event in self._events:
            cuda_check(self._rt.cudaEventDestroy(event.raw), "cudaEventDestroy")
        self._events.clear()
        for stream in self._streams:
            cuda_check(self._rt.cudaStreamDestroy(stream.raw), "cudaStreamDestroy")
        self._streams.clear()
        # page-locked host memory is released by its arrays' owner (_PinnedHost), when the last view is gone


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
