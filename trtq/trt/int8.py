"""INT8 inputs of a build, decided before TensorRT is touched: mode, calibration cache, Q/DQ ONNX.

- :func:`choose_mode`: implicit (calibrator) or explicit (Q/DQ ONNX) for the TensorRT at hand, or None when
  there is none here and both are prepared;
- :func:`prepare_int8`: the cache rules (a valid cache is reused without opening an image; a stale or
  foreign one is refused, ``force_cache`` overrides), CPU calibration where TensorRT will not stream the
  images itself, and the Q/DQ ONNX (``trtq.quantize.quantize``) for explicit mode;
- :func:`finish_message`: without TensorRT, what was done here and the commands that finish on the target;
- :func:`cache_writer`: a cache TensorRT computed, saved as a trtq calibration table (cache + record).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

from calibrators.ranges import DEFAULT_ALGO
from trtq.errors import TrtqError
from trtq.trt import compat
from trtq.trt.options import BuildOptions, Profile, command_line

if TYPE_CHECKING:
    from calibrators.table import CalibrationTable
    from trtq.modelinfo import ModelInfo

log = logging.getLogger(__name__)


@dataclass
class Int8Plan:
    """INT8 inputs decided before TensorRT is touched."""

    mode: str | None  # implicit | explicit | None (target unknown: produce both)
    table: CalibrationTable | None = None
    cache_path: Path | None = None
    cache_bytes: bytes | None = None  # a cache served as is (force_cache without a record)
    qdq_path: Path | None = None
    stream: bool = False  # TensorRT calibrates from the images itself
    histograms: Any = None  # from the CPU calibration, reused by the Q/DQ writer


def choose_mode(mode: str, *, qdq: bool, caps: compat.Capabilities | None, dla: bool) -> str | None:
    """implicit | explicit, or None when the target is unknown (no TensorRT here)."""
    if qdq:
        return "explicit"
    if caps is None:
        return None if mode == "auto" else mode
    if mode == "implicit":
        if not caps.implicit_int8:
            raise TrtqError(
                f"TensorRT {caps.version} has no implicit INT8 (calibrators were removed in TensorRT 11): "
                "use --mode explicit (or auto) to build from a Q/DQ ONNX"
            )
        if caps.implicit_deprecated:
            log.warning("implicit INT8 is deprecated since TensorRT 10.1 (this is %s); it still works", caps.version)
        return "implicit"
    if mode == "explicit":
        if caps.major_minor < (10, 1):
            log.info("explicit INT8 on TensorRT %s: weakly typed build from the Q/DQ ONNX", caps.version)
        return "explicit"
    # auto
    if dla and caps.implicit_int8:
        return "implicit"  # DLA before TensorRT 11 quantizes through a calibrator
    if not caps.implicit_int8 or caps.implicit_deprecated:
        return "explicit"
    return "implicit"


#: The newest ONNX opset the ONNX parsers of TensorRT 8.5 / 8.6 read (10.0 and later read newer ones).
MAX_OPSET_BEFORE_10 = 17


def check_parser_opset(caps: compat.Capabilities, graph: Any, onnx_path: Path, *, explicit_from_fp16: bool) -> None:
    """Refuse, before any CPU work, an ONNX this TensorRT's parser cannot read.

    On 8.5 / 8.6 the parser stops at opset 17: a model already past it, and explicit INT8 from an FP16 ONNX
    (whose Q/DQ nodes carry FP16 scales, which ONNX allows only from opset 19) are refused in one line.
    """
    if caps.major_minor >= (10, 0):
        return
    from trtq.onnxgraph import default_opset
    from trtq.precision import FP16_QDQ_OPSET

    opset = default_opset(graph)
    if opset > MAX_OPSET_BEFORE_10:
        raise TrtqError(
            f"TensorRT {caps.version}'s ONNX parser reads opsets up to {MAX_OPSET_BEFORE_10} and {onnx_path.name} is "
            f"opset {opset}: re-export it with `trtq export --opset {MAX_OPSET_BEFORE_10}` (from the FP32 model for "
            "INT8), or build on TensorRT 10+"
        )
    if explicit_from_fp16:
        raise TrtqError(
            f"explicit INT8 from the FP16 {onnx_path.name} writes FP16 Q/DQ scales, which need opset "
            f"{FP16_QDQ_OPSET}, and TensorRT {caps.version}'s ONNX parser stops at opset {MAX_OPSET_BEFORE_10}: build "
            "from the FP32 ONNX (layers outside INT8 still run in FP16), use --mode implicit, or TensorRT 10+"
        )


def expected_preprocessing(info: ModelInfo, profile: Profile) -> dict[str, Any]:
    """The preprocessing record an ImageBatcher for this build would write (no image is opened)."""
    from trtq.images import ImageBatcher

    shape_only = SimpleNamespace(imgsz=(profile.height, profile.width), stride=info.stride, batch=profile.opt, auto=False)
    return ImageBatcher.preprocessing(cast(Any, shape_only))


def _table_from_raw_cache(path: Path, algo: str) -> CalibrationTable:
    from calibrators.table import CalibrationTable, parse_trt_cache

    _, scales = parse_trt_cache(path.read_bytes())
    return CalibrationTable(amax={k: float(v) * 127.0 for k, v in scales.items()}, algorithm=algo)


def prepare_int8(
    plan: Int8Plan,
    options: BuildOptions,
    *,
    onnx_path: Path,
    info: ModelInfo,
    profile: Profile,
    workdir: Path,
    base: str,
    trt_version: str | None,
    stream_available: bool,
) -> Int8Plan:
    """Find or make the INT8 ranges (cache) and, where needed, the Q/DQ ONNX."""
    algo = options.algorithm
    user_cache = Path(options.cache) if options.cache is not None else None
    cache_path = user_cache or workdir / f"{base}.{algo}.cache"
    plan.cache_path = cache_path
    table: CalibrationTable | None = None
    if cache_path.is_file():
        table = _reuse_cache(plan, options, cache_path, user_cache=user_cache, info=info, profile=profile)
    elif user_cache is not None and options.calib is None:
        raise TrtqError(f"calibration cache {user_cache} not found; pass --calib DIR to create it")

    if table is None:
        table = _calibrate(plan, options, onnx_path=onnx_path, profile=profile, cache_path=cache_path,
                           trt_version=trt_version, stream_available=stream_available)
    plan.table = table

    if plan.mode in ("explicit", None):
        from trtq.quantize import quantize
        from trtq.quantize_options import QuantizeOptions

        qoptions = QuantizeOptions(algo=algo, percentile=options.percentile, num_images=options.num_images,
                                   batch=profile.opt, seed=options.seed, cache=table, progress=options.progress)
        qres = quantize(onnx_path, options.calib, qoptions, output=workdir / f"{base}.int8.onnx",
                        histograms=plan.histograms)
        plan.qdq_path = Path(qres.path)
        log.info("wrote Q/DQ ONNX %s", plan.qdq_path)
    return plan


def _reuse_cache(
    plan: Int8Plan, options: BuildOptions, cache_path: Path, *, user_cache: Path | None, info: ModelInfo,
    profile: Profile,
) -> CalibrationTable | None:
    """The existing cache if it fits this build (None: recalibrate); a user's misfit cache is refused."""
    from calibrators.table import CalibrationTable

    algo = options.algorithm
    force_cache = options.force_cache
    table: CalibrationTable | None = None
    try:
        table = CalibrationTable.load(cache_path)
    except TrtqError as exc:
        if user_cache is not None and force_cache:
            log.warning("%s; using it anyway (--force-cache)", exc)
            plan.cache_bytes = cache_path.read_bytes()
            table = _table_from_raw_cache(cache_path, algo)
        elif user_cache is not None:
            raise TrtqError(f"{exc} (or pass --force-cache to use it as it is)") from None
        else:
            log.info("ignoring %s (%s); recalibrating", cache_path, exc)
    if table is None or plan.cache_bytes is not None:
        return table
    adopt = user_cache is not None and options.algo is None  # without --algo, a --cache keeps its own algorithm
    mismatch = table.mismatches(
        model_sha256=info.sha256,
        preprocessing=expected_preprocessing(info, profile),
        algorithm=None if adopt else algo,
        percentile=options.percentile if algo == "percentile" and not adopt else None,
    )
    diffs = list(mismatch.values())
    if diffs and force_cache:
        log.warning("calibration cache %s does not match this build (%s); using it anyway (--force-cache)",
                    cache_path, "; ".join(diffs))
    elif diffs and user_cache is not None:
        only_algo = set(mismatch) <= {"algorithm", "percentile"}
        fix = ("Drop --algo/--percentile to build with the cache's own algorithm" if only_algo else
               "Recalibrate (pass --calib without this --cache, or delete it)")
        raise TrtqError(
            f"calibration cache {cache_path} was made for something else: {'; '.join(diffs)}. "
            f"{fix} or pass --force-cache to use it anyway"
        )
    elif diffs:
        log.info("calibration cache %s is stale (%s); recalibrating", cache_path, "; ".join(diffs))
        table = None
    else:
        log.info("reusing calibration cache %s (model, preprocessing and algorithm match): no image is opened",
                 cache_path)
    return table


