"""The TensorRT path of trtq.runtime, contract-tested with the recording fake tensorrt and fake device.

The fake engine's ``compute`` runs the tiny ONNX model on ONNX Runtime, so an engine Detector must return
exactly what the ONNX Runtime Detector returns for the same images.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.fakes import fake_tensorrt
from tests.fakes.fake_device import FakeDevice
from tests.unit.test_runtime_models import make_tiny_yolo_onnx, random_images
from trtq.engine_meta import EngineMetadata, engine_record_path, write_engine
from trtq.errors import MissingDependencyError, TrtqError
from trtq.runtime import Detections, Detector, TensorRTSession

TRT_VERSION = "10.3.0"
HW = 32
NC = 2


def fake_plan(version: str = TRT_VERSION, *, batch: tuple[int, int] = (1, 1), channels: int = 3) -> bytes:
    """A plan the fake Runtime deserializes: images [N,3,32,32] -> output0 [N,6,1024]."""
    lo, hi = batch
    dyn = lo != hi
    n = -1 if dyn else lo
    plan = {
        "version": version,
        "inputs": [{"name": "images", "shape": [n, channels, HW, HW], "dtype": "FLOAT"}],
        "outputs": [{"name": "output0", "shape": [n, 4 + NC, HW * HW], "dtype": "FLOAT"}],
        "profiles": [{"images": [[lo, channels, HW, HW], [hi, channels, HW, HW], [hi, channels, HW, HW]]}]
        if dyn
        else [],
        "flags": ["INT8"],
        "strongly_typed": False,
        "layers": [],
        "dla_core": None,
        "profiling_verbosity": "LAYER_NAMES_ONLY",
        "calibrated": True,
    }
    return fake_tensorrt.PLAN_MAGIC + json.dumps(plan).encode()


def write_fake_engine(
    path: Path,
    *,
    version: str = TRT_VERSION,
    batch: tuple[int, int] = (1, 1),
    cc: tuple[int, int] = (8, 7),
    header: bool = False,
    channels: int = 3,
) -> Path:
    meta = EngineMetadata(
        tensorrt_version=version,
        gpu_name="Orin",
        compute_capability=cc,
        precision="int8",
        mode="implicit",
        names={0: "cat", 1: "dog"},
        stride=32,
        imgsz=(HW, HW),
        batch=batch[1],
        command="trtq build tiny.onnx --int8",
    )
    return write_engine(
        path, fake_plan(version, batch=batch, channels=channels), meta, ultralytics_header=header
    )


def ort_compute(
    onnx_path: Path,
) -> Callable[[dict[str, np.ndarray], dict[str, tuple[int, ...]]], dict[str, Any]]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def compute(inputs: dict[str, np.ndarray], out_shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
        (out,) = sess.run(None, {"images": inputs["images"]})
        assert out.shape == out_shapes["output0"]
        return {"output0": out}

    return compute


class Env:
    def __init__(self, trt: Any, device: FakeDevice, onnx_path: Path, tmp: Path) -> None:
        self.trt = trt
        self.device = device
        self.onnx = onnx_path
        self.tmp = tmp

    def detector(self, engine: Path, **kw: Any) -> Detector:
        det = Detector(engine, **kw)
        self.trt.STATE.engines[-1].compute = ort_compute(self.onnx)
        return det

    def trt_calls(self, name: str) -> list[tuple[Any, ...]]:
        return [c for c in self.trt.CALLS if c[0] == name]

    def dev_calls(self, name: str) -> list[tuple[Any, ...]]:
        return [c for c in self.device.calls if c[0] == name]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Env]:
    trt = fake_tensorrt.install(monkeypatch, TRT_VERSION)
    dev = FakeDevice(compute_capability=(8, 7))
    import trtq.device

    monkeypatch.setattr(trtq.device, "get_device", lambda backend="auto", index=0: dev)
    yield Env(trt, dev, make_tiny_yolo_onnx(tmp_path / "tiny.onnx", batch="N"), tmp_path)


def _same(a: Detections, b: Detections) -> None:
    assert len(a) == len(b)
    np.testing.assert_array_equal(a.class_ids, b.class_ids)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    assert a.names == b.names


def test_engine_detector_matches_onnx_detector(env: Env) -> None:
    engine = write_fake_engine(env.tmp / "tiny.engine")
    imgs = random_images(3)
    with Detector(env.onnx, conf=0.3) as ref:
        expected = ref.detect(imgs)
    with env.detector(engine, conf=0.3) as det:
        assert det.backend == "tensorrt" and det.names == {0: "cat", 1: "dog"} and det.imgsz == (HW, HW)
        got = det.detect(imgs)
    assert sum(len(d) for d in expected) > 0
    for a, b in zip(got, expected, strict=True):
        _same(a, b)


def test_buffers_allocated_once_addresses_set_once_freed_at_close(env: Env) -> None:
    engine = write_fake_engine(env.tmp / "tiny.engine")
    det = env.detector(engine, conf=0.3)
    allocs = env.dev_calls("alloc")
    pinned = env.dev_calls("pinned_empty")
    assert len(allocs) == 2 and len(pinned) == 2  # one input, one output
    assert {c[1] for c in env.trt_calls("context.set_tensor_address")} == {"images", "output0"}
    (stream_call,) = env.dev_calls("stream")
    handle = stream_call[1]
    for _ in range(3):
        det.detect(random_images(2))
    assert len(env.dev_calls("alloc")) == 2 and len(env.dev_calls("pinned_empty")) == 2
    assert len(env.trt_calls("context.set_tensor_address")) == 2
    executes = env.trt_calls("context.execute_async_v3")
    assert len(executes) == 6 and all(c[1] == handle for c in executes)  # dedicated stream, batch-1 engine
    assert all(c[3] == handle for c in env.dev_calls("htod") + env.dev_calls("dtoh"))
    live = list(env.device.live_buffers)
    assert len(live) == 2
    det.close()
    assert env.device.live_buffers == [] and env.device.closed
    assert {c[1] for c in env.dev_calls("free")} == {b.ptr for b in live}


def test_dynamic_batch_engine_chunks_by_profile(env: Env) -> None:
    engine = write_fake_engine(env.tmp / "dyn.engine", batch=(1, 4))
    imgs = random_images(6, seed=2)
    with Detector(env.onnx, conf=0.3) as ref:
        expected = ref.detect(imgs)
    with env.detector(engine, conf=0.3) as det:
        assert det.batch_range == (1, 4)
        got = det.detect(imgs)
    shapes = [c[2] for c in env.trt_calls("context.set_input_shape")]
    assert shapes[0] == (4, 3, HW, HW)  # buffers sized for the profile's max at load
    assert (2, 3, HW, HW) in shapes[1:]
    for a, b in zip(got, expected, strict=True):
        _same(a, b)


def test_static_batch_engine_pads_partial_batches(env: Env) -> None:
    engine = write_fake_engine(env.tmp / "b2.engine", batch=(2, 2))
    imgs = random_images(3, seed=5)
    with Detector(env.onnx, conf=0.3) as ref:
        expected = ref.detect(imgs)
    with env.detector(engine, conf=0.3) as det:
        got = det.detect(imgs)
    assert len(env.trt_calls("context.execute_async_v3")) == 2
    for a, b in zip(got, expected, strict=True):
        _same(a, b)


def test_ultralytics_header_without_sidecar(env: Env) -> None:
    engine = write_fake_engine(env.tmp / "u.engine", header=True)
    engine_record_path(engine).unlink()
    with env.detector(engine, conf=0.3) as det:
        assert det.names == {0: "cat", 1: "dog"}
        assert len(det.detect(random_images(1))) == 1


# ------------------------------------------------------------------------------------------ errors
def test_version_mismatch_is_one_clear_error(env: Env) -> None:
    engine = write_fake_engine(env.tmp / "old.engine", version="8.6.1")
    with pytest.raises(TrtqError, match=r"built with TensorRT 8\.6\.1 .*this is TensorRT 10\.3\.0.*rebuild"):
        Detector(engine)
    assert env.device.live_buffers == []


def test_gpu_mismatch_names_both_devices(env: Env) -> None:
    engine = write_fake_engine(env.tmp / "x.engine", cc=(7, 2))
    with pytest.raises(
        TrtqError, match=r"SM 7\.2 \(Xavier\).*SM 8\.7 \(Orin\).*trtq build tiny\.onnx --int8"
    ):
        Detector(engine)


def test_truncated_engine(env: Env) -> None:
    engine = write_fake_engine(env.tmp / "t.engine")
    data = engine.read_bytes()
    engine.write_bytes(data[: len(data) // 2])
    with pytest.raises(TrtqError, match="truncated or modified"):
        Detector(engine)
    engine_record_path(engine).unlink()  # without metadata: TensorRT itself rejects it
    with pytest.raises(TrtqError, match="could not deserialize"):
        Detector(engine)
    assert env.device.live_buffers == [] and env.device.closed


def test_corrupt_sidecar(env: Env) -> None:
    engine = write_fake_engine(env.tmp / "c.engine")
    engine_record_path(engine).write_text("{not json")
    with pytest.raises(TrtqError, match="corrupt"):
        Detector(engine)


def test_empty_and_missing_engine(env: Env) -> None:
    with pytest.raises(TrtqError, match="not found"):
        Detector(env.tmp / "missing.engine")
    empty = env.tmp / "empty.engine"
    empty.write_bytes(b"")
    with pytest.raises(TrtqError, match="empty"):
        Detector(empty)


def test_wrong_input_shape_engine(env: Env) -> None:
    engine = write_fake_engine(env.tmp / "gray.engine", channels=1)
    with pytest.raises(TrtqError, match=r"expected \[N, 3, H, W\]"):
        Detector(engine)
    assert env.device.live_buffers == []


def test_batch_outside_profile_is_rejected(env: Env) -> None:
    engine = write_fake_engine(env.tmp / "dyn.engine", batch=(2, 4))
    session = TensorRTSession(engine)
    try:
        with pytest.raises(TrtqError, match=r"outside the engine's range 2\.\.4"):
            session.set_batch(5)
    finally:
        session.close()


def test_no_tensorrt_is_a_missing_dependency(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    stub = types.ModuleType("tensorrt")  # what tensorrt-stubs alone gives: no __version__, no Builder
    monkeypatch.setitem(sys.modules, "tensorrt", stub)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(MissingDependencyError) as info:
        Detector(engine)
    assert info.value.exit_code == 3 and "TensorRT" in str(info.value)
