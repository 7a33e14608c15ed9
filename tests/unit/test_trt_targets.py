"""Which TensorRT, which GPU: combinations the target cannot take are refused in one line, before any work.

Version-compatible engines for ultralytics, FP16 Q/DQ for the 8.x ONNX parsers, hardware compatibility on
Jetson and pre-Ampere GPUs, DLA on TensorRT releases without it, ``inspect`` on 8.5 and its logger, and CUDA
graph capture failures and DLA engines in the benchmark. Each is checked against the recording fakes, which
follow the real bindings of each version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.conftest import make_tiny_conv_onnx
from tests.fakes import make_qdq_onnx, write_images
from tests.fakes.fake_device import FakeDevice
from tests.fakes.fake_tensorrt import make_fake_tensorrt
from trtq.errors import TrtqError
from trtq.trt.builder import build_engine
from trtq.trt.options import BuildOptions


def _build(trt: Any, tmp_path: Path, name: str = "m.engine", model: Path | None = None, **kw: Any) -> Any:
    src = model if model is not None else tmp_path / "tiny.onnx"
    if not src.is_file():
        make_tiny_conv_onnx(src)
    kw.setdefault("device", FakeDevice("Fake RTX", (8, 6), integrated=False))
    kw.setdefault("progress", False)
    return build_engine(src, trt_module=trt, output=tmp_path / "engines" / name, **kw)


# ------------------------------------------------------------------------------------------------------
# --version-compatible with --ultralytics-header: ultralytics never allows host code
# ------------------------------------------------------------------------------------------------------
def test_version_compatible_with_ultralytics_header_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TrtqError, match=r"--version-compatible .*engine_host_code_allowed.*ultralytics never sets"):
        BuildOptions(version_compatible=True, ultralytics_header=True).validate()
    BuildOptions(version_compatible=True).validate()
    BuildOptions(ultralytics_header=True).validate()

    from tests.fakes import fake_tensorrt
    from trtq.cli import main

    trt = fake_tensorrt.install(monkeypatch, "10.3.0")
    model = make_tiny_conv_onnx(tmp_path / "tiny.onnx")
    out = tmp_path / "vc.engine"
    res = CliRunner().invoke(main, ["build", str(model), "--fp16", "--version-compatible", "--ultralytics-header",
                                    "-o", str(out)])
    assert res.exit_code != 0
    errors = [line for line in res.output.splitlines() if line.startswith("trtq: error:")]
    assert len(errors) == 1 and "--ultralytics-header" in errors[0], res.output
    assert "Traceback" not in res.output and not out.exists() and not trt.STATE.builders


# ------------------------------------------------------------------------------------------------------
# explicit INT8 from an FP16 ONNX on TensorRT 8.x: FP16 Q/DQ needs opset 19, the 8.x parsers stop at 17
# ------------------------------------------------------------------------------------------------------
@pytest.fixture
def fp16_onnx(tmp_path: Path) -> Path:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    f32 = make_tiny_conv_onnx(tmp_path / "t32.onnx")
    f16 = tmp_path / "t16.onnx"
    onnx.save(convert_float_to_float16(onnx.load(str(f32)), keep_io_types=False), str(f16))
    return f16


@pytest.mark.parametrize("version", ["8.5.3", "8.6.1"])
def test_explicit_int8_from_fp16_onnx_is_refused_before_tensorrt_10(
    version: str, tmp_path: Path, fp16_onnx: Path
) -> None:
    images = write_images(tmp_path / "img", 4, size=(32, 32))
    trt: Any = make_fake_tensorrt(version)
    with pytest.raises(TrtqError, match=rf"FP16 t16\.onnx .*opset 19.*TensorRT {version}'s ONNX parser stops at "
                                        r"opset 17: build from the FP32 ONNX"):
        _build(trt, tmp_path, model=fp16_onnx, int8=True, mode="explicit", calib=images)
    assert not list((tmp_path / "engines").glob("*.int8.onnx"))  # refused before the Q/DQ ONNX was written
    assert not trt.STATE.builders
    # the FP32 ONNX builds explicit INT8 on the same TensorRT, at an opset its parser reads
    result = _build(make_fake_tensorrt(version), tmp_path, "f32.engine", model=tmp_path / "t32.onnx", int8=True,
                    mode="explicit", calib=images)
    assert result.engine_path.is_file()


def test_explicit_int8_from_fp16_onnx_builds_on_tensorrt_10(tmp_path: Path, fp16_onnx: Path) -> None:
    import onnx

    images = write_images(tmp_path / "img", 4, size=(32, 32))
    trt: Any = make_fake_tensorrt("10.3.0")
    result = _build(trt, tmp_path, model=fp16_onnx, int8=True, mode="explicit", calib=images)
    assert result.engine_path.is_file() and result.qdq_path is not None
    q = onnx.load(str(result.qdq_path))
    assert next(o.version for o in q.opset_import if o.domain in ("", "ai.onnx")) == 19


def test_onnx_past_opset_17_is_refused_before_tensorrt_10(tmp_path: Path) -> None:
    import onnx

    src = make_tiny_conv_onnx(tmp_path / "tiny.onnx")
    qdq = make_qdq_onnx(src, tmp_path / "q.onnx")
    model = onnx.load(str(qdq))
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = 19
    onnx.save(model, str(tmp_path / "q19.onnx"))
    with pytest.raises(TrtqError, match=r"TensorRT 8\.6\.1's ONNX parser reads opsets up to 17 and q19\.onnx is "
                                        r"opset 19: re-export"):
        _build(make_fake_tensorrt("8.6.1"), tmp_path, model=tmp_path / "q19.onnx")
    assert _build(make_fake_tensorrt("10.3.0"), tmp_path, "q19.engine", model=tmp_path / "q19.onnx").engine_path


def test_fake_parser_of_tensorrt_8_stops_at_opset_17() -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    for version, ok in (("8.6.1", False), ("10.3.0", True)):
        trt: Any = make_fake_tensorrt(version)
        net = trt.Builder(trt.Logger()).create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
        assert trt.OnnxParser(net, trt.Logger()).parse(onnx.ModelProto.SerializeToString(model)) is ok


# ------------------------------------------------------------------------------------------------------
# --hardware-compatible (AMPERE_PLUS): discrete Ampere or newer GPUs only
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("device", "message"), [
    (FakeDevice("Orin", (8, 7), integrated=True), r"integrated Jetson GPU"),
    (FakeDevice("Orin", (8, 7)), r"integrated Jetson GPU"),  # no flag: known from the compute capability
    (FakeDevice("Tesla T4", (7, 5), integrated=False), r"built on an Ampere or newer GPU \(SM 8\.0\+\).*SM 7\.5"),
])
def test_hardware_compatible_build_refused_on_jetson_and_pre_ampere(
    device: FakeDevice, message: str, tmp_path: Path
) -> None:
    trt: Any = make_fake_tensorrt("10.3.0")
    with pytest.raises(TrtqError, match=message):
        _build(trt, tmp_path, fp16=True, hardware_compatible=True, device=device)
    assert not trt.STATE.plans
    ok = _build(make_fake_tensorrt("10.3.0"), tmp_path, fp16=True, hardware_compatible=True,
                device=FakeDevice("RTX A4000", (8, 6), integrated=False))
    assert ok.metadata.builder["hardware_compatible"] == "ampere_plus"


def test_hardware_compatible_engine_is_incompatible_with_orin(tmp_path: Path) -> None:
    from trtq.engine_meta import check_compatible

    meta = _build(make_fake_tensorrt("10.3.0"), tmp_path, fp16=True, hardware_compatible=True,
                  device=FakeDevice("RTX A4000", (8, 6), integrated=False)).metadata
    check_compatible(meta, tensorrt_version="10.3.0", compute_capability=(8, 9))  # a discrete Ada GPU
    with pytest.raises(TrtqError, match=r"runs on discrete Ampere or newer GPUs only; this is an integrated Jetson "
                                        r"GPU \(SM 8\.7"):
        check_compatible(meta, tensorrt_version="10.3.0", compute_capability=(8, 7), integrated=True)
    with pytest.raises(TrtqError, match="integrated Jetson GPU"):  # even at the build GPU's own compute capability
        check_compatible(meta, tensorrt_version="10.3.0", compute_capability=(8, 6), integrated=True)


def test_runtime_refuses_a_hardware_compatible_engine_on_orin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The session asks the device whether it is integrated (cuda-python: cudaDeviceProp.integrated)."""
    from tests.fakes import fake_cudart, fake_tensorrt
    from trtq.runtime import TensorRTSession

    built: Any = make_fake_tensorrt("10.3.0")
    engine = _build(built, tmp_path, fp16=True, hardware_compatible=True,
                    device=FakeDevice("RTX A4000", (8, 6), integrated=False)).engine_path
    trt = fake_tensorrt.install(monkeypatch, "10.3.0")
    fake_cudart.install(monkeypatch, "12.9")  # its device: "Fake Orin", SM 8.7, integrated
    with pytest.raises(TrtqError, match="integrated Jetson GPU"):
        TensorRTSession(engine)
    assert not [c for c in trt.CALLS if c[0] == "runtime.deserialize_cuda_engine"]