def _calibrate(
    plan: Int8Plan, options: BuildOptions, *, onnx_path: Path, profile: Profile, cache_path: Path,
    trt_version: str | None, stream_available: bool,
) -> CalibrationTable | None:
    """Calibrate on the CPU, or leave it to TensorRT's own calibrator (``plan.stream``, no table yet)."""
    algo = options.algorithm
    if options.calib is None:
        raise TrtqError(
            "INT8 needs calibration: pass --calib DIR (images like those the model will see; 500+ recommended) "
            "or --cache FILE (from `trtq calibrate`)"
        )
    from calibrators.trt import STREAMING_KINDS

    if stream_available and plan.mode == "implicit" and algo in STREAMING_KINDS:
        plan.stream = True  # TensorRT calibrates from the images during the build and writes the cache
        if options.dla_core is not None and algo == "minmax":
            log.warning("DLA needs the entropy calibrator; calibrating with entropy instead of minmax")
        return None
    from calibrators.calibrate import calibrate
    from calibrators.table import DEFAULT_TRT_VERSION

    result = calibrate(
        onnx_path,
        options.calib,
        algo=algo,
        percentile=options.percentile,
        num_images=options.num_images,
        batch=profile.opt,
        seed=options.seed,
        trt_version=trt_version or DEFAULT_TRT_VERSION,
        output=cache_path,
        progress=options.progress,
    )
    plan.histograms = result.histograms
    log.info("calibrated %d images on the CPU (%s): %s", result.table.num_images, algo, cache_path)
    return result.table


