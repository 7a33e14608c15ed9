"""What an engine, a calibration cache or an ONNX is, and how it was made (``trtq inspect``).

- engine: its ``.json`` record (or Ultralytics header), plus per-layer precisions from TensorRT's
  ``IEngineInspector`` when TensorRT is present (needs an engine built with DETAILED profiling verbosity,
  which ``trtq build`` sets);
- calibration cache: header, tensor count, range summary and the ``.json`` record of what it was made from;
- ONNX: inputs, outputs, metadata, Q/DQ pair count.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from trtq.errors import TrtqError
from trtq.trt import compat

log = logging.getLogger(__name__)

#: First bytes of a serialized TensorRT plan (``ICudaEngine.serialize()``, trtexec ``--saveEngine``). The
#: same check is made by torch-tensorrt before it hands bytes to ``deserialize_cuda_engine``.
PLAN_MAGICS: tuple[bytes, ...] = (b"ftrt",)


def _engine_head(path: Path) -> bytes:
    """The first bytes of a file: enough to hold an Ultralytics header and the plan magic after it."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(4)
        n = int.from_bytes(head, byteorder="little") if len(head) == 4 else 0
        want = 4 + n + 64 if 0 < n <= size - 4 else 64
        return head + fh.read(want - len(head))


def plan_magic_error(path: Path, data: bytes) -> str | None:
    """Why ``data`` (the start of an engine file) is not a TensorRT engine, or None when it is one.

    An engine is a serialized plan, optionally after the Ultralytics metadata header (4-byte little-endian
    length + JSON) that ``ultralytics`` and ``trtq build --ultralytics-header`` write in front of it.
    """
    from trtq.engine_meta import split_ultralytics_header

    header, plan = split_ultralytics_header(data)
    if any(plan.startswith(m) for m in PLAN_MAGICS):
        return None
    where = "after its Ultralytics header " if header is not None else ""
    return (
        f"{path} is not a TensorRT engine: it {where}starts with {plan[:4]!r}, a serialized TensorRT plan "
        f"starts with {PLAN_MAGICS[0]!r}; pass an engine written by `trtq build` or TensorRT"
    )


@dataclass
class Inspection:
    kind: str  # engine | cache | onnx
    path: Path
    data: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "\n".join(self.lines)


def _precision_of(tensor: dict[str, Any]) -> str:
    """``Format/Datatype`` (<= 10.x) or ``Datatype`` (11.x) of an inspector tensor entry -> short name."""
    fmt = str(tensor.get("Format/Datatype") or " ".join(str(tensor.get(k, "")) for k in ("Datatype", "Format")))
    low = fmt.lower()
    for key, name in (("uint8", "UINT8"), ("int8", "INT8"), ("fp8", "FP8"), ("half", "FP16"), ("fp16", "FP16"),
                      ("bf16", "BF16"), ("int32", "INT32"), ("int64", "INT64"), ("bool", "BOOL"),
                      ("float", "FP32"), ("fp32", "FP32")):
        if key in low:
            return name
    return fmt or "?"


def layer_precisions(
    trt: ModuleType, plan: bytes, *, dla_core: int | None = None, host_code: bool = False
) -> list[dict[str, Any]]:
    """Per-layer name, type and output precision of a plan, read with TensorRT's engine inspector.

    ``dla_core``: the DLA core a DLA engine was built for (set on the runtime before deserializing).
    ``host_code``: allow the lean runtime a version-compatible plan carries.
    """
    with compat.logger_at(trt, "ERROR") as logger:  # the process logger gets its level back afterwards
        return _layer_rows(trt, logger, plan, dla_core=dla_core, host_code=host_code)


def _layer_rows(trt: ModuleType, logger: Any, plan: bytes, *, dla_core: int | None,
                host_code: bool) -> list[dict[str, Any]]:
    t = compat.typed(trt)
    runtime = t.Runtime(logger)
    if dla_core is not None:
        runtime.DLA_core = int(dla_core)
    if host_code and not compat.allow_engine_host_code(runtime):
        log.info("TensorRT %s has no engine_host_code_allowed (8.6+)", compat.trt_version(trt))
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise TrtqError("TensorRT could not deserialize the engine (another TensorRT version or GPU?)")
    inspector = engine.create_engine_inspector()
    if inspector is None:
        raise TrtqError("this TensorRT build has no engine inspector; pass --no-layers")
    rows: list[dict[str, Any]] = []
    for i in range(int(engine.num_layers)):
        raw = inspector.get_layer_information(i, t.LayerInformationFormat.JSON)
        try:
            info = json.loads(raw)
        except ValueError:
            rows.append({"name": str(raw), "type": "", "precision": "?"})
            continue
        if not isinstance(info, dict):
            rows.append({"name": str(info), "type": "", "precision": "?"})
            continue
        outputs = info.get("Outputs") or []
        precs = sorted({_precision_of(o) for o in outputs if isinstance(o, dict)})
        rows.append({
            "name": str(info.get("Name", i)),
            "type": str(info.get("LayerType", "")),
            "precision": "/".join(precs) if precs else "? (build with DETAILED profiling verbosity)",
        })
    return rows