def test_is_integrated_reads_the_device_flag_then_the_compute_capability() -> None:
    from trtq.device import is_integrated

    assert is_integrated(FakeDevice("Orin", (8, 7)))
    assert is_integrated(FakeDevice("Xavier", (7, 2)))
    assert not is_integrated(FakeDevice("RTX 3090", (8, 6)))
    assert not is_integrated(FakeDevice("odd", (8, 7), integrated=False))
    assert is_integrated(FakeDevice("DGX Spark", (12, 1), integrated=True))


# ------------------------------------------------------------------------------------------------------
# DLA: TensorRT 11.0 - 11.3 have none, whatever the device
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["11.0", "11.3.0"])
def test_dla_on_tensorrt_without_dla_names_the_tensorrt_version(version: str, tmp_path: Path) -> None:
    trt: Any = make_fake_tensorrt(version, num_dla_cores=2)  # an AGX Orin: two DLA cores in hardware
    assert trt.Builder(trt.Logger()).num_DLA_cores == 0  # ... which this TensorRT does not expose
    with pytest.raises(TrtqError, match=rf"TensorRT {version} has no DLA support") as info:
        _build(trt, tmp_path, int8=False, fp16=True, batch=1, dla_core=0, device=FakeDevice("Orin", (8, 7)))
    assert "this device has no DLA" not in str(info.value)


