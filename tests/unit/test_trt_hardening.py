"""TensorRT / CUDA edge cases the recording fakes reproduce as the real bindings behave.

Each test names the real behaviour it pins down (pybind11 enums, timing-cache deserialization, the
process-wide logger, ...); the fake's side of it is checked here as well, so the contract tests elsewhere
cannot pass against a fake that is more forgiving than TensorRT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import make_tiny_conv_onnx
from tests.fakes.fake_device import FakeDevice
from tests.fakes.fake_tensorrt import make_fake_tensorrt
from trtq.trt.builder import build_engine


def _build(trt: Any, tmp_path: Path, name: str = "m.engine", **kw: Any) -> Any:
    """Build the tiny conv ONNX with the fake ``trt`` (the fake device holds calibration buffers)."""
    model = tmp_path / "tiny.onnx"
    if not model.is_file():
        make_tiny_conv_onnx(model)
    kw.setdefault("device", FakeDevice())
    kw.setdefault("progress", False)
    return build_engine(model, trt_module=trt, output=tmp_path / "engines" / name, **kw)


# ------------------------------------------------------------------------------------------------------
# pybind11 enums: a plain int where an enum is expected is a TypeError
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["8.5.3", "10.3.0", "11.0"])
def test_fake_enum_setters_reject_plain_ints(version: str) -> None:
    trt: Any = make_fake_tensorrt(version)
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    config = builder.create_builder_config()
    flag = trt.BuilderFlag.GPU_FALLBACK
    for call in (
        lambda: config.set_flag(int(flag)),
        lambda: config.clear_flag(int(flag)),
        lambda: config.get_flag(int(flag)),
        lambda: config.set_memory_pool_limit(0, 1 << 20),
        lambda: setattr(config, "default_device_type", 1),
        lambda: setattr(config, "profiling_verbosity", 2),
        lambda: trt.Logger(2),
    ):
        with pytest.raises(TypeError, match="incompatible function arguments"):
            call()
    # the enum members themselves are accepted, and int() of them works (network creation flags are ints)
    config.set_flag(flag)
    assert config.get_flag(flag)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 20)
    config.default_device_type = trt.DeviceType.GPU
    assert 1 << int(flag) > 0


def test_fake_set_device_type_rejects_plain_int() -> None:
    trt: Any = make_fake_tensorrt("10.3.0")
    layer = trt.ILayer("conv", "CONVOLUTION", "Conv", [], [])
    config = trt.Builder(trt.Logger()).create_builder_config()
    with pytest.raises(TypeError, match="incompatible function arguments"):
        config.set_device_type(layer, 0)
    config.set_device_type(layer, trt.DeviceType.GPU)
    with pytest.raises(TypeError):
        layer.set_output_type(0, 0)


# ------------------------------------------------------------------------------------------------------
# timing cache: create_timing_cache returns None (C++ nullptr) for a corrupt or other-version cache
# ------------------------------------------------------------------------------------------------------
def test_fake_create_timing_cache_returns_none_like_tensorrt() -> None:
    trt: Any = make_fake_tensorrt("10.3.0")
    config = trt.Builder(trt.Logger()).create_builder_config()
    assert config.create_timing_cache(b"") is not None
    assert config.create_timing_cache(b"\x00garbage") is None
    other: Any = make_fake_tensorrt("10.4.0")
    blob = bytes(other.Builder(other.Logger()).create_builder_config().create_timing_cache(b"").serialize())
    assert config.create_timing_cache(blob) is None
    with pytest.raises(TypeError):
        config.set_timing_cache(None, False)


@pytest.mark.parametrize("content", ["corrupt", "other-version", "other-gpu"])
def test_unusable_timing_cache_starts_a_new_one(
    content: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import json

    tc = tmp_path / "timing.cache"
    if content == "corrupt":
        tc.write_bytes(b"\x00\x01 not a timing cache")
    else:
        maker: Any = make_fake_tensorrt("10.4.0" if content == "other-version" else "10.3.0")
        maker.FAKE_DEVICE = "fake-gpu-0" if content == "other-version" else "another-gpu"
        tc.write_bytes(bytes(maker.Builder(maker.Logger()).create_builder_config().create_timing_cache(b"").serialize()))
    trt: Any = make_fake_tensorrt("10.3.0")
    with caplog.at_level("WARNING", logger="trtq.trt.builder"):
        result = _build(trt, tmp_path, fp16=True, timing_cache=tc)
    assert result.engine_path is not None and result.engine_path.is_file()
    why = "was made on another GPU" if content == "other-gpu" else "is corrupt or from another TensorRT version"
    assert f"timing cache {tc} {why}" in caplog.text
    saved = json.loads(tc.read_bytes())  # replaced by the new cache of this TensorRT and GPU
    assert saved["version"] == "10.3.0" and saved["device"] == "fake-gpu-0" and saved["entries"] > 0
    sets = [c for c in trt.CALLS if c[0] == "config.set_timing_cache"]
    assert sets and sets[-1][1] == 0  # the cache attached to the build is the fresh one


# ------------------------------------------------------------------------------------------------------
# one trt.Logger per process: TensorRT keeps the first one; later ones are ignored (with a warning)
# ------------------------------------------------------------------------------------------------------
def test_build_inspect_and_run_share_one_logger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fakes import fake_tensorrt
    from trtq.engine_meta import read_engine
    from trtq.runtime import TensorRTSession
    from trtq.trt import compat
    from trtq.trt.inspect import layer_precisions

    trt: Any = fake_tensorrt.install(monkeypatch, "10.3.0")
    dev = FakeDevice(compute_capability=(8, 7))
    import trtq.device

    monkeypatch.setattr(trtq.device, "get_device", lambda backend="auto", index=0: dev)
    result = _build(trt, tmp_path, fp16=True)
    layer_precisions(trt, read_engine(result.engine_path)[0])
    monkeypatch.setattr("trtq.runtime.TensorRTSession._setup_io", lambda self, trt: None)  # I/O not needed here
    TensorRTSession(result.engine_path).close()
    assert len(trt.STATE.loggers) == 1, "a second trt.Logger was made; TensorRT ignores all but the first"
    assert not [c for c in trt.CALLS if c[0] == "warning" and "differs from one already provided" in c[1]]
    # the severity of the one logger is what changes
    logger = compat.trt_logger(trt, "VERBOSE")
    assert logger is trt.STATE.logger and logger.min_severity == trt.Logger.VERBOSE
    assert compat.trt_logger(trt).min_severity == trt.Logger.WARNING
    import logging

    previous = logging.getLogger("trtq").level
    logging.getLogger("trtq").setLevel(logging.DEBUG)  # trtq -vv
    try:
        assert compat.trt_logger(trt).min_severity == trt.Logger.INFO
    finally:
        logging.getLogger("trtq").setLevel(previous)
    with pytest.raises(ValueError, match="unknown TensorRT log severity"):
        compat.trt_logger(trt, "LOUD")


def test_fake_keeps_the_first_logger_like_tensorrt() -> None:
    trt: Any = make_fake_tensorrt("10.3.0")
    first = trt.Logger(trt.Logger.ERROR)
    trt.Builder(first)
    trt.Runtime(trt.Logger(trt.Logger.VERBOSE))  # ignored: only a warning, sent to the first logger
    assert trt.STATE.logger is first
    assert [c for c in trt.CALLS if c[0] == "warning" and "differs from one already provided" in c[1]]
    assert first.messages == []  # the warning is below the first logger's ERROR threshold


# ------------------------------------------------------------------------------------------------------
# the DLA core of an engine: trtq's record, else the ultralytics header's "dla"
# ------------------------------------------------------------------------------------------------------
@pytest.fixture
def fake_env(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, FakeDevice]:
    from tests.fakes import fake_tensorrt

    trt = fake_tensorrt.install(monkeypatch, "10.3.0", num_dla_cores=2)
    dev = FakeDevice(compute_capability=(8, 7))
    import trtq.device

    monkeypatch.setattr(trtq.device, "get_device", lambda backend="auto", index=0: dev)
    return trt, dev


def _deserialize_calls(trt: Any) -> list[tuple[Any, ...]]:
    return [c for c in trt.CALLS if c[0] == "runtime.deserialize_cuda_engine"]


def test_runtime_uses_the_dla_core_of_an_ultralytics_header(tmp_path: Path, fake_env: tuple[Any, FakeDevice]) -> None:
    from tests.unit.test_runtime_engine import fake_plan
    from trtq.engine_meta import ultralytics_header
    from trtq.runtime import TensorRTSession

    trt, _ = fake_env
    engine = tmp_path / "exported.engine"  # as ultralytics' exporter writes it for device=dla:1: no trtq record
    header = {"stride": 32, "task": "detect", "batch": 1, "imgsz": [32, 32], "names": {"0": "cat", "1": "dog"},
              "dla": "1"}
    engine.write_bytes(ultralytics_header(header) + fake_plan())
    session = TensorRTSession(engine)
    try:
        assert session.runtime.DLA_core == 1
    finally:
        session.close()
    assert _deserialize_calls(trt)[-1][2] == 1  # the DLA core was set before deserializing


def test_bad_dla_core_in_a_header_is_one_clear_error() -> None:
    from trtq.engine_meta import engine_dla_core
    from trtq.errors import TrtqError

    assert engine_dla_core(None, {"dla": "0"}) == 0
    assert engine_dla_core(None, {"names": {}}) is None
    with pytest.raises(TrtqError, match="DLA core 'gpu'"):
        engine_dla_core(None, {"dla": "gpu"})


def test_eval_keeps_the_dla_core_of_a_trtq_engine(tmp_path: Path, fake_env: tuple[Any, FakeDevice],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import trtq.evaluate
    from tests.unit.test_runtime_engine import fake_plan
    from trtq.engine_meta import EngineMetadata, read_header, split_ultralytics_header, write_engine

    plan = fake_plan()
    meta = EngineMetadata(tensorrt_version="10.3.0", compute_capability=(8, 7), dla_core=1, precision="int8",
                          names={0: "cat", 1: "dog"}, imgsz=(32, 32))
    engine = write_engine(tmp_path / "m.int8.dla1.engine", plan, meta)  # sidecar only: no header by default
    assert read_header(engine) is None
    loaded: list[tuple[str, bytes]] = []

    class FakeYOLO:
        def __init__(self, path: str, task: str) -> None:
            self.task = task
            loaded.append((path, Path(path).read_bytes()))

        def val(self, **kw: Any) -> Any:
            box = types.SimpleNamespace(map=0.5, map50=0.7, mp=0.6, mr=0.4)
            return types.SimpleNamespace(box=box, speed={"inference": 1.0}, names={0: "cat", 1: "dog"})

    monkeypatch.setattr(trtq.evaluate, "_ultralytics", lambda: types.SimpleNamespace(YOLO=FakeYOLO))
    monkeypatch.setattr(trtq.evaluate, "prepare_data", lambda data, workdir, names=None, images=None:
                        types.SimpleNamespace(yaml=workdir / "data.yaml", images=1, instances=1, source="fake"))
    result = trtq.evaluate.evaluate(engine, tmp_path / "data.yaml")
    assert result["model"] == str(engine)
    ((path, data),) = loaded
    header, rest = split_ultralytics_header(data)
    assert header is not None and header["dla"] == "1"  # what ultralytics sets runtime.DLA_core from
    assert header["names"] == {"0": "cat", "1": "dog"}
    assert rest == plan
    # an engine whose header already names its core is evaluated in place
    with_header = write_engine(tmp_path / "h.engine", plan, meta, ultralytics_header=True)
    assert trtq.evaluate.engine_for_ultralytics(with_header, tmp_path) == with_header
    plain = write_engine(tmp_path / "gpu.engine", plan, EngineMetadata(tensorrt_version="10.3.0"))
    assert trtq.evaluate.engine_for_ultralytics(plain, tmp_path) == plain


# ------------------------------------------------------------------------------------------------------
# version / hardware compatibility: recorded at build time, honoured when loading
# ------------------------------------------------------------------------------------------------------
def test_version_compatible_engine_loads_on_a_later_tensorrt_with_host_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fakes import fake_tensorrt
    from trtq.errors import TrtqError
    from trtq.runtime import TensorRTSession

    dev = FakeDevice(compute_capability=(8, 7))
    import trtq.device

    monkeypatch.setattr(trtq.device, "get_device", lambda backend="auto", index=0: dev)
    built: Any = make_fake_tensorrt("10.3.0")
    result = _build(built, tmp_path, "vc.engine", fp16=True, version_compatible=True)
    assert "VERSION_COMPATIBLE" in built.STATE.configs[-1].flags
    assert result.metadata.builder["version_compatible"] is True
    assert "--version-compatible" in result.metadata.command
    plain = _build(make_fake_tensorrt("10.3.0"), tmp_path, "plain.engine", fp16=True).engine_path

    later = fake_tensorrt.install(monkeypatch, "10.4.0")
    session = TensorRTSession(result.engine_path)
    try:
        assert session.runtime.engine_host_code_allowed is True
    finally:
        session.close()
    with pytest.raises(TrtqError, match=r"built with TensorRT 10\.3\.0 .*this is TensorRT 10\.4\.0"):
        TensorRTSession(plain)  # not version compatible: refused before TensorRT sees it
    assert not [c for c in later.CALLS if c[0] == "error"]

    fake_tensorrt.install(monkeypatch, "10.3.0")  # same release: plain engines never get host code
    session = TensorRTSession(plain)
    try:
        assert session.runtime.engine_host_code_allowed is False
    finally:
        session.close()
    fake_tensorrt.install(monkeypatch, "10.2.0")
    with pytest.raises(TrtqError, match=r"version-compatible engine was built with TensorRT 10\.3\.0; it runs on "
                                        r"that release or a later one"):
        TensorRTSession(result.engine_path)


def test_fake_refuses_a_version_compatible_plan_without_host_code() -> None:
    trt: Any = make_fake_tensorrt("10.4.0")
    import json

    from tests.fakes.fake_tensorrt import PLAN_MAGIC
    from tests.unit.test_runtime_engine import fake_plan

    plan = json.loads(fake_plan("10.3.0")[len(PLAN_MAGIC):])
    blob = PLAN_MAGIC + json.dumps({**plan, "version_compatible": True}).encode()
    runtime = trt.Runtime(trt.Logger())
    assert runtime.deserialize_cuda_engine(blob) is None
    runtime.engine_host_code_allowed = True
    assert runtime.deserialize_cuda_engine(blob) is not None
    assert trt.Runtime(trt.Logger()).deserialize_cuda_engine(fake_plan("10.3.0")) is None  # not version compatible


def test_version_compatibility_needs_tensorrt_8_6(tmp_path: Path) -> None:
    from trtq.errors import TrtqError

    with pytest.raises(TrtqError, match=r"TensorRT 8\.5\.3 cannot build version-compatible engines"):
        _build(make_fake_tensorrt("8.5.3"), tmp_path, fp16=True, version_compatible=True)
    with pytest.raises(TrtqError, match=r"TensorRT 8\.5\.3 cannot build hardware-compatible engines"):
        _build(make_fake_tensorrt("8.5.3"), tmp_path, fp16=True, hardware_compatible=True)


def test_hardware_compatible_engine_runs_on_other_ampere_gpus(tmp_path: Path) -> None:
    from trtq.engine_meta import check_compatible
    from trtq.errors import TrtqError

    trt: Any = make_fake_tensorrt("10.3.0")
    result = _build(trt, tmp_path, fp16=True, hardware_compatible=True, device=FakeDevice(compute_capability=(8, 6)))
    assert trt.STATE.configs[-1].hardware_compatibility_level == trt.HardwareCompatibilityLevel.AMPERE_PLUS
    meta = result.metadata
    assert meta.builder["hardware_compatible"] == "ampere_plus"
    check_compatible(meta, tensorrt_version="10.3.0", compute_capability=(8, 9))  # another Ampere+ GPU
    with pytest.raises(TrtqError, match=r"SM 8\.6 .*SM 7\.5"):
        check_compatible(meta, tensorrt_version="10.3.0", compute_capability=(7, 5))  # Turing: not Ampere+
    meta.builder.pop("hardware_compatible")
    with pytest.raises(TrtqError, match=r"SM 8\.6 .*SM 8\.9"):
        check_compatible(meta, tensorrt_version="10.3.0", compute_capability=(8, 9))
    with pytest.raises(TrtqError, match="GPUs only"):
        _build(make_fake_tensorrt("10.3.0", num_dla_cores=2), tmp_path, int8=False, fp16=True, batch=1,
               dla_core=0, hardware_compatible=True)


def test_cli_builds_version_compatible_and_its_rebuild_command_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json
    import shlex

    from click.testing import CliRunner

    import trtq.device
    from tests.fakes import fake_tensorrt
    from trtq.cli import main

    trt = fake_tensorrt.install(monkeypatch, "10.3.0")
    monkeypatch.setattr(trtq.device, "get_device", lambda backend="auto", index=0: FakeDevice())
    model = make_tiny_conv_onnx(tmp_path / "tiny.onnx")
    out = tmp_path / "vc.engine"
    res = CliRunner().invoke(main, ["build", str(model), "--fp16", "--version-compatible", "-o", str(out)])
    assert res.exit_code == 0, res.output
    record = json.loads(out.with_name("vc.engine.json").read_text())
    assert record["builder"]["version_compatible"] is True
    assert "VERSION_COMPATIBLE" in trt.STATE.plans[-1]["flags"]
    rebuild = shlex.split(record["command"])
    assert rebuild[:2] == ["trtq", "build"] and "--version-compatible" in rebuild
    res = CliRunner().invoke(main, [*rebuild[1:], "-o", str(tmp_path / "again.engine")])
    assert res.exit_code == 0, res.output


# ------------------------------------------------------------------------------------------------------
# cuda-python: CUDA graphs on CUDA 11 and 12, results valid after close, native handles
# ------------------------------------------------------------------------------------------------------
@pytest.fixture
def cuda_python(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The fake tensorrt plus a fake cuda-python; pycuda is hidden, so get_device('auto') picks cuda-python."""
    from tests.fakes import fake_tensorrt

    def setup(cuda_version: str, latency_ms: float = 2.0) -> tuple[Any, Any]:
        from tests.fakes import fake_cudart

        trt = fake_tensorrt.install(monkeypatch, "10.3.0", fake_latency_ms=latency_ms)
        rt = fake_cudart.install(monkeypatch, cuda_version)
        return trt, rt

    return setup