def inspect_engine(path: Path, trt_module: ModuleType | None = None, *, layers: bool = True) -> Inspection:
    from trtq.engine_meta import engine_dla_core, read_engine, read_header

    problem = plan_magic_error(path, _engine_head(path))
    if problem is not None:
        raise TrtqError(problem)
    plan, meta = read_engine(path)
    out = Inspection("engine", path)
    header = read_header(path)
    out.data["plan_bytes"] = len(plan)
    out.data["ultralytics_header"] = header is not None
    out.lines.append(f"{path}: TensorRT engine ({len(plan) / 1e6:.1f} MB plan"
                     + (", Ultralytics header" if header is not None else "") + ")")
    if meta is None:
        out.lines.append("  no trtq metadata (no .json record, no header): origin unknown")
    else:
        d = meta.to_dict()
        out.data["metadata"] = d
        cc = meta.compute_capability
        out.lines += [
            f"  precision      {meta.precision}" + (f" ({meta.mode} INT8)" if meta.mode else "")
            + (", strongly typed" if meta.strongly_typed else ""),
            f"  built with     TensorRT {meta.tensorrt_version or '?'} on {meta.gpu_name or '?'}"
            + (f" (SM {cc[0]}.{cc[1]})" if cc else "") + (f", DLA core {meta.dla_core}" if meta.dla_core is not None else ""),
            f"  model          {meta.model_path} (sha256 {meta.model_sha256[:12]})",
        ]
        if meta.algorithm or meta.calibrator:
            out.lines.append(f"  calibration    {meta.algorithm or '?'}; {meta.calibrator or 'Q/DQ scales in the ONNX'}")
        if meta.cache_path:
            out.lines.append(f"  cache          {meta.cache_path} (sha256 {(meta.cache_sha256 or '?')[:12]})")
        for io in meta.inputs:
            out.lines.append(f"  input          {io['name']} {io['shape']} {io['dtype']}")
        for io in meta.outputs:
            out.lines.append(f"  output         {io['name']} {io['shape']} {io['dtype']}")
        for i, prof in enumerate(meta.profiles):
            for name, shapes in prof.items():
                out.lines.append(f"  profile {i}      {name}: min {shapes['min']} opt {shapes['opt']} max {shapes['max']}")
        out.lines.append(f"  classes        {len(meta.names)}; stride {meta.stride}; imgsz {list(meta.imgsz)}")
        if meta.float_layers:
            out.lines.append(f"  kept in float  {len(meta.float_layers)} layers (YOLOv8 head policy)")
        if meta.command:
            out.lines.append(f"  rebuild        {meta.command}")
        out.lines.append(f"  created        {meta.created} by trtq {meta.trtq_version}")
    if layers:
        trt = trt_module if trt_module is not None else compat.load_tensorrt()
        if trt is None:
            out.lines.append(f"  layers         per-layer precisions need TensorRT ({compat.missing_tensorrt_reason()})")
        else:
            try:
                rows = layer_precisions(trt, plan, dla_core=engine_dla_core(meta, header),
                                        host_code=meta is not None and bool(meta.builder.get("version_compatible")))
            except TrtqError as exc:
                out.lines.append(f"  layers         {exc}")
            else:
                out.data["layers"] = rows
                counts = Counter(r["precision"] for r in rows)
                out.lines.append("  layers         " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
                for r in rows:
                    out.lines.append(f"    {r['precision']:<6} {r['type']:<16} {r['name']}")
    return out


def inspect_cache(path: Path) -> Inspection:
    from calibrators.table import CalibrationTable, parse_trt_cache, table_sidecar_path

    data = path.read_bytes()
    header, scales = parse_trt_cache(data)
    amax = sorted(s * 127.0 for s in scales.values())
    out = Inspection("cache", path, {"header": header, "tensors": len(scales)})
    out.lines.append(f"{path}: TensorRT calibration cache {header}, {len(scales)} tensors")
    if amax:
        out.lines.append(f"  amax           min {amax[0]:.4g}, median {amax[len(amax) // 2]:.4g}, max {amax[-1]:.4g}")
    side = table_sidecar_path(path)
    if not side.is_file():
        out.lines.append(f"  no record {side.name}: what this cache was made from is unknown")
        return out
    try:
        table = CalibrationTable.load(path)
    except TrtqError as exc:
        out.lines.append(f"  record         {exc}")
        return out
    out.data["record"] = {
        "algorithm": table.algorithm, "percentile": table.percentile, "model_sha256": table.model_sha256,
        "num_images": table.num_images, "images_sha256": table.images_sha256, "preprocessing": table.preprocessing,
        "tensorrt_version": table.tensorrt_version, "trtq_version": table.trtq_version, "created": table.created,
    }
    pre = table.preprocessing
    out.lines += [
        f"  algorithm      {table.algorithm}" + (f" ({table.percentile:g}th percentile)" if table.percentile else ""),
        f"  model          sha256 {table.model_sha256[:12]}",
        f"  images         {table.num_images} (list sha256 {table.images_sha256[:12]})",
        f"  preprocessing  imgsz {pre.get('imgsz')}, stride {pre.get('stride')}, pad {pre.get('pad_value')}, "
        f"{pre.get('color')} {pre.get('layout')}",
        f"  header for     TensorRT {table.tensorrt_version} (rewritten for the installed version at build time)",
        f"  created        {table.created} by trtq {table.trtq_version}",
    ]
    return out


def inspect_onnx(path: Path) -> Inspection:
    import onnx

    from trtq.modelinfo import read_model_info

    info = read_model_info(path)
    model = onnx.load(str(path), load_external_data=False)
    ops = Counter(n.op_type for n in model.graph.node)
    qdq = ops.get("QuantizeLinear", 0)
    out = Inspection("onnx", path, {
        "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in info.inputs],
        "outputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in info.outputs],
        "metadata": {k: v if isinstance(v, (str, int, float, list, dict)) else str(v) for k, v in info.metadata.items()},
        "quantize_linear": qdq,
        "dequantize_linear": ops.get("DequantizeLinear", 0),
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0),
        "sha256": info.sha256,
    })
    kind = f"Q/DQ INT8 ONNX ({qdq} QuantizeLinear)" if qdq else "float ONNX (no Q/DQ)"
    out.lines.append(f"{path}: {kind}, opset {out.data['opset']}, {len(model.graph.node)} nodes")
    for s in info.inputs:
        out.lines.append(f"  input          {s.name} {[d if d is not None else -1 for d in s.shape]} {s.dtype}")
    for s in info.outputs:
        out.lines.append(f"  output         {s.name} {[d if d is not None else -1 for d in s.shape]} {s.dtype}")
    if info.names:
        out.lines.append(f"  classes        {len(info.names)}; stride {info.stride}; imgsz {list(info.imgsz)}")
    for key in ("description", "version", "task", "date", "trtq_target"):
        if key in info.metadata:
            out.lines.append(f"  {key:<14} {info.metadata[key]}")
    out.lines.append(f"  sha256         {info.sha256[:16]}")
    return out


