"""TensorRT calibrator classes for implicit INT8 (TensorRT 8.5 - 10.x; removed in 11).

TensorRT may be absent when this module is imported, so the classes that subclass
``trt.IInt8EntropyCalibrator2`` / ``trt.IInt8MinMaxCalibrator`` are created on first use from the
TensorRT module passed in (:func:`make_calibrator`, :func:`make_cache_calibrator`). Their callbacks
delegate to a :class:`CalibrationFeed`, which holds everything that does not depend on TensorRT:

- batches ``{input_name: float32 NCHW array}`` (e.g. ``trtq.images.ImageBatcher``) are streamed into one
  device buffer per input, allocated once and reused; ``get_batch`` returns one pointer per name, in the
  order of ``names``, and ``[]`` at the end of the data;
- each batch must have exactly the calibration shape (the OPT shape of the calibration profile):
  TensorRT does not check buffer sizes, so a mismatch is caught here and ends calibration;
- ``read_calibration_cache`` is memoized (TensorRT may call it more than once) and
  ``write_calibration_cache`` copies the ``memoryview`` TensorRT passes and writes atomically;
- no exception escapes a callback (TensorRT would print and swallow it, turning a bug into a silent
  calibration with few batches): it is logged, ends the data, and :meth:`CalibrationFeed.raise_if_failed`
  re-raises it after the build;
- buffers are freed by ``close()``; feeds and calibrators are context managers.

The third calibrator serves a cache computed on the CPU by ``trtq calibrate`` (entropy, minmax, percentile,
MSE): its header is rewritten for the installed TensorRT version and ``get_batch`` returns ``[]``, so
TensorRT uses trtq's ranges without an image being opened.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from trtq.errors import TrtqError

if TYPE_CHECKING:
    import tensorrt

    from trtq.device import Device, DeviceBuffer

log = logging.getLogger(__name__)

#: the trtq algorithms TensorRT's own calibrators compute while streaming the images
STREAMING_KINDS = ("entropy", "minmax")
#: TensorRT cache header algorithm of each streaming kind
KIND_TO_CACHE_ALGORITHM = {"entropy": "EntropyCalibration2", "minmax": "MinMaxCalibration"}


class CalibrationFeed:
    """The TensorRT-independent side of a calibrator: batches, device buffers, cache, errors."""

    def __init__(
        self,
        *,
        names: Sequence[str],
        shapes: Mapping[str, Sequence[int]],
        batches: Iterable[Mapping[str, np.ndarray]] | None = None,
        device: Device | None = None,
        cache_path: str | Path | None = None,
        cache_data: bytes | None = None,
        on_cache_written: Callable[[bytes], None] | None = None,
        label: str = "calibrator",
    ) -> None:
        self.names = list(names)
        self.shapes = {n: tuple(int(d) for d in s) for n, s in shapes.items()}
        missing = [n for n in self.names if n not in self.shapes]
        if missing:
            raise ValueError(f"no calibration shape for input(s) {missing}")
        self._batches = batches
        self._iter: Iterator[Mapping[str, np.ndarray]] | None = None
        self._device = device
        self._own_device = False
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self._cache_data = cache_data
        self._cache_loaded = cache_data is not None
        self._on_cache_written = on_cache_written
        self.label = label
        self.buffers: dict[str, DeviceBuffer] = {}
        self.batches_served = 0
        self.cache_reads = 0
        self.cache_written: bytes | None = None
        self.error: BaseException | None = None
        self.error_where: str | None = None
        self._done = False
        self._closed = False

    # -- TensorRT callbacks (never raise) ------------------------------------------------------------
    def get_batch_size(self) -> int:
        try:
            return int(self.shapes[self.names[0]][0]) if self.names else 1
        except Exception as exc:  # pragma: no cover - defensive, shapes are validated in __init__
            self._fail("get_batch_size", exc)
            return 1

    def get_batch(self, names: list[str]) -> list[int]:
        if self._done or self._closed:
            return []
        try:
            if self._batches is None:  # a cache-only calibrator: nothing to stream
                self._done = True
                return []
            if self._iter is None:
                self._iter = iter(self._batches)
            try:
                batch = next(self._iter)
            except StopIteration:
                self._done = True
                log.info("%s: end of calibration data after %d batches", self.label, self.batches_served)
                return []
            pointers: list[int] = []
            for name in names:
                pointers.append(self._upload(name, batch))
            self.batches_served += 1
            log.debug("%s: batch %d", self.label, self.batches_served)
            return pointers
        except Exception as exc:
            self._fail("get_batch", exc)
            return []

    def read_calibration_cache(self) -> bytes | None:
        self.cache_reads += 1
        if self._cache_loaded:
            return self._cache_data
        self._cache_loaded = True
        try:
            p = self.cache_path
            if p is not None and p.is_file() and p.stat().st_size > 0:
                self._cache_data = p.read_bytes()
                log.info("%s: using calibration cache %s", self.label, p)
        except Exception as exc:
            self._fail("read_calibration_cache", exc)
            self._cache_data = None
        return self._cache_data

    def write_calibration_cache(self, cache: Any) -> None:
        try:
            data = bytes(memoryview(cache))  # copy during the call: TensorRT owns the memory
            self.cache_written = data
            if self._on_cache_written is not None:
                self._on_cache_written(data)
            elif self.cache_path is not None:
                from trtq.fileio import write_bytes

                write_bytes(self.cache_path, data)
                log.info("%s: wrote calibration cache %s", self.label, self.cache_path)
        except Exception as exc:
            self._fail("write_calibration_cache", exc)

    # -- helpers -----------------------------------------------------------------------------------------
    def _upload(self, name: str, batch: Mapping[str, np.ndarray]) -> int:
        if name not in self.shapes:
            raise TrtqError(f"TensorRT asked for calibration input {name!r}; the data has {sorted(batch)}")
        if name not in batch:
            raise TrtqError(f"calibration batch has no input {name!r} (it has {sorted(batch)})")
        arr = np.ascontiguousarray(batch[name], dtype=np.float32)  # FP32 even for FP16 inputs
        want = self.shapes[name]
        if tuple(arr.shape) != want:
            raise TrtqError(
                f"calibration batch {self.batches_served + 1} for {name!r} has shape {list(arr.shape)}; TensorRT "
                f"calibrates with the profile's OPT shape {list(want)} (use a batcher with batch={want[0]} and drop_last)"
            )
        buf = self.buffers.get(name)
        if buf is None:
            buf = self._get_device().alloc(arr.nbytes)
            self.buffers[name] = buf
        self._get_device().htod(buf, arr)
        return int(buf.ptr)

    def _get_device(self) -> Device:
        if self._device is None:
            from trtq.device import get_device

            self._device = get_device()
            self._own_device = True
        return self._device

    def _fail(self, where: str, exc: BaseException) -> None:
        log.error("%s: %s failed: %s: %s (calibration stops here; the error is raised after the build)",
                  self.label, where, type(exc).__name__, exc)
        if self.error is None:
            self.error, self.error_where = exc, where
        self._done = True

    def raise_if_failed(self) -> None:
        """Re-raise the first exception a callback swallowed (call after the build)."""
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        for buf in self.buffers.values():
            try:
                buf.free()
            except Exception as exc:  # freeing after the context is gone must not hide the real error
                log.warning("%s: freeing a device buffer failed: %s", self.label, exc)
        self.buffers.clear()
        if self._own_device and self._device is not None:
            self._device.close()
            self._device = None
        self._closed = True

    def __enter__(self) -> CalibrationFeed:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class TrtCalibrator(Protocol):
    """What the classes made by :func:`make_calibrator` offer beyond TensorRT's interface."""

    feed: CalibrationFeed
    algorithm: str

    def close(self) -> None: ...

    def raise_if_failed(self) -> None: ...