def finish_message(onnx_path: Path, precision: str, plan: Int8Plan, opts: dict[str, Any], algo: str) -> str:
    """Without TensorRT: what was done here, the commands that finish on the target, and what to install."""
    reason = compat.missing_tensorrt_reason()
    lines = [f"TensorRT is needed to build the engine and is not available here: {reason}."]
    done = [f"ONNX {onnx_path}"]
    if plan.cache_path is not None and plan.table is not None:
        done.append(f"calibration cache {plan.cache_path} (+ .json record, {algo})")
    if plan.qdq_path is not None and plan.qdq_path != onnx_path:
        done.append(f"Q/DQ ONNX {plan.qdq_path}")
    lines.append("Done on this machine: " + ", ".join(done) + ".")
    lines.append("Finish on the target (Jetson or GPU machine with TensorRT; copy these files there):")
    if precision != "int8":
        lines.append("  " + command_line(onnx_path, {**opts, "fp16": precision == "fp16"}))
    else:
        if plan.qdq_path is not None:
            lines.append("  " + command_line(plan.qdq_path, opts) + "    # explicit INT8 (TensorRT >= 10.1; only way on 11)")
        if plan.cache_path is not None and plan.table is not None and plan.mode != "explicit":
            implicit = {**opts, "int8": True, "cache": plan.cache_path, "algo": algo if algo != DEFAULT_ALGO else None,
                        "mode": "implicit"}
            lines.append("  " + command_line(onnx_path, implicit) + "    # implicit INT8 (TensorRT 8.5-10.x, DLA)")
    lines.append("Install TensorRT there (JetPack ships it; desktop: pip install tensorrt) plus pycuda or cuda-python.")
    return "\n".join(lines)


def cache_writer(cache_path: Path, info: ModelInfo, batcher: Any, kind: str, trt_version: str) -> Any:
    """Save a cache TensorRT computed as a trtq calibration table (cache + record), so it can be reused."""

    def write(data: bytes) -> None:
        from calibrators.table import CalibrationTable, parse_trt_cache
        from trtq.fileio import write_bytes

        try:
            _, scales = parse_trt_cache(data)
            table = CalibrationTable(
                amax={k: float(v) * 127.0 for k, v in scales.items()},
                algorithm=kind,
                model_sha256=info.sha256,
                num_images=int(getattr(batcher, "num_used", 0) or len(batcher.selected)),
                images_sha256=batcher.images_sha256(),
                preprocessing=batcher.preprocessing(),
                tensorrt_version=trt_version,
            )
        except TrtqError as exc:
            log.warning("TensorRT's calibration cache cannot be recorded (%s); writing it without a record", exc)
            write_bytes(cache_path, data)
            return
        table.save(cache_path)

    return write
