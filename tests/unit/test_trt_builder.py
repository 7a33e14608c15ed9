"""trtq.trt.builder.build_engine: contract tests with the recording fake TensorRT and fake device."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from calibrators.table import CalibrationTable, parse_trt_cache
from tests.conftest import make_tiny_conv_onnx
from tests.fakes import make_qdq_onnx, write_images
from tests.fakes.fake_device import FakeDevice
from tests.fakes.fake_tensorrt import make_fake_tensorrt, plan_info, version_code
from trtq.engine_meta import default_engine_path, engine_record_path, read_engine
from trtq.errors import MissingDependencyError, TrtqError
from trtq.headpolicy import Branch, FloatReason, Reason
from trtq.trt.builder import build_engine

HEAD = {
    "/model.4/Conv": FloatReason(Reason.FINAL_CONV, Branch.BOX),
    "/model.3/Concat": FloatReason(Reason.OUTPUT_CONCAT),
}


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return write_images(tmp_path / "images", 8)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return make_tiny_conv_onnx(tmp_path / "tiny.onnx")


@pytest.fixture
def tiny_dyn(tmp_path: Path) -> Path:
    return make_tiny_conv_onnx(tmp_path / "tinydyn.onnx", batch="N")


@pytest.fixture(autouse=True)
def head_policy(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    import trtq.headpolicy

    monkeypatch.setattr(trtq.headpolicy, "float_nodes", lambda model: dict(HEAD))
    return HEAD


@pytest.fixture
def fake_quantize(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Replace trtq.quantize.quantize by a Q/DQ writer that records its arguments."""
    import trtq.quantize

    calls: list[dict[str, Any]] = []

    def quantize(model: Any, source: Any, options: Any, **kw: Any) -> SimpleNamespace:
        calls.append({"model": Path(model), "source": source, "options": options, **kw})
        out = Path(kw["output"])
        out.parent.mkdir(parents=True, exist_ok=True)
        return SimpleNamespace(path=make_qdq_onnx(Path(model), out), report={}, report_path=None)

    monkeypatch.setattr(trtq.quantize, "quantize", quantize)
    return calls


def _build(trt: Any, model: Path, tmp_path: Path, name: str = "m.engine", **kw: Any) -> Any:
    kw.setdefault("device", FakeDevice())
    kw.setdefault("progress", False)
    return build_engine(model, trt_module=trt, output=tmp_path / "engines" / name, **kw)


def _calls(trt: Any, name: str) -> list[tuple[Any, ...]]:
    return [c for c in trt.CALLS if c[0] == name]


# ---------------------------------------------------------------------------------------------------- precision
@pytest.mark.parametrize("version", ["8.5.3", "10.3.0"])
def test_fp32_and_fp16_flags(version: str, tiny: Path, tmp_path: Path) -> None:
    trt = make_fake_tensorrt(version)
    r32 = _build(trt, tiny, tmp_path, "a.engine")
    assert plan_info(read_engine(r32.engine_path)[0])["flags"] == []
    assert r32.precision == "fp32" and r32.mode is None
    create = _calls(trt, "create_network")[-1][1]
    if version.startswith("8."):
        assert create == 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)  # ONNX needs it on 8.x
    else:
        assert create == 0
    trt2 = make_fake_tensorrt(version)
    r16 = _build(trt2, tiny, tmp_path, "b.engine", fp16=True)
    assert plan_info(read_engine(r16.engine_path)[0])["flags"] == ["FP16"]
    assert r16.metadata.precision == "fp16"
    assert trt2.STATE.configs[-1].profiling_verbosity.name == "DETAILED"


def test_fp16_on_tensorrt_11_refuses_to_silently_build_fp32(tiny: Path, tmp_path: Path) -> None:
    trt = make_fake_tensorrt("11.0")
    with pytest.raises(TrtqError, match="silently be FP32"):
        _build(trt, tiny, tmp_path, fp16=True)
    r = _build(make_fake_tensorrt("11.0"), tiny, tmp_path)  # FP32 is what was asked: fine
    assert r.metadata.strongly_typed and r.precision == "fp32"


