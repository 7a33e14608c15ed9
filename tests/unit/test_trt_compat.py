"""trtq.trt.compat: TensorRT detection and the version shims, against fakes of 8.5.3 / 10.3.0 / 11.0."""

from __future__ import annotations

import sys
import types
import warnings

import pytest

from tests.fakes.fake_tensorrt import make_fake_tensorrt
from trtq.errors import EXIT_MISSING_TENSORRT, MissingDependencyError
from trtq.trt import compat


def test_stub_only_namespace_package_is_not_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    stub = types.ModuleType("tensorrt")  # what `import tensorrt` gives with only tensorrt-stubs installed
    stub.__path__ = []  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", stub)
    assert compat.load_tensorrt() is None
    assert "type stubs" in compat.missing_tensorrt_reason()
    with pytest.raises(MissingDependencyError) as exc:
        compat.require_tensorrt("building an engine")
    assert exc.value.exit_code == EXIT_MISSING_TENSORRT
    assert "building an engine needs TensorRT" in str(exc.value)


def test_absent_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import raises ImportError
    assert compat.load_tensorrt() is None
    assert compat.trt_version() is None
    assert "not installed" in compat.missing_tensorrt_reason()


def test_fake_is_detected_as_real(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = make_fake_tensorrt("10.3.0")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    assert compat.load_tensorrt() is fake
    assert compat.trt_version() == "10.3.0"
    assert compat.typed(fake) is fake  # identity at run time


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("8.5.3", dict(explicit_batch_flag=True, strongly_typed=False, implicit_int8=True, strict_types=True,
                       optimization_level=False, calibration_profile=True, layer_precision=True)),
        ("10.3.0", dict(explicit_batch_flag=True, strongly_typed=True, implicit_int8=True, strict_types=False,
                        optimization_level=True, calibration_profile=True, layer_precision=True)),
        ("11.0", dict(explicit_batch_flag=False, strongly_typed=True, implicit_int8=False, fp16_flag=False,
                      int8_flag=False, obey_precision=False, layer_precision=False, calibration_profile=False)),
    ],
)
def test_capabilities(version: str, expected: dict[str, bool]) -> None:
    caps = compat.capabilities(make_fake_tensorrt(version))
    for key, value in expected.items():
        assert getattr(caps, key) is value, key
    assert caps.strongly_typed_only is (version == "11.0")
    assert caps.implicit_deprecated is (version != "8.5.3")


def test_network_flags_per_version() -> None:
    t8 = make_fake_tensorrt("8.5.3")
    eb = int(t8.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    assert compat.network_flags(t8, strongly_typed=False) == 1 << eb
    with pytest.raises(MissingDependencyError, match="strongly typed"):
        compat.network_flags(t8, strongly_typed=True)
    t10 = make_fake_tensorrt("10.3.0")
    st = int(t10.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert compat.network_flags(t10, strongly_typed=False) == 0  # EXPLICIT_BATCH is ignored/deprecated on 10
    assert compat.network_flags(t10, strongly_typed=True) == 1 << st
    t11 = make_fake_tensorrt("11.0")
    assert not hasattr(t11.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")
    assert compat.network_flags(t11, strongly_typed=True) == 1 << int(t11.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def test_builder_flags_missing_on_11_are_reported_not_raised() -> None:
    t11 = make_fake_tensorrt("11.0")
    config = t11.Builder(t11.Logger()).create_builder_config()
    assert compat.set_builder_flag(t11, config, "FP16") is False
    assert compat.set_builder_flag(t11, config, "GPU_FALLBACK") is True
    assert config.flags == {"GPU_FALLBACK"}


def test_workspace_and_optimization_level() -> None:
    for version in ("8.5.3", "10.3.0"):
        trt = make_fake_tensorrt(version)
        config = trt.Builder(trt.Logger()).create_builder_config()
        compat.set_workspace(trt, config, 3 << 30)
        assert config.pools["WORKSPACE"] == 3 << 30
        assert compat.set_optimization_level(config, 4) is (version != "8.5.3")


def test_workspace_falls_back_to_max_workspace_size() -> None:
    trt = make_fake_tensorrt("8.5.3")
    config = trt.Builder(trt.Logger()).create_builder_config()
    trt.MemoryPoolType = None  # an older 8.x without memory pools
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shim silences the binding's DeprecationWarning
        compat.set_workspace(trt, config, 1 << 30)
    assert config.max_workspace_size == 1 << 30


def test_calibrator_setter_is_quiet_on_10x_and_sets_profile_on_8x() -> None:
    for version in ("8.5.3", "10.3.0"):
        trt = make_fake_tensorrt(version)
        config = trt.Builder(trt.Logger()).create_builder_config()
        profile = trt.Builder(trt.Logger()).create_optimization_profile()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert compat.set_int8_calibrator(config, object(), profile) is True
        assert config.calibration_profile is profile


def test_layer_precision_shim() -> None:
    t10, t11 = make_fake_tensorrt("10.13.0"), make_fake_tensorrt("11.0")
    layer10 = t10.ILayer("L", "CONVOLUTION", "Conv", [], [t10.ITensor("o", [1])])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 10.12+ warns on the setters; the shim silences it
        assert compat.set_layer_precision(t10, layer10, t10.float32) is True
    assert layer10.precision == t10.float32 and layer10.output_types == {0: t10.float32}
    layer11 = t11.ILayer("L", "CONVOLUTION", "Conv", [], [t11.ITensor("o", [1])])
    assert compat.set_layer_precision(t11, layer11, t11.float32) is False
    assert not layer11.precision_is_set


def test_calibrator_base_and_versions() -> None:
    assert compat.calibrator_base(make_fake_tensorrt("10.3.0"), "MinMaxCalibration") is not None
    assert compat.calibrator_base(make_fake_tensorrt("11.0"), "EntropyCalibration2") is None
    with pytest.raises(ValueError):
        compat.calibrator_base(make_fake_tensorrt("10.3.0"), "LegacyCalibration")
    assert compat.version_tuple("10.3.0.26") == (10, 3, 0)
    assert compat.version_tuple("11.0") == (11, 0, 0)


def test_known_breakage_messages() -> None:
    caps = compat.capabilities(make_fake_tensorrt("10.4.0"))
    msg = compat.known_breakage(caps, strongly_typed=True, precision_flags=True)
    assert msg is not None and "#4228" in msg
    assert compat.known_breakage(caps, strongly_typed=False, precision_flags=True) is None
    caps13 = compat.capabilities(make_fake_tensorrt("10.13.0"))
    assert compat.known_breakage(caps13, strongly_typed=True, precision_flags=True) is None
    assert "10.2.0" in (compat.known_breakage(compat.capabilities(make_fake_tensorrt("10.2.0")),
                                              strongly_typed=False, precision_flags=False) or "")