def _subclass(base: type[tensorrt.IInt8Calibrator], name: str, algorithm: str) -> type[tensorrt.IInt8Calibrator]:
    """A calibrator class on ``base`` whose callbacks delegate to a :class:`CalibrationFeed`."""

    class Calibrator(base):
        def __init__(self, feed: CalibrationFeed) -> None:
            base.__init__(self)  # mandatory: without it the bindings crash
            self.feed = feed
            self.algorithm = algorithm

        def get_batch_size(self) -> int:
            return self.feed.get_batch_size()

        def get_batch(self, names: list[str]) -> list[int]:  # [] at the end of data (the stub has no None)
            return self.feed.get_batch(names)

        def read_calibration_cache(self) -> bytes | None:
            return self.feed.read_calibration_cache()

        def write_calibration_cache(self, cache: memoryview) -> None:
            self.feed.write_calibration_cache(cache)

        def close(self) -> None:
            self.feed.close()

        def raise_if_failed(self) -> None:
            self.feed.raise_if_failed()

        def __enter__(self) -> Calibrator:
            return self

        def __exit__(
            self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
        ) -> None:
            self.close()

    Calibrator.__name__ = Calibrator.__qualname__ = name
    return Calibrator


#: (TensorRT calibrator base class, algorithm) -> calibrator class. Keyed on the base class itself, not on
#: ``id(module)``: an id can be reused by a later module object once the first one is gone.
_CLASSES: dict[tuple[type, str], type[Any]] = {}