@pytest.mark.parametrize("cuda_version", ["11.8", "12.0", "12.9", "13.0"])
def test_cuda_graph_is_captured_and_replayed_through_cuda_python(
    cuda_version: str, tmp_path: Path, cuda_python: Any
) -> None:
    from tests.unit.test_runtime_engine import write_fake_engine
    from trtq.bench.backends import TensorRTBackend
    from trtq.bench.harness import run_benchmark

    trt, rt = cuda_python(cuda_version)
    engine = write_fake_engine(tmp_path / "e.engine", batch=(1, 4))
    backend = TensorRTBackend(engine)
    assert backend.session.device.backend == "cuda-python"
    runner = backend.prepare(2, transfers=True, cuda_graph=True)
    assert "CUDA graph replay" in runner.notes, runner.notes
    context = trt.STATE.contexts[-1]
    before = context.executions
    samples = [runner.run() for _ in range(3)]
    assert context.executions == before + 3  # every launch replayed the captured execute_async_v3
    launches = [c for c in rt.CALLS if c[0] == "cudaGraphLaunch"]
    assert len(launches) == 3 and all(c[2] == backend.session.stream.handle for c in launches)
    assert [c[0] for c in rt.CALLS if c[0].startswith("cudaGraphInstantiate")] == ["cudaGraphInstantiateWithFlags"]
    assert all(s.compute == pytest.approx(2.0) for s in samples)  # the graph's work lies between e1 and e2
    out = backend.session.tensors[backend.session.output_name].host_view(backend.session.shape_of("output0"))
    assert np.isfinite(out).all()  # outputs were copied back after the replayed work
    runner.close()
    assert [c[0] for c in rt.CALLS if c[0] in ("cudaGraphExecDestroy", "cudaGraphDestroy")] == [
        "cudaGraphExecDestroy", "cudaGraphDestroy"]
    backend.close()
    result = run_benchmark([engine], iterations=3, warmup=1, cuda_graph=True, batches=[1])
    assert result.ok_rows and "CUDA graph replay" in result.ok_rows[0].notes


