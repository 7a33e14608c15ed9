"""Self-describing engines: ``X.engine`` plus ``X.engine.json``, optionally with an Ultralytics header.

A TensorRT plan only loads on the TensorRT version and GPU it was built for, and says nothing about the
model, precision or calibration it came from. trtq writes that record next to every engine, and can also
prefix the plan with the header ``ultralytics.YOLO("X.engine")`` reads (a 4-byte little-endian length,
then that many bytes of JSON metadata, then the plan).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from trtq import __version__
from trtq.errors import TrtqError
from trtq.fileio import atomic_open, write_json

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".json"

#: Compute capability -> a name people recognise.
SM_NAMES: dict[tuple[int, int], str] = {
    (5, 3): "Jetson Nano",
    (6, 1): "Pascal",
    (6, 2): "Jetson TX2",
    (7, 0): "Volta",
    (7, 2): "Xavier",
    (7, 5): "Turing",
    (8, 0): "A100",
    (8, 6): "Ampere",
    (8, 7): "Orin",
    (8, 9): "Ada",
    (9, 0): "Hopper",
    (10, 0): "Blackwell",
    (11, 0): "Thor",
    (12, 0): "Blackwell",
}


@dataclass
class EngineMetadata:
    """What an engine is and how it was made (written as ``X.engine.json``)."""

    trtq_version: str = __version__
    tensorrt_version: str = ""
    gpu_name: str = ""
    compute_capability: tuple[int, int] | None = None
    dla_core: int | None = None
    precision: str = "fp32"  # fp32 | fp16 | int8 (int8 engines also allow fp16)
    mode: str | None = None  # implicit | explicit (int8 only)
    strongly_typed: bool = False
    algorithm: str | None = None  # entropy | minmax | percentile | mse
    calibrator: str | None = None  # e.g. "IInt8EntropyCalibrator2 (TensorRT)" or "cache (trtq calibrate)"
    cache_path: str | None = None
    cache_sha256: str | None = None
    model_path: str = ""
    model_sha256: str = ""
    engine_sha256: str = ""
    inputs: list[dict[str, Any]] = field(default_factory=list)  # {name, shape, dtype}
    outputs: list[dict[str, Any]] = field(default_factory=list)
    profiles: list[dict[str, dict[str, list[int]]]] = field(default_factory=list)  # [{input: {min, opt, max}}]
    names: dict[int, str] = field(default_factory=dict)
    stride: int = 32
    imgsz: tuple[int, int] = (640, 640)
    task: str = "detect"
    batch: int = 1  # max batch of profile 0
    float_layers: dict[str, str] = field(default_factory=dict)  # layer -> why it was kept out of INT8
    builder: dict[str, Any] = field(default_factory=dict)  # workspace, optimization level, timing cache, flags
    command: str = ""  # the trtq build command that rebuilds this engine
    verification: dict[str, Any] = field(default_factory=dict)  # trtq.verify: status, reference, metrics
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def dynamic(self) -> bool:
        for profile in self.profiles:
            for shapes in profile.values():
                if shapes.get("min") != shapes.get("max"):
                    return True
        return False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["names"] = {str(k): v for k, v in self.names.items()}
        d["compute_capability"] = list(self.compute_capability) if self.compute_capability else None
        d["imgsz"] = list(self.imgsz)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineMetadata:
        known = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {k: v for k, v in data.items() if k in known}
        if isinstance(kw.get("names"), dict):
            kw["names"] = {int(k): str(v) for k, v in kw["names"].items()}
        cc = kw.get("compute_capability")
        kw["compute_capability"] = (int(cc[0]), int(cc[1])) if cc else None
        imgsz = kw.get("imgsz")
        if isinstance(imgsz, int):
            kw["imgsz"] = (imgsz, imgsz)
        elif imgsz:
            kw["imgsz"] = (int(imgsz[0]), int(imgsz[1]))
        return cls(**kw)

    def ultralytics_metadata(self, onnx_metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """The header dict ``ultralytics.YOLO("X.engine")`` reads (keys of its exporter) plus ``trtq``."""
        meta: dict[str, Any] = {}
        for key, value in (onnx_metadata or {}).items():
            if key in {"description", "author", "date", "version", "license", "docs", "task", "args", "channels",
                       "end2end", "head", "kpt_shape", "kpt_names"}:
                meta[key] = value
        meta.update(
            {
                "description": meta.get("description", "Ultralytics YOLOv8 model built by trtq"),
                "author": meta.get("author", "Ultralytics"),
                "date": self.created,
                "stride": int(self.stride),
                "task": self.task or meta.get("task", "detect"),
                "batch": int(self.batch),
                "imgsz": list(self.imgsz),
                "names": {str(k): v for k, v in self.names.items()},
                "channels": int(meta.get("channels", 3)),
                "end2end": bool(meta.get("end2end", False)),
            }
        )
        args = dict(meta.get("args") or {}) if isinstance(meta.get("args"), dict) else {}
        args.update(
            {
                "batch": int(self.batch),
                "dynamic": self.dynamic,
                "half": self.precision in ("fp16", "int8"),
                "int8": self.precision == "int8",
                "imgsz": list(self.imgsz),
                "nms": bool(args.get("nms", False)),
            }
        )
        meta["args"] = args
        if self.dla_core is not None:
            meta["dla"] = str(self.dla_core)
        meta["trtq"] = self.to_dict()
        return meta


def engine_record_path(engine_path: str | Path) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def ultralytics_header(metadata: dict[str, Any]) -> bytes:
    """4-byte little-endian length + JSON, as ultralytics' engine exporter writes it."""
    blob = json.dumps(metadata).encode()
    return len(blob).to_bytes(4, byteorder="little", signed=True) + blob