def calibrator_class(trt: ModuleType, algorithm: str) -> type[Any]:
    """The calibrator class of this TensorRT module for a cache algorithm (created once per base class)."""
    from trtq.trt import compat

    caps = compat.capabilities(trt)
    if not caps.implicit_int8:
        raise TrtqError(
            f"TensorRT {caps.version} has no implicit INT8 calibration (removed in TensorRT 11): "
            "build from a Q/DQ ONNX instead (`trtq build MODEL.onnx --int8 --mode explicit`)"
        )
    t = compat.typed(trt)
    if algorithm == "EntropyCalibration2":
        base: type[tensorrt.IInt8Calibrator] = t.IInt8EntropyCalibrator2
        name = "EntropyCalibrator"
    elif algorithm == "MinMaxCalibration":
        base, name = t.IInt8MinMaxCalibrator, "MinMaxCalibrator"
    else:
        raise TrtqError(f"calibration cache algorithm {algorithm!r} is not supported; use entropy or minmax")
    key = (base, algorithm)
    if key not in _CLASSES:
        _CLASSES[key] = _subclass(base, name, algorithm)
    return _CLASSES[key]


def make_calibrator(trt: ModuleType, kind: str, feed: CalibrationFeed) -> Any:
    """A streaming calibrator (``kind`` entropy -> IInt8EntropyCalibrator2, minmax -> IInt8MinMaxCalibrator)."""
    if kind not in KIND_TO_CACHE_ALGORITHM:
        raise TrtqError(
            f"TensorRT calibrates with entropy or minmax, not {kind!r}; percentile and mse ranges are computed "
            "on the CPU (`trtq calibrate`) and served to TensorRT as a cache"
        )
    return calibrator_class(trt, KIND_TO_CACHE_ALGORITHM[kind])(feed)


def cache_algorithm(data: bytes) -> str:
    """The algorithm named in a TensorRT calibration cache header (``TRT-<ver>-<Algorithm>``)."""
    first = data.split(b"\n", 1)[0].decode(errors="replace").strip()
    parts = first.split("-", 2)
    if len(parts) != 3 or parts[0] != "TRT":
        raise TrtqError(f"not a TensorRT calibration cache (first line {first[:60]!r}; expected TRT-<version>-<algorithm>)")
    return parts[2]


def make_cache_calibrator(
    trt: ModuleType,
    cache: bytes,
    *,
    names: Sequence[str],
    shapes: Mapping[str, Sequence[int]],
    algorithm: str | None = None,
) -> Any:
    """A calibrator that serves a ready cache (header rewritten for this TensorRT) and opens no image.

    ``algorithm`` forces the header algorithm (and the base class): DLA needs ``EntropyCalibration2``.
    """
    from calibrators.table import rewrite_cache_header
    from trtq.trt import compat

    algo = algorithm or cache_algorithm(cache)
    version = compat.trt_version(trt)
    if version is None:
        raise TrtqError("cannot tell the installed TensorRT version (tensorrt.__version__ is missing)")
    data = rewrite_cache_header(cache, version, algo)
    feed = CalibrationFeed(names=names, shapes=shapes, batches=None, cache_data=data, label="cache calibrator")
    return calibrator_class(trt, algo)(feed)
