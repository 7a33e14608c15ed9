"""calibrators.trt: the calibrator protocol against the recording fake TensorRT and fake device."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from calibrators.table import CalibrationTable, parse_trt_cache
from calibrators.trt import (
    CalibrationFeed,
    cache_algorithm,
    calibrator_class,
    make_cache_calibrator,
    make_calibrator,
)
from tests.fakes.fake_device import FakeDevice, read_device
from tests.fakes.fake_tensorrt import make_fake_tensorrt, version_code
from trtq.errors import TrtqError
from trtq.trt import compat

SHAPES = {"images": (2, 3, 4, 4), "aux": (2, 1, 4, 4)}


def _batches(n: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{name: rng.standard_normal(shape).astype(np.float32) for name, shape in SHAPES.items()} for _ in range(n)]


def test_get_batch_protocol_order_pointers_and_end() -> None:
    data = _batches(3)
    dev = FakeDevice()
    feed = CalibrationFeed(names=["images", "aux"], shapes=SHAPES, batches=data, device=dev)
    trt = make_fake_tensorrt("10.3.0")
    with make_calibrator(trt, "entropy", feed) as cal:
        assert isinstance(cal, trt.IInt8EntropyCalibrator2)
        assert cal.get_batch_size() == 2
        seen_ptrs = []
        for i in range(3):
            ptrs = cal.get_batch(["aux", "images"])  # TensorRT's order, not the data's
            assert len(ptrs) == 2
            seen_ptrs.append(tuple(ptrs))
            np.testing.assert_array_equal(read_device(ptrs[0], 2 * 16 * 4, np.float32, SHAPES["aux"]), data[i]["aux"])
            np.testing.assert_array_equal(read_device(ptrs[1], 2 * 48 * 4, np.float32, SHAPES["images"]),
                                          data[i]["images"])
        assert cal.get_batch(["aux", "images"]) == []  # end of data
        assert cal.get_batch(["aux", "images"]) == []  # and it stays ended
        assert len(set(seen_ptrs)) == 1  # buffers allocated once per input and reused
        assert [c[0] for c in dev.calls].count("alloc") == 2
        assert feed.batches_served == 3
    assert dev.live_buffers == []  # freed by the context manager
    cal.raise_if_failed()  # nothing failed


def test_minmax_base_class_and_float32_conversion() -> None:
    trt = make_fake_tensorrt("8.5.3")
    batch = {"images": np.ones((2, 3, 4, 4), np.float64)}
    feed = CalibrationFeed(names=["images"], shapes={"images": (2, 3, 4, 4)}, batches=[batch], device=FakeDevice())
    cal = make_calibrator(trt, "minmax", feed)
    assert isinstance(cal, trt.IInt8MinMaxCalibrator) and not isinstance(cal, trt.IInt8EntropyCalibrator2)
    (ptr,) = cal.get_batch(["images"])
    assert read_device(ptr, 96 * 4, np.float32).tolist() == [1.0] * 96
    cal.close()


def test_exception_in_batches_is_contained_and_reraised() -> None:
    def explode() -> Iterator[dict[str, np.ndarray]]:
        yield {"images": np.zeros((1, 3, 2, 2), np.float32)}
        raise OSError("disk gone")

    dev = FakeDevice()
    feed = CalibrationFeed(names=["images"], shapes={"images": (1, 3, 2, 2)}, batches=explode(), device=dev)
    assert len(feed.get_batch(["images"])) == 1
    assert feed.get_batch(["images"]) == []  # no exception escapes the callback: the data just ends
    assert feed.get_batch(["images"]) == []
    feed.close()
    assert dev.live_buffers == []
    with pytest.raises(OSError, match="disk gone"):
        feed.raise_if_failed()


def test_shape_mismatch_ends_calibration_with_a_clear_error() -> None:
    feed = CalibrationFeed(names=["images"], shapes={"images": (4, 3, 2, 2)},
                           batches=[{"images": np.zeros((3, 3, 2, 2), np.float32)}], device=FakeDevice())
    assert feed.get_batch(["images"]) == []
    with pytest.raises(TrtqError, match=r"OPT shape \[4, 3, 2, 2\]"):
        feed.raise_if_failed()


def test_cache_read_is_memoized_and_write_is_atomic(tmp_path: Path) -> None:
    cache = tmp_path / "c.cache"
    cache.write_bytes(b"TRT-100300-EntropyCalibration2\nimages: 3c010a14\n")
    feed = CalibrationFeed(names=["images"], shapes={"images": (1, 3, 2, 2)}, cache_path=cache)
    first = feed.read_calibration_cache()
    cache.write_bytes(b"changed")
    assert feed.read_calibration_cache() == first  # TensorRT may ask twice: same answer
    assert feed.cache_reads == 2
    out = tmp_path / "new" / "w.cache"
    feed2 = CalibrationFeed(names=["images"], shapes={"images": (1, 3, 2, 2)}, cache_path=out)
    assert feed2.read_calibration_cache() is None
    feed2.write_calibration_cache(memoryview(np.frombuffer(b"TRT-1-X\n", np.uint8)))
    assert out.read_bytes() == b"TRT-1-X\n"
    assert not list(out.parent.glob("*.trtq-tmp*"))


def _build_int8(trt: Any, calibrator: Any) -> Any:
    """An implicit-INT8 build of a network with one 1x3x8x8 input ``images`` on the fake builder."""
    builder = trt.Builder(trt.Logger())
    net = builder.create_network(0)
    net.inputs.append(trt.ITensor("images", [1, 3, 8, 8]))
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.INT8)
    compat.set_int8_calibrator(config, calibrator, None)
    return builder.build_serialized_network(net, config)


def test_full_calibration_through_the_fake_builder(tmp_path: Path) -> None:
    """The fake runs TensorRT's calling order: read cache, get_batch until [], write cache."""
    trt = make_fake_tensorrt("10.3.0")
    data = [{"images": np.full((1, 3, 8, 8), float(i + 1), np.float32)} for i in range(4)]
    dev = FakeDevice()
    cache = tmp_path / "t.cache"
    feed = CalibrationFeed(names=["images"], shapes={"images": (1, 3, 8, 8)}, batches=data, device=dev,
                           cache_path=cache)
    cal = make_calibrator(trt, "entropy", feed)
    assert _build_int8(trt, cal) is not None
    cal.close()
    batches = trt.STATE.calibration_batches
    assert [b["images"][0, 0, 0, 0] for b in batches] == [1.0, 2.0, 3.0, 4.0]
    header, scales = parse_trt_cache(cache.read_bytes())
    assert header == f"TRT-{version_code('10.3.0')}-EntropyCalibration2"
    assert scales["images"] == pytest.approx(4.0 / 127, rel=1e-6)
    assert dev.live_buffers == []
    # second build: the cache exists, TensorRT never asks for a batch
    trt2 = make_fake_tensorrt("10.3.0")
    never = CalibrationFeed(names=["images"], shapes={"images": (1, 3, 8, 8)}, batches=None, cache_path=cache)
    cal2 = make_calibrator(trt2, "entropy", never)
    assert _build_int8(trt2, cal2) is not None
    assert trt2.STATE.used_cache and not any(c[0] == "calibrator.get_batch" for c in trt2.CALLS)