def test_default_engine_path() -> None:
    assert default_engine_path("m/yolov8n-coco.pt", "int8") == Path("engines/yolov8n-coco.int8.engine")
    assert default_engine_path("yolov8n-coco.int8.onnx", "int8", dla_core=0) == Path("engines/yolov8n-coco.int8.dla0.engine")


# ---------------------------------------------------------------------------------------------------- profiles
def test_dynamic_profile_min_opt_max(tiny_dyn: Path, tmp_path: Path) -> None:
    trt = make_fake_tensorrt("10.3.0")
    r = _build(trt, tiny_dyn, tmp_path, fp16=True, min_batch=1, opt_batch=4, max_batch=8)
    (call,) = _calls(trt, "profile.set_shape")
    assert call[1:] == ("images", (1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32))
    assert r.metadata.profiles == [{"images": {"min": [1, 3, 32, 32], "opt": [4, 3, 32, 32], "max": [8, 3, 32, 32]}}]
    assert r.metadata.batch == 8 and r.metadata.dynamic


def test_static_batch_on_dynamic_model_and_no_profile_on_static(tiny_dyn: Path, tiny: Path, tmp_path: Path) -> None:
    trt = make_fake_tensorrt("10.3.0")
    _build(trt, tiny_dyn, tmp_path, "a.engine", batch=2)
    assert _calls(trt, "profile.set_shape")[0][1:] == ("images", (2, 3, 32, 32), (2, 3, 32, 32), (2, 3, 32, 32))
    trt2 = make_fake_tensorrt("10.3.0")
    _build(trt2, tiny, tmp_path, "b.engine")
    assert _calls(trt2, "profile.set_shape") == []  # static input: no profile needed


def test_profile_errors(tiny: Path, tiny_dyn: Path, tmp_path: Path) -> None:
    with pytest.raises(TrtqError, match="fixed batch of 1"):
        _build(make_fake_tensorrt("10.3.0"), tiny, tmp_path, batch=4)
    with pytest.raises(TrtqError, match="min <= opt <= max"):
        _build(make_fake_tensorrt("10.3.0"), tiny_dyn, tmp_path, min_batch=4, opt_batch=2, max_batch=8)
    with pytest.raises(TrtqError, match="either --batch"):
        _build(make_fake_tensorrt("10.3.0"), tiny_dyn, tmp_path, batch=2, max_batch=8)
    with pytest.raises(TrtqError, match="fixed at 32x32"):
        _build(make_fake_tensorrt("10.3.0"), tiny, tmp_path, imgsz=640)


# ---------------------------------------------------------------------------------------------------- implicit INT8
@pytest.mark.parametrize("version", ["8.5.3", "10.3.0"])
def test_int8_implicit_streams_images_and_writes_cache(version: str, tiny_dyn: Path, images: Path,
                                                        tmp_path: Path) -> None:
    trt = make_fake_tensorrt(version)
    dev = FakeDevice()
    r = _build(trt, tiny_dyn, tmp_path, int8=True, calib=images, mode="implicit", algo="entropy", min_batch=1, opt_batch=2,
               max_batch=4, device=dev)
    info = plan_info(read_engine(r.engine_path)[0])
    assert {"FP16", "INT8"} <= set(info["flags"])  # INT8 always brings FP16
    assert info["calibrated"] and r.mode == "implicit"
    assert _calls(trt, "config.int8_calibrator")[0][1] == "IInt8EntropyCalibrator2"
    # 8 images, OPT batch 2 -> 4 batches of exactly the OPT shape, then []
    assert r.calibration_batches == 4
    assert [b["images"].shape for b in trt.STATE.calibration_batches] == [(2, 3, 32, 32)] * 4
    assert [c[1] for c in _calls(trt, "calibrator.get_batch")] == [1, 1, 1, 1, 0]  # [] at the end
    assert dev.live_buffers == [] and sum(1 for c in dev.calls if c[0] == "alloc") == 1
    # calibration profile: passed to set_calibration_profile on 8.x only (deprecated and avoided on 10.x)
    assert bool(_calls(trt, "config.set_calibration_profile")) is version.startswith("8.")
    # cache + record written, reusable
    cache = r.cache_path
    assert cache is not None and cache.name == "tinydyn.entropy.cache" and engine_record_path(cache).is_file()
    table = CalibrationTable.load(cache)
    assert table.algorithm == "entropy" and table.num_images == 8
    header, _ = parse_trt_cache(cache.read_bytes())
    assert header == f"TRT-{version_code(version)}-EntropyCalibration2"
    # head policy as precision constraints, named after the ONNX nodes
    assert set(r.float_layers) == set(HEAD)
    prec = {c[1]: c[2] for c in _calls(trt, "layer.precision")}
    assert prec == {"/model.4/Conv": "HALF", "/model.3/Concat": "FLOAT"}
    assert "OBEY_PRECISION_CONSTRAINTS" in info["flags"]
    assert r.metadata.float_layers == r.float_layers and r.metadata.cache_sha256
    layers = {layer["name"]: layer["precision"] for layer in info["layers"]}
    assert layers["/model.0/conv/Conv"] == "INT8" and layers["/model.4/Conv"] == "HALF"