def test_dla_missing_on_the_device_names_the_device(tmp_path: Path) -> None:
    with pytest.raises(TrtqError, match=r"TensorRT 10\.3\.0 sees no DLA on this device"):
        _build(make_fake_tensorrt("10.3.0"), tmp_path, fp16=True, batch=1, dla_core=0)
    result = _build(make_fake_tensorrt("10.3.0", num_dla_cores=2), tmp_path, "dla.engine", fp16=True, batch=1,
                    dla_core=1, device=FakeDevice("Orin", (8, 7)))
    assert result.metadata.dla_core == 1


# ------------------------------------------------------------------------------------------------------
# inspect: engine_host_code_allowed only from 8.6; the process logger keeps its level
# ------------------------------------------------------------------------------------------------------
def test_fake_runtime_has_engine_host_code_allowed_from_8_6_only() -> None:
    old: Any = make_fake_tensorrt("8.5.3")
    runtime = old.Runtime(old.Logger())
    assert not hasattr(runtime, "engine_host_code_allowed")
    with pytest.raises(AttributeError):
        runtime.engine_host_code_allowed = True
    new: Any = make_fake_tensorrt("8.6.1")
    assert new.Runtime(new.Logger()).engine_host_code_allowed is False


def test_inspect_on_tensorrt_8_5_does_not_set_host_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine recorded as version compatible, inspected where the runtime has no such property."""
    import trtq.trt.inspect as inspect_module
    from tests.fakes.fake_tensorrt import PLAN_MAGIC
    from trtq.engine_meta import read_engine, write_engine
    from trtq.trt.inspect import inspect_path

    monkeypatch.setattr(inspect_module, "PLAN_MAGICS", (*inspect_module.PLAN_MAGICS, PLAN_MAGIC))
    trt: Any = make_fake_tensorrt("8.5.3")
    path = _build(trt, tmp_path, fp16=True).engine_path
    plan, meta = read_engine(path)
    assert meta is not None
    meta.builder["version_compatible"] = True
    write_engine(path, plan, meta)
    res = inspect_path(path, trt_module=trt)
    assert res.data.get("layers"), res.text()


def test_inspect_restores_the_process_logger_severity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trtq.trt.inspect as inspect_module
    from tests.fakes.fake_tensorrt import PLAN_MAGIC
    from trtq.trt import compat
    from trtq.trt.inspect import inspect_path

    monkeypatch.setattr(inspect_module, "PLAN_MAGICS", (*inspect_module.PLAN_MAGICS, PLAN_MAGIC))
    trt: Any = make_fake_tensorrt("10.3.0")
    path = _build(trt, tmp_path, fp16=True).engine_path
    logger = compat.trt_logger(trt, "VERBOSE")
    seen: list[Any] = []
    original = trt.Runtime.deserialize_cuda_engine

    def spy(self: Any, data: Any) -> Any:
        seen.append(logger.min_severity)
        return original(self, data)

    monkeypatch.setattr(trt.Runtime, "deserialize_cuda_engine", spy)
    inspect_path(path, trt_module=trt)
    assert seen == [trt.Logger.Severity.ERROR]  # quiet while inspecting ...
    assert logger.min_severity == trt.Logger.Severity.VERBOSE  # ... and back afterwards
    monkeypatch.setattr(trt.Runtime, "deserialize_cuda_engine", lambda self, data: None)
    res = inspect_path(path, trt_module=trt)  # a failing inspection restores it too
    assert "could not deserialize" in res.text()
    assert logger.min_severity == trt.Logger.Severity.VERBOSE


# ------------------------------------------------------------------------------------------------------
# CUDA graphs in the benchmark: a failed capture ends cleanly, the enqueue's error is kept; no DLA capture
# ------------------------------------------------------------------------------------------------------
@pytest.fixture
def cuda_python(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    from tests.fakes import fake_cudart, fake_tensorrt

    trt = fake_tensorrt.install(monkeypatch, "10.3.0", fake_latency_ms=2.0)
    rt = fake_cudart.install(monkeypatch, "12.9")
    return trt, rt


def _failing_capture(trt: Any, rt: Any, *, invalidate: bool) -> None:
    """execute_async_v3 fails while its stream is being captured (and, with ``invalidate``, breaks the capture)."""
    from tests.fakes import fake_device

    context = trt.STATE.contexts[-1]
    original = context.execute_async_v3

    def execute(handle: int) -> bool:
        if int(handle) in fake_device.CAPTURING:
            if invalidate:
                rt.invalidate_capture(int(handle))
            return False
        return original(handle)

    context.execute_async_v3 = execute


@pytest.mark.parametrize("invalidate", [True, False])
def test_failed_capture_keeps_the_enqueue_error_and_clears_cuda_state(
    invalidate: bool, tmp_path: Path, cuda_python: tuple[Any, Any]
) -> None:
    from tests.fakes import fake_device
    from tests.unit.test_runtime_engine import write_fake_engine
    from trtq.bench.backends import TensorRTBackend

    trt, rt = cuda_python
    backend = TensorRTBackend(write_fake_engine(tmp_path / "e.engine"))
    _failing_capture(trt, rt, invalidate=invalidate)
    runner = backend.prepare(1, transfers=True, cuda_graph=True)
    notes = [n for n in runner.notes if n.startswith("CUDA graph not used")]
    assert notes == ["CUDA graph not used: TensorRT failed to run e.engine (execute_async_v3 returned False)"], notes
    ends = [c for c in rt.CALLS if c[0] == "cudaStreamEndCapture"]
    assert len(ends) == 1 and not fake_device.CAPTURING  # the capture was ended
    assert int(rt.cudaPeekAtLastError()[0]) == 0  # and the error it left behind cleared
    made = [c for c in rt.CALLS if c[0] == "cudaGraphDestroy"]
    assert len(made) == (0 if invalidate else 1)  # a graph from a refused enqueue is destroyed, never used
    assert runner.graph is None
    assert runner.run().compute == pytest.approx(2.0)  # plain enqueues instead
    runner.close()
    backend.close()


def test_cuda_graph_re_raises_the_capture_error(cuda_python: tuple[Any, Any]) -> None:
    from trtq.bench.backends import CudaGraph
    from trtq.device import get_device

    _, rt = cuda_python
    with get_device("cuda-python") as dev:
        stream = dev.stream()

        def enqueue() -> None:
            rt.invalidate_capture(stream.handle)
            raise ValueError("enqueue failed inside the capture")

        with pytest.raises(ValueError, match="enqueue failed inside the capture"):
            CudaGraph(stream, enqueue)
        assert int(rt.cudaPeekAtLastError()[0]) == 0
        graph = CudaGraph(stream, lambda: None)  # the stream captures again afterwards
        graph.close()


def test_dla_engines_are_not_captured(tmp_path: Path, cuda_python: tuple[Any, Any]) -> None:
    from tests.unit.test_runtime_engine import fake_plan
    from trtq.bench.backends import TensorRTBackend
    from trtq.engine_meta import EngineMetadata, write_engine

    trt, rt = cuda_python
    meta = EngineMetadata(tensorrt_version="10.3.0", gpu_name="Orin", compute_capability=(8, 7), dla_core=0,
                          precision="fp16", names={0: "a"}, stride=32, imgsz=(32, 32), batch=1)
    engine = write_engine(tmp_path / "dla.engine", fake_plan("10.3.0"), meta)
    backend = TensorRTBackend(engine)
    runner = backend.prepare(1, transfers=True, cuda_graph=True)
    assert "CUDA graph not used: DLA engine (plain enqueues)" in runner.notes
    assert not [c for c in rt.CALLS if c[0] == "cudaStreamBeginCapture"]
    before = trt.STATE.contexts[-1].executions
    runner.run()
    assert trt.STATE.contexts[-1].executions == before + 1
    runner.close()
    backend.close()


def test_dla_engine_with_only_an_ultralytics_header_is_not_captured(
    tmp_path: Path, cuda_python: tuple[Any, Any]
) -> None:
    from tests.unit.test_runtime_engine import fake_plan
    from trtq.bench.backends import TensorRTBackend
    from trtq.engine_meta import ultralytics_header

    _, rt = cuda_python
    engine = tmp_path / "u.engine"  # what ultralytics exports for DLA: its header says so, no trtq record
    header = {"dla": "0", "names": {0: "a"}, "stride": 32, "imgsz": [32, 32], "batch": 1, "task": "detect"}
    engine.write_bytes(ultralytics_header(header) + fake_plan("10.3.0"))
    backend = TensorRTBackend(engine)
    runner = backend.prepare(1, transfers=True, cuda_graph=True)
    assert "CUDA graph not used: DLA engine (plain enqueues)" in runner.notes
    assert not [c for c in rt.CALLS if c[0] == "cudaStreamBeginCapture"]
    runner.close()
    backend.close()