def test_cache_calibrator_rewrites_header_and_opens_nothing() -> None:
    table = CalibrationTable(amax={"images": 1.0, "x": 2.5}, algorithm="percentile", percentile=99.9)
    data = table.to_trt_cache("8.6.1")  # made for another TensorRT
    assert data.startswith(b"TRT-8601-")
    trt = make_fake_tensorrt("10.3.0")
    cal = make_cache_calibrator(trt, data, names=["images"], shapes={"images": (1, 3, 8, 8)})
    assert isinstance(cal, trt.IInt8EntropyCalibrator2)  # percentile ranges travel as EntropyCalibration2
    served = bytes(cal.read_calibration_cache())
    assert served.startswith(f"TRT-{version_code('10.3.0')}-EntropyCalibration2\n".encode())
    assert parse_trt_cache(served)[1] == parse_trt_cache(data)[1]
    assert cal.get_batch(["images"]) == []
    dla = make_cache_calibrator(trt, CalibrationTable(amax={"images": 1.0}, algorithm="minmax").to_trt_cache(),
                                names=["images"], shapes={"images": (1, 3, 8, 8)}, algorithm="EntropyCalibration2")
    assert isinstance(dla, trt.IInt8EntropyCalibrator2)
    assert cache_algorithm(bytes(dla.read_calibration_cache())) == "EntropyCalibration2"


def test_no_calibrators_on_tensorrt_11() -> None:
    feed = CalibrationFeed(names=["images"], shapes={"images": (1, 3, 2, 2)})
    with pytest.raises(TrtqError, match="removed in TensorRT 11"):
        make_calibrator(make_fake_tensorrt("11.0"), "entropy", feed)
    with pytest.raises(TrtqError, match="percentile and mse"):
        make_calibrator(make_fake_tensorrt("10.3.0"), "percentile", feed)


def test_calibrator_classes_follow_the_module_base_class() -> None:
    """Classes are cached per TensorRT base class: a module object whose bindings changed (or a new module
    that reuses a freed module's id) never gets a class built on another module's base."""
    trt = make_fake_tensorrt("10.3.0")
    first = calibrator_class(trt, "EntropyCalibration2")
    assert issubclass(first, trt.IInt8EntropyCalibrator2)
    assert calibrator_class(trt, "EntropyCalibration2") is first  # created once
    other = make_fake_tensorrt("10.3.0")
    trt.IInt8EntropyCalibrator2 = other.IInt8EntropyCalibrator2  # same module object, same id
    second = calibrator_class(trt, "EntropyCalibration2")
    assert second is not first and issubclass(second, other.IInt8EntropyCalibrator2)
    assert issubclass(calibrator_class(trt, "MinMaxCalibration"), trt.IInt8MinMaxCalibrator)