def test_valid_cache_is_reused_without_opening_an_image(tiny: Path, images: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    first = _build(make_fake_tensorrt("8.5.3"), tiny, tmp_path, "a.engine", int8=True, calib=images, algo="entropy")
    assert first.mode == "implicit" and first.calibration_batches == 8

    import trtq.images

    def explode(*a: Any, **k: Any) -> Any:
        raise AssertionError("an image was opened although the cache is valid")

    monkeypatch.setattr(trtq.images.ImageBatcher, "__iter__", explode)
    monkeypatch.setattr(trtq.images, "load_image", explode)
    trt = make_fake_tensorrt("8.5.3")
    again = _build(trt, tiny, tmp_path, "b.engine", int8=True, cache=first.cache_path)
    assert trt.STATE.used_cache
    assert _calls(trt, "calibrator.get_batch") == []
    assert again.calibration_batches == 0 and "no images" in (again.metadata.calibrator or "")
    assert again.metadata.algorithm == "entropy"  # without --algo, the cache keeps the algorithm it was made with
    # with --calib too, the default cache of the first build is still found and reused
    trt3 = make_fake_tensorrt("8.5.3")
    _build(trt3, tiny, tmp_path, "a.engine", int8=True, calib=images, algo="entropy")
    assert trt3.STATE.used_cache


def test_stale_cache_is_refused_with_what_differs(tiny: Path, images: Path, tmp_path: Path) -> None:
    first = _build(make_fake_tensorrt("8.5.3"), tiny, tmp_path, "a.engine", int8=True, calib=images, algo="entropy")
    other = make_tiny_conv_onnx(tmp_path / "other.onnx", seed=1)  # another model (other weights)
    with pytest.raises(TrtqError) as exc:
        _build(make_fake_tensorrt("8.5.3"), other, tmp_path, "b.engine", int8=True, cache=first.cache_path)
    assert "model sha256 differs" in str(exc.value) and "--force-cache" in str(exc.value)
    with pytest.raises(TrtqError, match="algorithm differs"):
        _build(make_fake_tensorrt("8.5.3"), tiny, tmp_path, "c.engine", int8=True, cache=first.cache_path,
               algo="minmax")
    trt = make_fake_tensorrt("8.5.3")
    forced = _build(trt, other, tmp_path, "d.engine", int8=True, cache=first.cache_path, force_cache=True)
    assert trt.STATE.used_cache and forced.precision == "int8"


def test_refused_cache_suggests_the_fix_for_what_differs(tiny: Path, images: Path, tmp_path: Path) -> None:
    """Only the algorithm differs: build with the cache's own; anything else differs: recalibrate."""
    first = _build(make_fake_tensorrt("8.5.3"), tiny, tmp_path, "a.engine", int8=True, calib=images, algo="entropy")
    with pytest.raises(TrtqError) as algo_only:
        _build(make_fake_tensorrt("8.5.3"), tiny, tmp_path, "b.engine", int8=True, cache=first.cache_path,
               algo="minmax")
    assert "Drop --algo/--percentile" in str(algo_only.value) and "Recalibrate" not in str(algo_only.value)
    other = make_tiny_conv_onnx(tmp_path / "other.onnx", seed=1)
    with pytest.raises(TrtqError) as model_and_algo:
        _build(make_fake_tensorrt("8.5.3"), other, tmp_path, "c.engine", int8=True, cache=first.cache_path,
               algo="minmax")
    assert "Recalibrate" in str(model_and_algo.value) and "Drop --algo" not in str(model_and_algo.value)


def test_cache_without_record_is_refused(tiny: Path, tmp_path: Path) -> None:
    cache = tmp_path / "foreign.cache"
    cache.write_bytes(b"TRT-8503-EntropyCalibration2\nimages: 3c010a14\n")
    with pytest.raises(TrtqError, match="no record"):
        _build(make_fake_tensorrt("8.5.3"), tiny, tmp_path, int8=True, cache=cache)
    trt = make_fake_tensorrt("8.5.3")
    _build(trt, tiny, tmp_path, int8=True, cache=cache, force_cache=True)
    assert trt.STATE.used_cache


def test_percentile_is_computed_on_the_cpu_and_served_as_a_cache(tiny: Path, images: Path, tmp_path: Path) -> None:
    trt = make_fake_tensorrt("8.5.3")
    r = _build(trt, tiny, tmp_path, int8=True, calib=images, algo="percentile", num_images=4)
    assert trt.STATE.used_cache and _calls(trt, "calibrator.get_batch") == []
    table = CalibrationTable.load(r.cache_path)
    assert table.algorithm == "percentile" and table.num_images == 4
    served = trt.STATE.cache_read.splitlines()[0]
    assert served == f"TRT-{version_code('8.5.3')}-EntropyCalibration2"  # header rewritten for this TensorRT


def test_callback_exception_is_contained_then_raised_after_build(tiny: Path, images: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import trtq.images

    real_iter = trtq.images.ImageBatcher.__iter__

    def one_then_boom(self: Any) -> Any:
        it = real_iter(self)
        yield next(it)
        raise RuntimeError("decoder crashed")

    monkeypatch.setattr(trtq.images.ImageBatcher, "__iter__", one_then_boom)
    trt = make_fake_tensorrt("8.5.3")
    dev = FakeDevice()
    with pytest.raises(RuntimeError, match="decoder crashed"):
        _build(trt, tiny, tmp_path, int8=True, calib=images, algo="entropy", device=dev)
    assert len(trt.STATE.calibration_batches) == 1  # TensorRT saw one batch then end of data
    assert _calls(trt, "callback_exception") == []  # nothing reached the bindings' handler
    assert dev.live_buffers == []
    assert not (tmp_path / "engines" / "m.engine").exists()  # no engine from a broken calibration


def test_int8_needs_calibration_data(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(TrtqError, match="--calib DIR"):
        _build(make_fake_tensorrt("8.5.3"), tiny, tmp_path, int8=True)


# ---------------------------------------------------------------------------------------------------- explicit INT8
def test_auto_mode_is_explicit_on_10_x(tiny: Path, images: Path, tmp_path: Path,
                                       fake_quantize: list[dict[str, Any]]) -> None:
    trt = make_fake_tensorrt("10.3.0")
    r = _build(trt, tiny, tmp_path, int8=True, calib=images, num_images=4)
    assert r.mode == "explicit" and r.qdq_path is not None and r.qdq_path.name == "tiny.int8.onnx"
    options = fake_quantize[0]["options"]
    assert options.cache is not None and options.batch == 1  # the Q/DQ writer reuses the CPU ranges
    info = plan_info(read_engine(r.engine_path)[0])
    assert {"FP16", "INT8"} <= set(info["flags"]) and not info["strongly_typed"]  # weak typing: FP16 fallback
    assert _calls(trt, "config.int8_calibrator") == [] and _calls(trt, "layer.precision") == []
    assert _calls(trt, "parse_from_file")[0][1].endswith("tiny.int8.onnx")
    assert r.metadata.model_path.endswith("tiny.int8.onnx")


def test_qdq_onnx_builds_explicit_strongly_typed_when_asked(tiny: Path, tmp_path: Path) -> None:
    qdq = make_qdq_onnx(tiny, tmp_path / "tiny.int8.onnx")
    trt = make_fake_tensorrt("10.4.0")  # 10.2-10.6 reject precision flags on strongly typed networks
    r = _build(trt, qdq, tmp_path, strongly_typed=True)
    info = plan_info(read_engine(r.engine_path)[0])
    assert r.precision == "int8" and r.mode == "explicit" and info["strongly_typed"] and info["flags"] == []
    assert _calls(trt, "create_network")[0][1] == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert r.metadata.builder["float_layers_dtype"] == "fp32"  # honest: non-Q/DQ layers run in FP32 here
    with pytest.raises(TrtqError, match="Q/DQ ONNX"):
        _build(make_fake_tensorrt("10.3.0"), qdq, tmp_path, mode="implicit")


def test_tensorrt_11_explicit_only(tiny: Path, images: Path, tmp_path: Path,
                                   fake_quantize: list[dict[str, Any]]) -> None:
    with pytest.raises(TrtqError, match="no implicit INT8"):
        _build(make_fake_tensorrt("11.0"), tiny, tmp_path, int8=True, calib=images, mode="implicit")
    trt = make_fake_tensorrt("11.0")
    r = _build(trt, tiny, tmp_path, int8=True, calib=images, num_images=4)
    info = plan_info(read_engine(r.engine_path)[0])
    assert r.mode == "explicit" and info["strongly_typed"] and info["flags"] == []
    with pytest.raises(TrtqError, match="only builds strongly typed"):
        _build(make_fake_tensorrt("11.0"), tiny, tmp_path, int8=True, calib=images, strongly_typed=False)


# ---------------------------------------------------------------------------------------------------- DLA
def test_dla_settings(tiny: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.fakes.fake_tensorrt as ft

    monkeypatch.setattr(ft, "DLA_UNSUPPORTED", {"POOLING"})  # this fake DLA cannot run MaxPool
    trt = make_fake_tensorrt("10.3.0", num_dla_cores=2)
    r = _build(trt, tiny, tmp_path, int8=True, calib=images, dla_core=1, algo="minmax")
    config = trt.STATE.configs[-1]
    assert r.mode == "implicit"  # DLA before TensorRT 11 quantizes through a calibrator
    assert config.default_device_type.name == "DLA" and config.DLA_core == 1
    assert "GPU_FALLBACK" in config.flags
    assert _calls(trt, "config.int8_calibrator")[0][1] == "IInt8EntropyCalibrator2"  # entropy forced on DLA
    gpu = {c[1] for c in _calls(trt, "config.set_device_type")}
    assert gpu == {"/model.2/MaxPool"}  # layers DLA cannot run go to the GPU
    layers = {x["name"]: x["device"] for x in plan_info(read_engine(r.engine_path)[0])["layers"]}
    assert layers["/model.2/MaxPool"] == "GPU" and layers["/model.0/conv/Conv"] == "DLA"
    assert r.metadata.dla_core == 1 and r.metadata.builder["dla_gpu_layers"] == 1
    with pytest.raises(TrtqError, match="cannot run on DLA"):
        _build(make_fake_tensorrt("10.3.0", num_dla_cores=2), tiny, tmp_path, "b.engine", fp16=True, dla_core=0,
               gpu_fallback=False)


def test_dla_errors(tiny: Path, tiny_dyn: Path, tmp_path: Path) -> None:
    with pytest.raises(TrtqError, match="no DLA"):
        _build(make_fake_tensorrt("10.3.0"), tiny, tmp_path, fp16=True, dla_core=0)
    with pytest.raises(TrtqError, match="1 DLA core"):
        _build(make_fake_tensorrt("10.3.0", num_dla_cores=1), tiny, tmp_path, fp16=True, dla_core=1)
    with pytest.raises(TrtqError, match="static shapes"):
        _build(make_fake_tensorrt("10.3.0", num_dla_cores=2), tiny_dyn, tmp_path, fp16=True, dla_core=0,
               min_batch=1, max_batch=4)
    with pytest.raises(TrtqError, match="no FP32"):
        _build(make_fake_tensorrt("10.3.0", num_dla_cores=2), tiny, tmp_path, dla_core=0)


# ---------------------------------------------------------------------------------------------------- builder knobs
def test_workspace_opt_level_and_timing_cache(tiny: Path, tmp_path: Path) -> None:
    tc = tmp_path / "timing.cache"
    trt = make_fake_tensorrt("10.3.0")
    r = _build(trt, tiny, tmp_path, "a.engine", fp16=True, workspace=2, builder_opt_level=5, timing_cache=tc)
    assert trt.STATE.configs[-1].pools["WORKSPACE"] == 2 << 30
    assert _calls(trt, "config.builder_optimization_level") == [("config.builder_optimization_level", 5)]
    assert _calls(trt, "config.create_timing_cache") == [("config.create_timing_cache", 0)]
    saved = json.loads(tc.read_bytes())
    assert saved["entries"] > 0 and r.metadata.builder["timing_cache"] == str(tc)
    trt2 = make_fake_tensorrt("10.3.0")
    size = len(tc.read_bytes())
    _build(trt2, tiny, tmp_path, "b.engine", fp16=True, timing_cache=tc)
    assert _calls(trt2, "config.create_timing_cache") == [("config.create_timing_cache", size)]
    assert json.loads(tc.read_bytes())["entries"] == 2 * saved["entries"]  # loaded, extended, saved
    trt3 = make_fake_tensorrt("10.4.0")  # a cache from another TensorRT is not used, a new one is made
    _build(trt3, tiny, tmp_path, "c.engine", fp16=True, timing_cache=tc)
    assert [c[1] for c in _calls(trt3, "config.create_timing_cache")][1] == 0
    assert json.loads(tc.read_bytes())["version"] == "10.4.0"


def test_opt_level_unsupported_on_8_5_is_ignored(tiny: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    trt = make_fake_tensorrt("8.5.3")
    r = _build(trt, tiny, tmp_path, fp16=True, builder_opt_level=4)
    assert "optimization_level" not in r.metadata.builder
    assert "no builder optimization level" in caplog.text


# ---------------------------------------------------------------------------------------------------- metadata
def test_metadata_and_ultralytics_header(tiny: Path, tmp_path: Path) -> None:
    pytest.importorskip("ultralytics")
    from ultralytics.nn.backends.base import BaseBackend

    trt = make_fake_tensorrt("10.3.0")
    r = _build(trt, tiny, tmp_path, fp16=True, ultralytics_header=True,
               device=FakeDevice("Fake Orin", (8, 7)))
    offset, header = BaseBackend.engine_header(r.engine_path)
    plan = r.engine_path.read_bytes()[offset:]
    assert plan_info(plan)["version"] == "10.3.0"
    assert header["names"] == {"0": "a", "1": "b"} and header["stride"] == 32 and header["imgsz"] == [32, 32]
    record = json.loads(engine_record_path(r.engine_path).read_text())
    assert record["tensorrt_version"] == "10.3.0" and record["gpu_name"] == "Fake Orin"
    assert record["compute_capability"] == [8, 7] and record["precision"] == "fp16"
    assert record["inputs"] == [{"name": "images", "shape": [1, 3, 32, 32], "dtype": "float32"}]
    assert record["outputs"][0]["name"] == "output0"
    assert record["model_sha256"] and record["command"].startswith("trtq build ")
    # the runtime side of the fake loads the bare plan
    engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine(read_engine(r.engine_path)[0])
    assert engine is not None and engine.num_io_tensors == 2


def test_parse_failure_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    make_tiny_conv_onnx(bad)
    trt = make_fake_tensorrt("10.3.0")
    trt.OnnxParser.parse_from_file = lambda self, path: (self.errors.append(  # type: ignore[method-assign]
        type("E", (), {"desc": lambda s: "Unsupported op Foo", "node": lambda s: 3})()) or False)
    with pytest.raises(TrtqError, match="could not parse bad.onnx: Unsupported op Foo"):
        _build(trt, bad, tmp_path)


# ---------------------------------------------------------------------------------------------------- no TensorRT
def test_without_tensorrt_cpu_steps_then_exit_3(tiny: Path, images: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                fake_quantize: list[dict[str, Any]]) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingDependencyError) as exc:
        build_engine(tiny, int8=True, calib=images, num_images=4, output=tmp_path / "engines" / "t.engine",
                     progress=False)
    msg = str(exc.value)
    assert exc.value.exit_code == 3
    cache = tmp_path / "engines" / "tiny.percentile.cache"
    qdq = tmp_path / "engines" / "tiny.int8.onnx"
    assert cache.is_file() and engine_record_path(cache).is_file() and qdq.is_file()
    assert CalibrationTable.load(cache).num_images == 4
    assert f"trtq build {qdq}" in msg
    assert f"trtq build {tiny} --int8 --cache {cache} --mode implicit" in msg
    assert "not installed" in msg
    assert np.isfinite(list(CalibrationTable.load(cache).amax.values())).all()


def test_real_head_policy_maps_and_pins_only_float_compute_layers(yolo_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the shared YOLOv8n: every head node maps to a layer of the same name; shape layers are not pinned."""
    import onnx

    import trtq.headpolicy
    from trtq.trt.network import map_float_layers, pin_float_layers

    monkeypatch.undo()  # the real head policy, not the stub of the autouse fixture
    graph = onnx.load(str(yolo_onnx), load_external_data=False)
    nodes = trtq.headpolicy.float_nodes(graph)
    ops = {n.name: n.op_type for n in graph.graph.node}
    trt = make_fake_tensorrt("10.3.0")
    network = trt.Builder(trt.Logger()).create_network(0)
    assert trt.OnnxParser(network, trt.Logger()).parse_from_file(str(yolo_onnx))
    mapped = map_float_layers(network, nodes, set(ops))
    assert set(mapped) == set(nodes)
    pinned = pin_float_layers(trt, network, mapped, fp16=True)
    pinned_ops = {ops[name] for name in pinned}
    assert {"Conv", "Sigmoid", "Softmax", "Concat"} <= pinned_ops
    assert not pinned_ops & {"Shape", "Gather", "Reshape", "Constant", "Slice", "Transpose"}
    finals = [n for n, r in pinned.items() if isinstance(r, FloatReason) and r.code is Reason.FINAL_CONV]
    assert len(finals) == 6
    layers = {network.get_layer(i).name: network.get_layer(i) for i in range(network.num_layers)}
    assert all(layers[n].precision == trt.float16 for n in finals)
    sigmoid = next(n for n in pinned if ops[n] == "Sigmoid")
    assert layers[sigmoid].precision == trt.float32 and layers[sigmoid].output_types == {0: trt.float32}


def test_stale_default_cache_is_recalibrated_not_served(tmp_path: Path, images: Path) -> None:
    model = make_tiny_conv_onnx(tmp_path / "net.onnx", batch="N")
    first = _build(make_fake_tensorrt("8.5.3"), model, tmp_path, int8=True, calib=images, algo="entropy")
    make_tiny_conv_onnx(model, batch="N", seed=7)  # the model changed under the same name
    trt = make_fake_tensorrt("8.5.3")
    second = _build(trt, model, tmp_path, int8=True, calib=images, algo="entropy")
    assert not trt.STATE.used_cache and second.calibration_batches == 8  # TensorRT recalibrated
    assert trt.STATE.cache_read is None  # the stale cache was never handed to TensorRT
    from trtq.fileio import sha256_file

    assert CalibrationTable.load(first.cache_path).model_sha256 == sha256_file(model)  # replaced, with a record


def test_pt_is_exported_into_the_output_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trtq.export

    calls: list[dict[str, Any]] = []

    def export_onnx(model: Any, **kw: Any) -> Path:
        calls.append({"model": Path(model), **kw})
        Path(kw["output"]).parent.mkdir(parents=True, exist_ok=True)
        return make_tiny_conv_onnx(Path(kw["output"]), batch="N")

    monkeypatch.setattr(trtq.export, "export_onnx", export_onnx)
    pt = tmp_path / "ro" / "yolov8n-coco.pt"
    pt.parent.mkdir()
    pt.write_bytes(b"weights")
    trt = make_fake_tensorrt("10.3.0")
    r = _build(trt, pt, tmp_path, "y.engine", fp16=True, min_batch=1, max_batch=4, imgsz=[32])
    assert calls == [{"model": pt, "imgsz": (32, 32), "batch": 4, "dynamic": True,
                      "output": tmp_path / "engines" / "yolov8n-coco.onnx"}]
    assert r.onnx_path == tmp_path / "engines" / "yolov8n-coco.onnx"
    assert _calls(trt, "profile.set_shape")[0][1:] == ("images", (1, 3, 32, 32), (4, 3, 32, 32), (4, 3, 32, 32))
