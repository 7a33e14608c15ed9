"""The calibration hand-off type and the TensorRT calibration cache format.

A :class:`CalibrationTable` maps tensor names to ``amax`` and records what it was made from (model,
images, preprocessing, algorithm). It is written as a TensorRT calibration cache plus a JSON sidecar:

- ``CACHE``: the text format TensorRT's calibrators read and write. First line ``TRT-<code>-<Algorithm>``
  (``code`` = ``major*1000 + minor*100 + patch`` for TensorRT 9.x and older, ``major*10000 + minor*100 +
  patch`` from 10 on), then one ``<tensor name>: <8 hex digits>`` line per tensor, the hex digits being
  the big-endian IEEE-754 float32 ``scale = amax / 127``. Lines end with ``\\n``; tensor order is kept.
- ``CACHE.json``: the exact ``amax`` values and the record of what the cache was made from, so a stale
  cache (another model, other preprocessing, another algorithm) is refused instead of silently used.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trtq
from calibrators.ranges import ALGORITHMS, QMAX, check_algorithm, check_percentile
from trtq.errors import TrtqError
from trtq.fileio import atomic_path

logger = logging.getLogger(__name__)

#: Version of the JSON sidecar layout.
SIDECAR_FORMAT = 1
SIDECAR_KIND = "trtq-calibration"
#: TensorRT version whose header a cache gets when none is named (JetPack 6).
DEFAULT_TRT_VERSION = "10.3.0"

#: TensorRT calibrator base class (cache header algorithm) for each trtq range algorithm. Ranges
#: computed by trtq are handed over through a calibrator of this class; entropy, percentile and mse
#: share EntropyCalibration2, which TensorRT applies to activations exactly like the other classes.
TRT_ALGORITHM: dict[str, str] = {
    "entropy": "EntropyCalibration2",
    "percentile": "EntropyCalibration2",
    "mse": "EntropyCalibration2",
    "minmax": "MinMaxCalibration",
}
TRT_CACHE_ALGORITHMS: tuple[str, ...] = (
    "EntropyCalibration2",
    "EntropyCalibration",
    "MinMaxCalibration",
    "LegacyCalibration",
)
#: Preprocessing keys that do not change per-image statistics (ignored by :meth:`CalibrationTable.differences`).
IGNORED_PREPROCESSING_KEYS: frozenset[str] = frozenset({"batch"})

_VERSION_RE = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?(?:\.\d+)?(?:(?:a|b|rc|\.post|\.dev)\d*)?\s*$")
_HEADER_RE = re.compile(r"^TRT-(\d+)-([A-Za-z0-9_]+)$")
_HEX_RE = re.compile(r"^[0-9a-fA-F]{1,8}$")


# --------------------------------------------------------------------------------------------------
# the cache format
# --------------------------------------------------------------------------------------------------


def trt_version_code(version: str) -> int:
    """The number TensorRT writes in a cache header: 8.6.1 -> 8601, 9.3.0 -> 9300, 10.3.0 -> 100300, 10.13.0.35 -> 101300.

    8.x and 9.x write ``MAJOR*1000 + MINOR*100 + PATCH`` (the 9.1 and 9.3 headers read ``TRT-9100``, ``TRT-9300``);
    only 10 and later write ``MAJOR*10000 + MINOR*100 + PATCH``.
    """
    m = _VERSION_RE.match(str(version))
    if m is None:
        raise TrtqError(
            f"invalid TensorRT version {version!r}; give it as MAJOR.MINOR.PATCH, e.g. 10.3.0 or 8.6.1"
        )
    major, minor, patch = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    if major < 1 or patch > 99 or minor > (9 if major < 10 else 99):
        raise TrtqError(
            f"invalid TensorRT version {version!r}; give it as MAJOR.MINOR.PATCH, e.g. 10.3.0 or 8.6.1"
        )
    if major < 10:
        return major * 1000 + minor * 100 + patch
    return major * 10000 + minor * 100 + patch


def _trt_algorithm_name(algorithm: str) -> str:
    """Accept a cache header algorithm (``EntropyCalibration2``) or a trtq algorithm (``entropy``)."""
    if algorithm in TRT_CACHE_ALGORITHMS:
        return algorithm
    if algorithm in TRT_ALGORITHM:
        return TRT_ALGORITHM[algorithm]
    raise TrtqError(
        f"unknown calibration algorithm {algorithm!r}; use one of {', '.join(TRT_CACHE_ALGORITHMS)} "
        f"or {', '.join(ALGORITHMS)}"
    )


def cache_header(trt_version: str, algorithm: str) -> str:
    """``TRT-<code>-<Algorithm>``, e.g. ``cache_header("8.6.1", "entropy") == "TRT-8601-EntropyCalibration2"``."""
    return f"TRT-{trt_version_code(trt_version)}-{_trt_algorithm_name(algorithm)}"


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or "\n" in name or "\r" in name:
        raise TrtqError(f"invalid tensor name {name!r} for a calibration cache (empty or multi-line)")


def _scale_hex(name: str, scale: float) -> str:
    s = float(scale)
    if not (math.isfinite(s) and s > 0):
        raise TrtqError(f"scale of tensor {name!r} is {scale!r}; a calibration scale must be finite and > 0")
    try:
        packed = struct.pack(">f", s)
    except OverflowError:
        raise TrtqError(f"scale of tensor {name!r} ({s!r}) does not fit in float32") from None
    if struct.unpack(">f", packed)[0] == 0.0:
        raise TrtqError(f"scale of tensor {name!r} ({s!r}) is too small for float32 (it would be 0)")
    return packed.hex()


def format_trt_cache(scales: Mapping[str, float], header: str) -> bytes:
    """The bytes of a TensorRT calibration cache: ``header``, then ``name: hex`` per tensor, in order."""
    if _HEADER_RE.match(header) is None:
        raise TrtqError(
            f"invalid calibration cache header {header!r}; expected e.g. TRT-100300-EntropyCalibration2"
        )
    lines = [header]
    for name, scale in scales.items():
        _check_name(name)
        lines.append(f"{name}: {_scale_hex(name, scale)}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def parse_trt_cache(data: bytes) -> tuple[str, dict[str, float]]:
    """Read a calibration cache written by trtq or by TensorRT: ``(header, {name: scale})``.

    Tolerates CRLF line ends, blank lines and a missing final newline. A tensor name may contain
    ``:``; the value is what follows the last ``:``. Raises TrtqError naming the first bad line.
    """
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TrtqError(
            f"calibration cache is not text (byte {exc.start} is not UTF-8); recalibrate"
        ) from None
    lines = text.splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines:
        raise TrtqError("calibration cache is empty; recalibrate to write a new one")
    header = lines[0].strip()
    if _HEADER_RE.match(header) is None:
        raise TrtqError(
            f"calibration cache header {header[:60]!r} is not of the form TRT-<version>-<Algorithm>; "
            "this is not a TensorRT calibration cache"
        )
    scales: dict[str, float] = {}
    for lineno, raw in enumerate(lines[1:], start=2):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        colon = line.rfind(":")
        name, value = line[:colon], line[colon + 1 :].strip()
        if colon <= 0 or _HEX_RE.match(value) is None:
            raise TrtqError(f"calibration cache line {lineno} is not '<tensor>: <hex scale>': {line[:80]!r}")
        if name in scales:
            raise TrtqError(f"calibration cache lists tensor {name!r} twice (line {lineno}); recalibrate")
        scales[name] = struct.unpack(">f", bytes.fromhex(value.zfill(8)))[0]
    return header, scales


def rewrite_cache_header(data: bytes, trt_version: str, algorithm: str) -> bytes:
    """``data`` with its header replaced by ``TRT-<code of trt_version>-<algorithm>``.

    ``algorithm`` is a cache algorithm (``EntropyCalibration2``) or a trtq one (``entropy``). Everything
    after the header line, its line end included, is kept byte for byte.
    """
    parse_trt_cache(data)  # validate first: only ever rewrite a real cache
    raw = bytes(data)
    start = 0
    while raw[start : start + 1] in (b"\n", b"\r", b" ", b"\t"):
        start += 1
    end = raw.find(b"\n", start)
    if end < 0:
        end = len(raw)
    if end > start and raw[end - 1 : end] == b"\r":
        end -= 1
    return raw[:start] + cache_header(trt_version, algorithm).encode("ascii") + raw[end:]


def table_sidecar_path(cache_path: str | Path) -> Path:
    """``CACHE.json``: where the record of what a cache was made from lives."""
    p = Path(cache_path)
    return p.with_name(p.name + ".json")


# --------------------------------------------------------------------------------------------------
# the hand-off type
# --------------------------------------------------------------------------------------------------


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), or TrtqError if it cannot be stored."""
    try:
        return json.loads(json.dumps(obj, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TrtqError(f"preprocessing record is not JSON-serialisable: {exc}") from None


def _short(sha: str) -> str:
    return (sha[:8] + "\u2026") if sha else "(unknown)"


def _fmt(value: Any) -> str:
    return json.dumps(value) if value is not None else "(absent)"


@dataclass
class CalibrationTable:
    """Tensor name -> amax, plus what the ranges were made from.

    ``amax`` keeps insertion order (the cache lists tensors in that order). Every amax must be finite
    and > 0 with a float32 scale ``amax / 127`` that is neither 0 nor inf.
    """

    amax: dict[str, float]
    algorithm: str
    percentile: float | None = None
    model_sha256: str = ""
    num_images: int = 0
    images_sha256: str = ""
    preprocessing: dict[str, Any] = field(default_factory=dict)
    trtq_version: str = trtq.__version__
    tensorrt_version: str = DEFAULT_TRT_VERSION
    created: str = field(default_factory=_now)
    #: How the statistics were gathered (sampling, derived tensors); informational, not compared.
    statistics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_algorithm(self.algorithm)
        if self.percentile is not None:
            self.percentile = check_percentile(self.percentile)
        if not self.amax:
            raise TrtqError("calibration table is empty: no tensor ranges were computed")
        clean: dict[str, float] = {}
        for name, value in self.amax.items():
            _check_name(name)
            try:
                a = float(value)
            except (TypeError, ValueError):
                raise TrtqError(f"amax of tensor {name!r} is {value!r}, not a number") from None
            if not (math.isfinite(a) and a > 0):
                raise TrtqError(
                    f"amax of tensor {name!r} is {value!r}; every amax must be finite and > 0 "
                    "(a tensor that is always 0 still needs a positive range)"
                )
            _scale_hex(name, a / QMAX)
            clean[name] = a
        self.amax = clean
        trt_version_code(self.tensorrt_version)
        self.preprocessing = _jsonable(dict(self.preprocessing))
        self.num_images = int(self.num_images)

    # ---------------------------------------------------------------- cache
    @property
    def trt_algorithm(self) -> str:
        """TensorRT calibrator algorithm whose cache header carries these ranges."""
        return TRT_ALGORITHM[self.algorithm]

    def scales(self) -> dict[str, float]:
        """Tensor name -> ``amax / 127`` (before rounding to float32)."""
        return {name: a / QMAX for name, a in self.amax.items()}

    def header(self, trt_version: str | None = None) -> str:
        return cache_header(trt_version or self.tensorrt_version, self.trt_algorithm)

    def to_trt_cache(self, trt_version: str | None = None) -> bytes:
        """The TensorRT calibration cache bytes; the header names ``trt_version`` (default: ``tensorrt_version``)."""
        return format_trt_cache(self.scales(), self.header(trt_version))

    # ---------------------------------------------------------------- sidecar
    def to_sidecar(self) -> dict[str, Any]:
        """The JSON record written next to the cache."""
        return {
            "kind": SIDECAR_KIND,
            "format": SIDECAR_FORMAT,
            "trtq_version": self.trtq_version,
            "created": self.created,
            "algorithm": self.algorithm,
            "percentile": self.percentile,
            "trt_algorithm": self.trt_algorithm,
            "tensorrt_version": self.tensorrt_version,
            "header": self.header(),
            "model_sha256": self.model_sha256,
            "num_images": self.num_images,
            "images_sha256": self.images_sha256,
            "preprocessing": self.preprocessing,
            "statistics": self.statistics,
            "tensors": {name: {"amax": a, "scale": a / QMAX} for name, a in self.amax.items()},
        }

    def save(self, cache_path: str | Path) -> Path:
        """Write ``cache_path`` and ``cache_path.json`` atomically; returns ``cache_path``.

        Both files are fully written to temporary files before either is renamed into place; a
        failure leaves no partial file (and :meth:`load` refuses a sidecar that does not match).
        """
        path = Path(cache_path)
        data = self.to_trt_cache()
        text = json.dumps(self.to_sidecar(), indent=2, allow_nan=False) + "\n"
        # Both temporary files are written and flushed before either is renamed into place.
        with atomic_path(path) as tmp_cache, atomic_path(table_sidecar_path(path)) as tmp_side:
            _write_synced(tmp_cache, data)
            _write_synced(tmp_side, text.encode("utf-8"))
        logger.info("wrote calibration cache %s (%d tensors, %s)", path, len(self.amax), self.header())
        return path

    @classmethod
    def load(cls, cache_path: str | Path) -> CalibrationTable:
        """Read a cache written by :meth:`save` and check that its sidecar agrees with it."""
        path = Path(cache_path)
        side = table_sidecar_path(path)
        if not path.is_file():
            raise TrtqError(f"calibration cache {path} not found; run `trtq calibrate` to create it")
        if not side.is_file():
            raise TrtqError(
                f"calibration cache {path} has no record {side.name} of what it was made from; "
                "recalibrate (`trtq calibrate`) rather than trust an unknown cache"
            )
        try:
            record = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TrtqError(f"{side} is corrupt ({exc}); delete the cache and recalibrate") from None
        if not isinstance(record, dict) or record.get("kind") != SIDECAR_KIND:
            raise TrtqError(f"{side} is not a trtq calibration record; delete the cache and recalibrate")
        if record.get("format") != SIDECAR_FORMAT:
            raise TrtqError(
                f"{side} has record format {record.get('format')!r}, this trtq reads {SIDECAR_FORMAT}; recalibrate"
            )
        try:
            tensors = record["tensors"]
            table = cls(
                amax={str(k): float(v["amax"]) for k, v in tensors.items()},
                algorithm=str(record["algorithm"]),
                percentile=record.get("percentile"),
                model_sha256=str(record.get("model_sha256", "")),
                num_images=int(record.get("num_images", 0)),
                images_sha256=str(record.get("images_sha256", "")),
                preprocessing=dict(record.get("preprocessing") or {}),
                trtq_version=str(record.get("trtq_version", "")),
                tensorrt_version=str(record["tensorrt_version"]),
                created=str(record.get("created", "")),
                statistics=dict(record.get("statistics") or {}),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise TrtqError(
                f"{side} is corrupt (bad or missing field {exc}); delete the cache and recalibrate"
            ) from None
        header, scales = parse_trt_cache(path.read_bytes())
        table._check_matches(path, header, scales)
        return table

    def _check_matches(self, path: Path, header: str, scales: Mapping[str, float]) -> None:
        if header != self.header():
            raise TrtqError(
                f"calibration cache {path} has header {header} but its record says {self.header()}; "
                "delete the cache and recalibrate"
            )
        if list(scales) != list(self.amax):
            missing = [n for n in self.amax if n not in scales]
            extra = [n for n in scales if n not in self.amax]
            what = (
                f"missing {missing[:3]}"
                if missing
                else f"extra {extra[:3]}"
                if extra
                else "a different order"
            )
            raise TrtqError(
                f"calibration cache {path} and its record list different tensors ({what}); "
                "delete the cache and recalibrate"
            )
        for name, a in self.amax.items():
            expected = struct.unpack(">f", struct.pack(">f", a / QMAX))[0]
            if scales[name] != expected:
                raise TrtqError(
                    f"calibration cache {path} has scale {scales[name]!r} for {name!r} but its record "
                    f"gives {expected!r}; delete the cache and recalibrate"
                )

    # ---------------------------------------------------------------- staleness
    def mismatches(
        self,
        *,
        model_sha256: str | None = None,
        preprocessing: Mapping[str, Any] | None = None,
        algorithm: str | None = None,
        percentile: float | None = None,
        images_sha256: str | None = None,
    ) -> dict[str, str]:
        """Why this table does not fit the given build, per field (empty when it fits).

        Keys: ``model``, ``preprocessing``, ``algorithm``, ``percentile``, ``images``; values: the human-readable
        reason. Logic uses the keys, messages the values.

        Only the arguments given are compared. Preprocessing keys that do not change per-image
        statistics (``batch``) are ignored.
        """
        out: dict[str, str] = {}
        if model_sha256 is not None and model_sha256 != self.model_sha256:
            out["model"] = (
                f"model sha256 differs: cache made from {_short(self.model_sha256)}, "
                f"this model is {_short(model_sha256)}"
            )
        if preprocessing is not None:
            mine = self.preprocessing
            theirs = _jsonable(dict(preprocessing))
            keys = [k for k in dict.fromkeys([*mine, *theirs]) if k not in IGNORED_PREPROCESSING_KEYS]
            diffs = [
                f"{k} {_fmt(mine.get(k))} vs {_fmt(theirs.get(k))}"
                for k in keys
                if mine.get(k) != theirs.get(k)
            ]
            if diffs:
                out["preprocessing"] = "preprocessing differs: " + "; ".join(diffs)
        if algorithm is not None and algorithm != self.algorithm:
            out["algorithm"] = (
                f"algorithm differs: cache made with {self.algorithm}, this build asks for {algorithm}"
            )
        elif (
            percentile is not None
            and self.algorithm == "percentile"
            and self.percentile is not None
            and float(percentile) != self.percentile
        ):
            out["percentile"] = (
                f"percentile differs: cache made with {self.percentile:g}, this build asks for {float(percentile):g}"
            )
        if images_sha256 is not None and images_sha256 != self.images_sha256:
            out["images"] = (
                f"calibration images differ: cache made from image list {_short(self.images_sha256)}, "
                f"this build uses {_short(images_sha256)}"
            )
        return out

    def differences(
        self,
        *,
        model_sha256: str | None = None,
        preprocessing: Mapping[str, Any] | None = None,
        algorithm: str | None = None,
        percentile: float | None = None,
        images_sha256: str | None = None,
    ) -> list[str]:
        """Human-readable reasons why this table does not fit the given build (empty when it fits).

        Only the arguments given are compared. Preprocessing keys that do not change per-image
        statistics (``batch``) are ignored. :meth:`mismatches` gives the same reasons by field.
        """
        return list(self.mismatches(model_sha256=model_sha256, preprocessing=preprocessing, algorithm=algorithm,
                                    percentile=percentile, images_sha256=images_sha256).values())