def split_ultralytics_header(data: bytes) -> tuple[dict[str, Any] | None, bytes]:
    """(header metadata or None, plan). Mirrors ultralytics' reader: a header must parse as JSON."""
    if len(data) < 4:
        return None, data
    n = int.from_bytes(data[:4], byteorder="little")
    if 0 < n <= len(data) - 4:
        try:
            meta = json.loads(data[4 : 4 + n])
        except (ValueError, UnicodeDecodeError):
            return None, data
        if isinstance(meta, dict):
            return meta, data[4 + n :]
    return None, data


def write_engine(
    path: str | Path,
    plan: bytes,
    meta: EngineMetadata,
    *,
    ultralytics_header: bool = False,
    onnx_metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``path`` (the plan, optionally after an Ultralytics header) and ``path.json`` atomically."""
    import hashlib

    p = Path(path)
    meta.engine_sha256 = hashlib.sha256(plan).hexdigest()
    meta.builder = {**meta.builder, "ultralytics_header": bool(ultralytics_header)}
    with atomic_open(p, "wb") as fh:
        if ultralytics_header:
            fh.write(_header_bytes(meta, onnx_metadata))
        fh.write(plan)
    write_json(engine_record_path(p), meta.to_dict())
    log.info("wrote %s (%.1f MB) and %s", p, len(plan) / 1e6, engine_record_path(p).name)
    return p


def _header_bytes(meta: EngineMetadata, onnx_metadata: dict[str, Any] | None) -> bytes:
    return ultralytics_header(meta.ultralytics_metadata(onnx_metadata))


def read_engine(path: str | Path) -> tuple[bytes, EngineMetadata | None]:
    """The bare plan (any Ultralytics header stripped) and the metadata (sidecar first, then header).

    Raises :class:`TrtqError` for a missing engine and for a sidecar (or header record) that exists but
    cannot be read: a corrupt record must not silently turn off the compatibility checks.
    """
    p = Path(path)
    if not p.is_file():
        raise TrtqError(f"engine not found: {p}")
    header, plan = split_ultralytics_header(p.read_bytes())
    side = engine_record_path(p)
    if side.is_file():
        try:
            data = json.loads(side.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return plan, EngineMetadata.from_dict(data)
        except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:
            raise TrtqError(
                f"engine metadata {side} is corrupt ({_one_line(exc)}); restore it, delete it to run without "
                "compatibility checks, or rebuild the engine with `trtq build`"
            ) from None
    record = header.get("trtq") if header is not None else None
    if not isinstance(record, dict):
        return plan, None
    try:
        return plan, EngineMetadata.from_dict(record)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise TrtqError(
            f"the metadata header of {p} is corrupt ({_one_line(exc)}); rebuild the engine with `trtq build`"
        ) from None


def _one_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def read_header(path: str | Path) -> dict[str, Any] | None:
    """The Ultralytics header of an engine file, or None when it has none."""
    with open(path, "rb") as fh:
        head = fh.read(4)
        if len(head) < 4:
            return None
        n = int.from_bytes(head, byteorder="little")
        size = Path(path).stat().st_size
        if not 0 < n <= size - 4:
            return None
        meta, _ = split_ultralytics_header(head + fh.read(n))
        return meta


def sm_label(cc: tuple[int, int] | None) -> str:
    if cc is None:
        return "an unknown GPU"
    name = SM_NAMES.get((int(cc[0]), int(cc[1])))
    return f"SM {cc[0]}.{cc[1]}" + (f" ({name})" if name else "")


def _short_version(version: str) -> str:
    return ".".join(version.split(".")[:3])


def _version_key(version: str) -> tuple[int, ...]:
    out: list[int] = []
    for part in version.split(".")[:4]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


#: Compute capability of the oldest GPU a hardware-compatible (AMPERE_PLUS) engine runs on.
HARDWARE_COMPATIBLE_MIN_CC = (8, 0)


def engine_dla_core(meta: EngineMetadata | None, header: dict[str, Any] | None) -> int | None:
    """The DLA core an engine was built for: trtq's record first, else the Ultralytics header's ``"dla"``.

    Ultralytics writes the core as a string (``"dla": "0"``) and sets ``runtime.DLA_core`` from it before
    deserializing; an engine it exported for DLA carries nothing else that says so.
    """
    if meta is not None and meta.dla_core is not None:
        return int(meta.dla_core)
    value = (header or {}).get("dla")
    if value is None or value == "":
        return None
    try:
        core = int(str(value).strip().removeprefix("dla:"))
    except ValueError:
        core = -1
    if core < 0:
        raise TrtqError(f"the engine header names DLA core {value!r}; expected a core number such as 0 or 1")
    return core


def configure_runtime(runtime: Any, meta: EngineMetadata | None, header: dict[str, Any] | None) -> int | None:
    """Tell a ``trt.Runtime`` what this engine needs before ``deserialize_cuda_engine``; returns the DLA core.

    - ``DLA_core``: the core the engine was built for (:func:`engine_dla_core`);
    - ``engine_host_code_allowed``: only for an engine trtq recorded as version compatible. Such a plan
      carries TensorRT's lean runtime as host code and does not deserialize without it; the flag is left off
      for every other engine.
    """
    core = engine_dla_core(meta, header)
    if core is not None:
        runtime.DLA_core = core
    if meta is not None and meta.builder.get("version_compatible", False):
        from trtq.trt.compat import allow_engine_host_code

        allow_engine_host_code(runtime)  # 8.6+; a version-compatible plan cannot come from an older TensorRT
    return core


def check_compatible(
    meta: EngineMetadata,
    *,
    tensorrt_version: str,
    compute_capability: tuple[int, int],
    dla_core: int | None = None,
    integrated: bool = False,
) -> None:
    """Raise :class:`TrtqError` explaining why this engine cannot load here (and how to rebuild it).

    ``integrated``: this GPU is a Jetson / integrated one (``trtq.device.is_integrated``), where
    hardware-compatible (AMPERE_PLUS) engines are not supported, whatever the compute capability.
    """
    problems: list[str] = []
    built_v = _short_version(meta.tensorrt_version) if meta.tensorrt_version else ""
    here_v = _short_version(tensorrt_version)
    # plans load only on the exact TensorRT release, build number included (10.3.0.26 != 10.3.0.30);
    # a version recorded without a build number is compared on major.minor.patch
    built_full, here_full = meta.tensorrt_version.split("."), tensorrt_version.split(".")
    common = min(len(built_full), len(here_full), 4)
    version_differs = bool(built_v) and built_full[:common] != here_full[:common]
    if version_differs and built_v == here_v:  # only the build number differs: show it
        built_v, here_v = ".".join(built_full[:4]), ".".join(here_full[:4])
    # a version-compatible engine (8.6+) also loads on later releases, never on earlier ones
    newer_ok = bool(meta.builder.get("version_compatible", False)) and (
        _version_key(tensorrt_version) >= _version_key(meta.tensorrt_version)
    )
    if version_differs and not newer_ok:
        problems.append("version")
    cc_differs = meta.compute_capability is not None and tuple(meta.compute_capability) != tuple(compute_capability)
    # a hardware-compatible engine (AMPERE_PLUS) runs on any GPU of compute capability 8.0 or newer
    hardware_compatible = bool(meta.builder.get("hardware_compatible", False))
    any_ampere = hardware_compatible and not integrated and tuple(compute_capability) >= HARDWARE_COMPATIBLE_MIN_CC
    if hardware_compatible and integrated:
        raise TrtqError(
            f"this hardware-compatible (AMPERE_PLUS) engine runs on discrete Ampere or newer GPUs only; this is an "
            f"integrated Jetson GPU ({sm_label(compute_capability)}), where TensorRT does not support it: rebuild it "
            f"here with `{(meta.command or 'trtq build MODEL.onnx ...').replace(' --hardware-compatible', '')}`"
        )
    if cc_differs and not any_ampere:
        problems.append("gpu")
    if meta.dla_core is not None and dla_core is not None and meta.dla_core != dla_core:
        problems.append("dla")
    if not problems:
        return
    rebuild = meta.command or "trtq build MODEL.onnx ..."
    if problems == ["version"] and meta.builder.get("version_compatible", False):
        raise TrtqError(
            f"this version-compatible engine was built with TensorRT {built_v}; it runs on that release or a later "
            f"one, and this is TensorRT {here_v}: rebuild it here with `{rebuild}`"
        )
    built = f"built with TensorRT {built_v or '?'} for {sm_label(meta.compute_capability)}"
    here = f"this is TensorRT {here_v} on {sm_label(compute_capability)}"
    if problems == ["dla"]:
        raise TrtqError(
            f"this engine was built for DLA core {meta.dla_core}, not DLA core {dla_core}: "
            f"load it with dla_core={meta.dla_core} or rebuild it with `{rebuild}`"
        )
    raise TrtqError(f"{built}; {here}: rebuild the engine on this device with `{rebuild}`")


def engine_model_metadata(meta: EngineMetadata | None, header: dict[str, Any] | None) -> dict[str, Any]:
    """What the outputs of an engine mean: the ultralytics header (task, names, kpt_shape, end2end) when
    the engine has one, completed by trtq's record (names, task)."""
    out: dict[str, Any] = dict(header or {})
    out.pop("trtq", None)
    if meta is not None:
        if meta.names:
            out.setdefault("names", {int(k): str(v) for k, v in meta.names.items()})
        out.setdefault("task", meta.task)
    return out


DEFAULT_OUTPUT_DIR = Path("engines")
_TAG_SUFFIXES = (".int8", ".qdq", ".fp16", ".fp32")


def engine_base_name(path: Path) -> str:
    """The model's name without trtq's precision tags (``yolov8n.int8.qdq.onnx`` -> ``yolov8n``)."""
    stem = path.stem
    for tag in _TAG_SUFFIXES:
        if stem.endswith(tag):
            return stem[: -len(tag)]
    return stem


def default_engine_path(model: str | Path, precision: str, *, dla_core: int | None = None) -> Path:
    """``engines/<model>.<precision>[.dla<N>].engine``."""
    name = engine_base_name(Path(model)) + f".{precision}" + (f".dla{dla_core}" if dla_core is not None else "")
    return DEFAULT_OUTPUT_DIR / f"{name}.engine"
