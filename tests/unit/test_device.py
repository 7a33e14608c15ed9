"""trtq.device: the Device protocol, pycuda wiring (with a fake pycuda.driver) and honest failures."""

from __future__ import annotations

import sys
import types
from typing import Any

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


def test_pycuda_device_push_pop_alloc_free(monkeypatch: pytest.MonkeyPatch) -> None:
    drv = _FakeDriver()
    pkg = types.ModuleType("pycuda")
    mod = types.ModuleType("pycuda.driver")
    for name in ("init", "Device", "mem_alloc", "pagelocked_empty", "memcpy_htod", "memcpy_dtoh", "Context"):
        setattr(mod, name, getattr(drv, name))
    pkg.driver = mod  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pycuda", pkg)
    monkeypatch.setitem(sys.modules, "pycuda.driver", mod)
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
