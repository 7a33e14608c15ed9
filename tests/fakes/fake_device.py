"""A fake :class:`trtq.device.Device` whose "device memory" is numpy arrays.

Pointers are plain integers registered in :data:`MEMORY`, so the fake TensorRT (``fake_tensorrt``)
can read what a calibrator or the runtime copied to a pointer and write outputs back. Every call is
recorded in ``FakeDevice.calls``. Timing events read a fake clock that the fake TensorRT advances by
the engine's ``fake_latency_ms`` on each ``execute_async_v3``.
"""

from __future__ import annotations

import itertools
from types import TracebackType
from typing import Any

import numpy as np

#: ptr -> uint8 array of the allocation (live allocations only)
MEMORY: dict[int, np.ndarray] = {}
#: stream handle -> work recorded while the stream is being captured into a CUDA graph (``fake_cudart``)
CAPTURING: dict[int, list[Any]] = {}
_NEXT = itertools.count(1)


class FakeClock:
    """The GPU clock CUDA events read (``cudaEventElapsedTime`` / pycuda ``Event.time_till``): advanced only by the
    fake TensorRT's ``execute_async_v3``, so timings are exact and repeatable.
    """
    now_ms: float = 0.0

    @classmethod
    def advance(cls, ms: float) -> None:
        cls.now_ms += float(ms)


def read_device(ptr: int, nbytes: int, dtype: Any = np.float32, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Copy ``nbytes`` from fake device memory at ``ptr`` (which must be the start of an allocation)."""
    if ptr not in MEMORY:
        raise RuntimeError(f"fake device: read from unknown or freed pointer {ptr:#x}")
    mem = MEMORY[ptr]
    if nbytes > mem.nbytes:
        raise RuntimeError(f"fake device: read of {nbytes} bytes from a {mem.nbytes}-byte buffer")
    arr = mem[:nbytes].view(np.dtype(dtype)).copy()
    return arr.reshape(shape) if shape is not None else arr


def write_device(ptr: int, data: np.ndarray) -> None:
    if ptr not in MEMORY:
        raise RuntimeError(f"fake device: write to unknown or freed pointer {ptr:#x}")
    raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    mem = MEMORY[ptr]
    if raw.nbytes > mem.nbytes:
        raise RuntimeError(f"fake device: write of {raw.nbytes} bytes into a {mem.nbytes}-byte buffer")
    mem[: raw.nbytes] = raw


class FakeBuffer:
    """A device allocation (``trtq.device.DeviceBuffer``: pycuda ``mem_alloc`` / cuda-python ``cudaMalloc``): an
    entry of ``MEMORY``; ``free`` releases it once (a second call does nothing), and reading or writing it
    afterwards raises where real CUDA would fail or read stale memory.
    """
    def __init__(self, device: FakeDevice, nbytes: int) -> None:
        self._device = device
        self._nbytes = int(nbytes)
        self._ptr = next(_NEXT) * 0x100000
        MEMORY[self._ptr] = np.zeros(max(self._nbytes, 1), dtype=np.uint8)
        self.freed = False

    @property
    def ptr(self) -> int:
        return self._ptr

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def free(self) -> None:
        if not self.freed:
            MEMORY.pop(self._ptr, None)
            self.freed = True
            self._device.calls.append(("free", self._ptr))


class FakeStream:
    """A CUDA stream (``trtq.device.Stream``): work runs at once, so ``synchronize`` only records the call."""
    _ids = itertools.count(1)

    def __init__(self, device: FakeDevice) -> None:
        self._device = device
        self._handle = next(self._ids) * 16

    @property
    def handle(self) -> int:
        return self._handle

    def synchronize(self) -> None:
        self._device.calls.append(("stream_synchronize", self._handle))


class FakeEvent:
    """A CUDA event (``trtq.device.Event``): ``record`` reads ``FakeClock``; ``elapsed_ms`` as
    ``cudaEventElapsedTime`` (end minus start, in ms).
    """
    def __init__(self, device: FakeDevice) -> None:
        self._device = device
        self.time_ms: float | None = None

    def record(self, stream: Any = None) -> None:
        self.time_ms = FakeClock.now_ms
        self._device.calls.append(("event_record", getattr(stream, "handle", None)))

    def synchronize(self) -> None:
        self._device.calls.append(("event_synchronize",))

    def elapsed_ms(self, end: Any) -> float:
        if self.time_ms is None or getattr(end, "time_ms", None) is None:
            raise RuntimeError("fake device: elapsed_ms on an event that was not recorded")
        return float(end.time_ms - self.time_ms)


class FakeDevice:
    """Implements the :class:`trtq.device.Device` protocol in host memory.

    Models what ``trtq.device``'s pycuda and cuda-python backends give trtq (buffers, streams, events, name and
    compute capability), as written against pycuda's ``driver`` module and cuda-python's runtime bindings
    (NVIDIA/cuda-python ``cuda_bindings/cuda/bindings/runtime.pyx.in``); every call is recorded in ``calls``.
    """

    backend = "fake"

    def __init__(self, name: str = "Fake GPU", compute_capability: tuple[int, int] = (8, 7),
                 integrated: bool | None = None) -> None:
        self.name = name
        self.compute_capability = compute_capability
        self.integrated = integrated  # None: unknown, judged from the compute capability (trtq.device.is_integrated)
        self.calls: list[tuple[Any, ...]] = []
        self.buffers: list[FakeBuffer] = []
        self.closed = False

    # allocation -------------------------------------------------------------------------------------
    def alloc(self, nbytes: int) -> FakeBuffer:
        buf = FakeBuffer(self, nbytes)
        self.buffers.append(buf)
        self.calls.append(("alloc", int(nbytes), buf.ptr))
        return buf

    @property
    def live_buffers(self) -> list[FakeBuffer]:
        return [b for b in self.buffers if not b.freed]

    def pinned_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        self.calls.append(("pinned_empty", tuple(shape), np.dtype(dtype).name))
        return np.empty(shape, dtype=dtype)

    # copies -----------------------------------------------------------------------------------------
    def htod(self, dst: Any, src: np.ndarray, stream: Any = None) -> None:
        src = np.ascontiguousarray(src)
        if src.nbytes > dst.nbytes:
            raise ValueError(f"htod of {src.nbytes} bytes into a {dst.nbytes}-byte buffer")
        write_device(dst.ptr, src)
        self.calls.append(("htod", dst.ptr, src.nbytes, getattr(stream, "handle", None)))

    def dtoh(self, dst: np.ndarray, src: Any, stream: Any = None) -> None:
        if not dst.flags["C_CONTIGUOUS"]:
            raise ValueError("dtoh needs a C-contiguous destination array")
        if dst.nbytes > src.nbytes:
            raise ValueError(f"dtoh of {dst.nbytes} bytes out of a {src.nbytes}-byte buffer")
        nbytes = dst.nbytes
        data = read_device(src.ptr, nbytes, np.uint8)
        dst.reshape(-1).view(np.uint8)[:nbytes] = data
        self.calls.append(("dtoh", src.ptr, nbytes, getattr(stream, "handle", None)))

    # streams and events -----------------------------------------------------------------------------
    def stream(self) -> FakeStream:
        s = FakeStream(self)
        self.calls.append(("stream", s.handle))
        return s

    def event(self) -> FakeEvent:
        return FakeEvent(self)

    def synchronize(self) -> None:
        self.calls.append(("synchronize",))

    def close(self) -> None:
        for buf in self.buffers:
            buf.free()
        self.closed = True
        self.calls.append(("close",))

    def __enter__(self) -> FakeDevice:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