def test_cuda_graph_without_instantiate_with_flags_falls_back_with_a_note(
    tmp_path: Path, cuda_python: Any
) -> None:
    from tests.unit.test_runtime_engine import write_fake_engine
    from trtq.bench.backends import TensorRTBackend

    _, rt = cuda_python("11.2")  # before CUDA 11.4: no cudaGraphInstantiateWithFlags
    backend = TensorRTBackend(write_fake_engine(tmp_path / "e.engine"))
    runner = backend.prepare(1, transfers=True, cuda_graph=True)
    assert any("CUDA graph not used" in n and "11.4" in n for n in runner.notes), runner.notes
    assert runner.run().compute == pytest.approx(2.0)
    runner.close()
    backend.close()


def test_cuda_python_results_stay_valid_after_close(tmp_path: Path, cuda_python: Any) -> None:
    from tests.unit.test_runtime_engine import write_fake_engine
    from trtq.runtime import TensorRTSession

    trt, rt = cuda_python("12.9")
    session = TensorRTSession(write_fake_engine(tmp_path / "e.engine", batch=(1, 2)))
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    session.input_buffer(2)[...] = x
    (out,) = session.run(2)
    expected = np.broadcast_to(x.reshape(2, -1).mean(axis=1)[:, None, None], out.shape).copy()
    np.testing.assert_allclose(out, expected, rtol=1e-6)  # the fake engine's output: mean of each image
    session.close()
    assert [c for c in rt.CALLS if c[0] == "cudaStreamDestroy"]  # the device itself is closed
    np.testing.assert_allclose(out, expected, rtol=1e-6)  # still the results, not freed memory
    live = len(rt.PINNED)
    assert live >= 1  # the block under `out` is kept alive by it ...
    del out
    import gc

    gc.collect()
    assert len(rt.PINNED) == 0  # ... and released with it


def test_cuda_python_stream_handle_uses_get_cuda_native_handle(cuda_python: Any) -> None:
    from trtq.device import get_device, native_handle

    for version, via_int in (("12.9", False), ("12.6", True), ("11.8", True)):
        _, rt = cuda_python(version)
        before = rt.int_calls()
        with get_device("cuda-python") as dev:
            stream = dev.stream()
            assert stream.handle == rt.handle_of(stream.raw)  # type: ignore[attr-defined]
            assert stream.handle == stream.handle
        assert (rt.int_calls() > before) is via_int, version  # int(cudaStream_t) only where no getter exists
    assert native_handle(1234) == 1234