_OTHER_ARTEFACTS = (
    (".report.json", "a quantization report (its .report.md is the readable copy)"),
    (".report.md", "a quantization report: read it as it is"),
    (".ref-inputs.json", "a set of reference inputs for `trtq verify` (Polygraphy's JSON format)"),
    (".ref-outputs.json", "a set of reference outputs for `trtq verify` (Polygraphy's RunResults)"),
    (".ref.json", "the sidecar of a reference set (which model it belongs to, the hashes of its two files)"),
)


def _other_artefact(p: Path) -> str | None:
    """What a trtq file that is not an engine, model or cache is, by its name."""
    return next((what for end, what in _OTHER_ARTEFACTS if p.name.endswith(end)), None)


def inspect_path(path: str | Path, *, trt_module: ModuleType | None = None, layers: bool = True) -> Inspection:
    """Describe an ``.engine``, a calibration cache or an ``.onnx``."""
    p = Path(path)
    if not p.is_file():
        raise TrtqError(f"not found: {p}")
    suffix = p.suffix.lower()
    other = _other_artefact(p)
    if other is not None:
        raise TrtqError(f"{p.name} is {other}; trtq inspect describes engines, ONNX models and calibration caches")
    if suffix == ".json":  # a record: inspect what it describes
        target = p.with_name(p.name[: -len(".json")])
        if target.is_file():
            return inspect_path(target, trt_module=trt_module, layers=layers)
        raise TrtqError(f"{p} is a record of {target.name}, which is not there; put the engine next to it or inspect the engine")
    if suffix == ".onnx":
        return inspect_onnx(p)
    if suffix in (".engine", ".plan", ".trt"):
        return inspect_engine(p, trt_module, layers=layers)
    with open(p, "rb") as fh:
        head = fh.read(4)
    if head == b"TRT-" or suffix in (".cache", ".calib", ".table"):
        return inspect_cache(p)
    if plan_magic_error(p, _engine_head(p)) is None:
        return inspect_engine(p, trt_module, layers=layers)
    raise TrtqError(f"{p}: trtq inspect knows .engine, .onnx and calibration caches (TRT-... text files)")
