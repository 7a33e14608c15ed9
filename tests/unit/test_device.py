"""trtq.device: the Device protocol, pycuda wiring (with a fake pycuda.driver) and honest failures."""

from __future__ import annotations

import sys
import types
from typing import Any, cast

import numpy as np
import pytest

from tests.fakes.fake_device import FakeDevice, read_device
from trtq import device as devmod
from trtq.errors import MissingDependencyError, TrtqError


def test_fake_device_implements_the_protocol() -> None:
    dev = FakeDevice()
    assert isinstance(dev, devmod.Device)
    buf = dev.alloc(16)
    assert isinstance(buf, devmod.DeviceBuffer)
    dev.htod(buf, np.arange(4, dtype=np.float32))
    out = np.zeros(4, np.float32)
    dev.dtoh(out, buf)
    assert out.tolist() == [0, 1, 2, 3]
    assert read_device(buf.ptr, 16).tolist() == [0, 1, 2, 3]
    dev.close()
    assert dev.live_buffers == []


def test_no_gpu_here_raises_missing_dependency(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(MissingDependencyError) as exc:
        devmod.get_device("auto")
    assert "pycuda" in str(exc.value) and "cuda-python" in str(exc.value)
    assert exc.value.exit_code == 3


def test_unknown_backend() -> None:
    with pytest.raises(TrtqError, match="unknown device backend"):
        devmod.get_device("opencl")


class _FakeDriver:
    """The part of pycuda.driver trtq uses, recording calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.memory: dict[int, bytearray] = {}
        drv = self

        class Ctx:
            def push(self) -> None:
                drv.calls.append(("push",))

            def pop(self) -> None:
                drv.calls.append(("pop",))

        class Dev:
            def __init__(self, index: int) -> None:
                drv.calls.append(("Device", index))

            def name(self) -> str:
                return "Fake Orin"

            def compute_capability(self) -> tuple[int, int]:
                return (8, 7)

            def retain_primary_context(self) -> Ctx:
                return Ctx()

        class Alloc:
            def __init__(self, n: int) -> None:
                self.ptr = 0x1000 * (len(drv.memory) + 1)
                drv.memory[self.ptr] = bytearray(n)

            def __int__(self) -> int:
                return self.ptr

            def free(self) -> None:
                drv.calls.append(("free", self.ptr))
                drv.memory.pop(self.ptr)

        self.Device = Dev
        self._alloc = Alloc

        class Context:
            @staticmethod
            def synchronize() -> None:
                drv.calls.append(("ctx_sync",))

        self.Context = Context

        class Event:
            clock = [0.0]

            def __init__(self) -> None:
                self.t: float | None = None

            def record(self, stream: Any = None) -> Event:
                Event.clock[0] += 1.5  # every record is 1.5 ms after the previous one
                self.t = Event.clock[0]
                return self

            def synchronize(self) -> Event:
                drv.calls.append(("event_sync", self.t))
                return self

            def time_till(self, end: Event) -> float:  # pycuda: ms from self to end
                assert self.t is not None and end.t is not None
                return end.t - self.t

        self.Event = Event

    def init(self) -> None:
        self.calls.append(("init",))

    def mem_alloc(self, n: int) -> Any:
        return self._alloc(n)

    def pagelocked_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return np.empty(shape, dtype)

    def memcpy_htod(self, dst: Any, src: np.ndarray) -> None:
        self.memory[int(dst)][: src.nbytes] = src.tobytes()
        self.calls.append(("htod", int(dst)))

    def memcpy_dtoh(self, dst: np.ndarray, src: Any) -> None:
        dst.reshape(-1).view(np.uint8)[:] = np.frombuffer(bytes(self.memory[int(src)][: dst.nbytes]), np.uint8)


def _install_pycuda(monkeypatch: pytest.MonkeyPatch, drv: _FakeDriver) -> None:
    pkg = types.ModuleType("pycuda")
    mod = types.ModuleType("pycuda.driver")
    for name in ("init", "Device", "mem_alloc", "pagelocked_empty", "memcpy_htod", "memcpy_dtoh", "Context", "Event"):
        setattr(mod, name, getattr(drv, name))
    pkg.driver = mod  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pycuda", pkg)
    monkeypatch.setitem(sys.modules, "pycuda.driver", mod)


def test_pycuda_device_push_pop_alloc_free(monkeypatch: pytest.MonkeyPatch) -> None:
    drv = _FakeDriver()
    _install_pycuda(monkeypatch, drv)
    with devmod.get_device("pycuda") as dev:
        assert dev.name == "Fake Orin" and dev.compute_capability == (8, 7)
        buf = dev.alloc(12)
        dev.htod(buf, np.array([1.5, 2.5, 3.5], np.float32))
        out = np.zeros(3, np.float32)
        dev.dtoh(out, buf)
        assert out.tolist() == [1.5, 2.5, 3.5]
    names = [c[0] for c in drv.calls]
    assert names[:3] == ["init", "Device", "push"]
    assert names.count("free") == 1 and names[-1] == "pop"  # buffers freed before the context is popped


def test_pycuda_copies_are_bounds_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """pycuda copies ``src.nbytes`` / ``dst.nbytes`` without looking at the allocation: trtq must check."""
    drv = _FakeDriver()
    _install_pycuda(monkeypatch, drv)
    with devmod.get_device("pycuda") as dev, devmod.get_device("pycuda") as other:
        buf = dev.alloc(12)
        with pytest.raises(ValueError, match="16 bytes into a device buffer of 12"):
            dev.htod(buf, np.zeros(4, np.float32))
        with pytest.raises(ValueError, match="16 bytes out of a device buffer of 12"):
            dev.dtoh(np.zeros(4, np.float32), buf)
        with pytest.raises(ValueError, match="C-contiguous"):
            dev.dtoh(np.zeros((3, 2), np.float32)[:, 0], buf)
        assert not any(c[0] == "htod" for c in drv.calls)  # nothing reached the driver
        dev.htod(buf, np.array([[1, 2], [3, 4], [5, 6]], np.float32)[:, 1])  # made contiguous first
        out = np.zeros(3, np.float32)
        dev.dtoh(out, buf)
        assert out.tolist() == [2, 4, 6]
        with pytest.raises(TypeError, match="not allocated by this device"):
            other.htod(buf, out)
        buf.free()
        with pytest.raises(TrtqError, match="after free"):
            dev.htod(buf, out)


def test_pycuda_context_is_popped_when_setup_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    drv = _FakeDriver()

    def broken(self: Any) -> tuple[int, int]:
        raise RuntimeError("device lost")

    monkeypatch.setattr(drv.Device, "compute_capability", broken)
    _install_pycuda(monkeypatch, drv)
    with pytest.raises(MissingDependencyError, match="device lost"):
        devmod.PycudaDevice(0)
    names = [c[0] for c in drv.calls]
    assert names.count("push") == 1 and names.count("pop") == 1 and names[-1] == "pop"


def test_pycuda_event_timing_is_start_to_end(monkeypatch: pytest.MonkeyPatch) -> None:
    drv = _FakeDriver()
    _install_pycuda(monkeypatch, drv)
    with devmod.get_device("pycuda") as dev:
        start, mid, end = dev.event(), dev.event(), dev.event()
        start.record()
        mid.record()
        end.record()
        assert start.elapsed_ms(end) == pytest.approx(3.0)
        assert mid.elapsed_ms(end) == pytest.approx(1.5)
        assert drv.calls[-1] == ("event_sync", cast(Any, end).raw.t)  # waited for the end event first


class _FakeCudart(types.ModuleType):
    """``cuda.bindings.runtime`` as far as trtq uses it: every call returns ``(err, *values)``."""

    class cudaMemcpyKind:  # noqa: N801 - cuda-python's name
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def __init__(self) -> None:
        super().__init__("cuda.bindings.runtime")
        self.calls: list[tuple[Any, ...]] = []
        self.times: dict[int, float] = {}
        self._next = 0

    def _handle(self) -> int:
        self._next += 1
        return self._next

    def cudaGetDeviceCount(self) -> tuple[int, int]:  # noqa: N802
        return 0, 1

    def cudaSetDevice(self, index: int) -> tuple[int]:  # noqa: N802
        return (0,)

    def cudaGetDeviceProperties(self, index: int) -> tuple[int, Any]:  # noqa: N802
        return 0, types.SimpleNamespace(name=b"Fake Orin\x00\x00", major=8, minor=7)

    def cudaMalloc(self, n: int) -> tuple[int, int]:  # noqa: N802
        return 0, 0x1000 * self._handle()

    def cudaFree(self, ptr: int) -> tuple[int]:  # noqa: N802
        self.calls.append(("free", ptr))
        return (0,)

    def cudaEventCreate(self) -> tuple[int, int]:  # noqa: N802
        return 0, self._handle()

    def cudaStreamCreate(self) -> tuple[int, int]:  # noqa: N802
        return 0, self._handle()

    def cudaStreamDestroy(self, stream: int) -> tuple[int]:  # noqa: N802
        self.calls.append(("stream_destroy", stream))
        return (0,)

    def cudaEventDestroy(self, ev: int) -> tuple[int]:  # noqa: N802
        self.calls.append(("event_destroy", ev))
        return (0,)

    def cudaEventRecord(self, ev: int, stream: Any) -> tuple[int]:  # noqa: N802
        self.times[ev] = 2.0 * len(self.times)
        return (0,)

    def cudaEventSynchronize(self, ev: int) -> tuple[int]:  # noqa: N802
        self.calls.append(("event_sync", ev))
        return (0,)

    def cudaEventElapsedTime(self, start: int, end: int) -> tuple[int, float]:  # noqa: N802
        if start not in self.times or end not in self.times:
            return 1, 0.0  # cudaErrorInvalidValue
        return 0, self.times[end] - self.times[start]


def test_cuda_python_device_timing_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    rt = _FakeCudart()
    monkeypatch.setitem(sys.modules, "cuda", types.ModuleType("cuda"))
    monkeypatch.setitem(sys.modules, "cuda.bindings", types.ModuleType("cuda.bindings"))
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", rt)
    with devmod.get_device("cuda-python") as dev:
        assert dev.name == "Fake Orin" and dev.compute_capability == (8, 7)
        start, end, never = dev.event(), dev.event(), dev.event()
        start.record()
        end.record()
        assert start.elapsed_ms(end) == pytest.approx(2.0)  # from start to end, not the reverse
        assert ("event_sync", 2) in rt.calls  # waits for the end event before reading the time
        with pytest.raises(RuntimeError, match="cudaEventElapsedTime failed: CUDA error 1"):
            start.elapsed_ms(never)
        dev.stream()
        buf = dev.alloc(8)
        with pytest.raises(ValueError, match="into a device buffer of 8"):
            dev.htod(buf, np.zeros(3, np.float32))
    assert ("free", buf.ptr) in rt.calls
    # cuda-python handles are not garbage collected: close() destroys every stream and event it made
    assert sorted(c[1] for c in rt.calls if c[0] == "event_destroy") == [1, 2, 3]
    assert [c[0] for c in rt.calls].count("stream_destroy") == 1


def test_close_pops_the_context_even_when_a_free_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    drv = _FakeDriver()
    _install_pycuda(monkeypatch, drv)
    dev = devmod.get_device("pycuda")
    buf = dev.alloc(4)

    def failing_free() -> None:
        raise RuntimeError("cuMemFree failed: context is destroyed")

    cast(Any, buf).allocation.free = failing_free
    with pytest.raises(RuntimeError, match="cuMemFree"):
        dev.close()
    assert [c[0] for c in drv.calls][-1] == "pop"


def test_cuda_check_unpacks_results() -> None:
    assert devmod.cuda_check((0,)) is None
    assert devmod.cuda_check((0, 7)) == 7
    assert devmod.cuda_check((0, 1, 2)) == (1, 2)
    with pytest.raises(RuntimeError, match="cudaMalloc failed: CUDA error 2"):
        devmod.cuda_check((2, None), "cudaMalloc")
