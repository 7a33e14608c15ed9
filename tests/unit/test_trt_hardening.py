"""TensorRT / CUDA edge cases the recording fakes reproduce as the real bindings behave.

Each test names the real behaviour it pins down (pybind11 enums, timing-cache deserialization, the
process-wide logger, ...); the fake's side of it is checked here as well, so the contract tests elsewhere
cannot pass against a fake that is more forgiving than TensorRT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
