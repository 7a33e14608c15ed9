"""``build_engine``: the library function behind ``trtq build``.

One call takes a ``.pt``, an FP32 ONNX or a Q/DQ ONNX to a self-describing TensorRT engine:

1. ``.pt`` -> ONNX (``trtq.export.export_onnx``), into the output folder (the model's folder may be read-only);
2. precision and INT8 mode: a Q/DQ ONNX is explicit INT8; INT8 always enables FP16 so non-INT8 layers never
   fall back to FP32; ``auto`` picks explicit where implicit INT8 is deprecated (TensorRT >= 10.1) or removed
   (11) and implicit on 8.5 - 10.0 and for DLA before 11;
3. INT8 ranges (``algo``, default ``calibrators.ranges.DEFAULT_ALGO``; a ``cache`` given without ``algo``
   keeps the algorithm it was made with): a valid calibration cache is reused without opening an image (a
   stale or foreign one is refused, ``force_cache`` overrides); otherwise, for entropy or minmax in implicit
   mode, TensorRT's own calibrators stream the images through device buffers, and in every other case
   (percentile, mse, explicit mode, or no TensorRT) trtq computes the ranges on the CPU; explicit mode writes
   the Q/DQ ONNX (``trtq.quantize.quantize``);
4. without TensorRT: stop after the CPU artefacts with :class:`MissingDependencyError` (exit code 3) that
   names what is missing and the exact command that finishes the job on the target;
5. with TensorRT: network (EXPLICIT_BATCH on 8.x, STRONGLY_TYPED where chosen), optimization profile,
   workspace, builder optimization level, timing cache, DLA with GPU fallback, the YOLOv8 head policy as
   per-layer precision constraints (implicit mode), the calibrator, the build, then ``X.engine`` +
   ``X.engine.json`` (``trtq.engine_meta``).

TensorRT's version differences go through ``trtq.trt.compat``; TensorRT itself can be passed in
(``trt_module``), which is how the contract tests run every step with a recording fake.
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

from calibrators.ranges import ALGORITHMS, DEFAULT_ALGO, DEFAULT_PERCENTILE
from trtq.errors import MissingDependencyError, TrtqError
from trtq.trt import compat

if TYPE_CHECKING:
    import onnx

    from calibrators.table import CalibrationTable
    from trtq.device import Device
    from trtq.engine_meta import EngineMetadata
    from trtq.modelinfo import ModelInfo, TensorSpec

log = logging.getLogger(__name__)

MODES = ("auto", "implicit", "explicit")
DEFAULT_OUTPUT_DIR = Path("engines")
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_TAG_SUFFIXES = (".int8", ".qdq", ".fp16", ".fp32")


@dataclass
class BuildResult:
    """What a build produced (engine fields are None when it stopped before TensorRT)."""

    engine_path: Path | None
    metadata: EngineMetadata | None
    onnx_path: Path
    precision: str
    mode: str | None = None
    qdq_path: Path | None = None
    cache_path: Path | None = None
    timing_cache_path: Path | None = None
    float_layers: dict[str, str] = field(default_factory=dict)
    calibration_batches: int = 0
    seconds: float = 0.0
    verification: dict[str, Any] | None = None  # trtq.verify record (also in the engine's .json)
    references: dict[str, Any] = field(default_factory=dict)  # kind -> trtq.reference.Reference


@dataclass(frozen=True)
class Profile:
    """Batch range of the optimization profile (H and W are fixed per engine)."""

    min: int
    opt: int
    max: int
    height: int
    width: int

    def shape(self, which: str) -> tuple[int, int, int, int]:
        n = {"min": self.min, "opt": self.opt, "max": self.max}[which]
        return (n, 3, self.height, self.width)

    @property
    def static(self) -> bool:
        return self.min == self.opt == self.max


@dataclass
class _Int8Plan:
    """INT8 inputs decided before TensorRT is touched."""

    mode: str | None  # implicit | explicit | None (target unknown: produce both)
    table: CalibrationTable | None = None
    cache_path: Path | None = None
    cache_bytes: bytes | None = None  # a cache served as is (force_cache without a record)
    qdq_path: Path | None = None
    stream: bool = False  # TensorRT calibrates from the images itself
    histograms: Any = None  # from the CPU calibration, reused by the Q/DQ writer


# --------------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------------
def _base_name(path: Path) -> str:
    stem = path.stem
    for tag in _TAG_SUFFIXES:
        if stem.endswith(tag):
            return stem[: -len(tag)]
    return stem


def default_engine_path(model: str | Path, precision: str, *, dla_core: int | None = None) -> Path:
    """``engines/<model>.<precision>[.dla<N>].engine``."""
    name = _base_name(Path(model)) + f".{precision}" + (f".dla{dla_core}" if dla_core is not None else "")
    return DEFAULT_OUTPUT_DIR / f"{name}.engine"


def refuse_cpu_target(model: onnx.ModelProto, path: Path) -> None:
    """A model quantized for ONNX Runtime's CPU provider (``trtq quantize --target cpu``) is no TensorRT input."""
    from trtq.cpu_target import TARGET_CPU, model_target

    if model_target(model) == TARGET_CPU:
        raise TrtqError(
            f"{path.name} was quantized for the CPU (trtq quantize --target cpu), not for TensorRT: "
            "build from the FP32 ONNX, or from `trtq quantize --target tensorrt`"
        )


def is_qdq_model(model: onnx.ModelProto) -> bool:
    return any(n.op_type in _QDQ_OPS for n in model.graph.node)


def _resolve_profile(
    info: ModelInfo,
    *,
    batch: int | None,
    min_batch: int | None,
    opt_batch: int | None,
    max_batch: int | None,
    imgsz: tuple[int, int] | None,
) -> Profile:
    shape = info.input.shape
    n, h, w = shape[0], shape[2], shape[3]
    ranged = any(v is not None for v in (min_batch, opt_batch, max_batch))
    if batch is not None and ranged:
        raise TrtqError("pass either --batch N or --min-batch/--opt-batch/--max-batch, not both")
    for label, value in (("batch", batch), ("min-batch", min_batch), ("opt-batch", opt_batch), ("max-batch", max_batch)):
        if value is not None and value < 1:
            raise TrtqError(f"--{label} must be at least 1, got {value}")
    if n is not None:
        asked = {v for v in (batch, min_batch, opt_batch, max_batch) if v is not None}
        if asked - {n}:
            raise TrtqError(
                f"{info.path.name} has a fixed batch of {n}; export it with a dynamic batch "
                f"(`trtq export MODEL.pt --dynamic`, or build from the .pt) to use batch {sorted(asked - {n})[0]}"
            )
        lo = opt = hi = int(n)
    elif batch is not None:
        lo = opt = hi = batch
    else:
        lo = min_batch or 1
        hi = max_batch or max(opt_batch or 0, lo)
        opt = opt_batch or hi
        if not lo <= opt <= hi:
            raise TrtqError(f"batch profile must satisfy min <= opt <= max, got {lo} / {opt} / {hi}")
    if h is not None and w is not None:
        if imgsz is not None and tuple(imgsz) != (h, w):
            raise TrtqError(
                f"{info.path.name} is fixed at {h}x{w}; re-export it with --imgsz {imgsz[0]} to build at that size"
            )
        hw = (int(h), int(w))
    else:
        hw = tuple(imgsz) if imgsz is not None else info.imgsz
    return Profile(lo, opt, hi, int(hw[0]), int(hw[1]))


def _expected_preprocessing(info: ModelInfo, profile: Profile) -> dict[str, Any]:
    """The preprocessing record an ImageBatcher for this build would write (no image is opened)."""
    from trtq.images import ImageBatcher

    shape_only = SimpleNamespace(imgsz=(profile.height, profile.width), stride=info.stride, batch=profile.opt)
    return ImageBatcher.preprocessing(cast(Any, shape_only))


def _table_from_raw_cache(path: Path, algo: str) -> CalibrationTable:
    from calibrators.table import CalibrationTable, parse_trt_cache

    _, scales = parse_trt_cache(path.read_bytes())
    return CalibrationTable(amax={k: float(v) * 127.0 for k, v in scales.items()}, algorithm=algo)


def _command_line(model: Path, opts: dict[str, Any]) -> str:
    parts = ["trtq", "build", str(model)]
    for key, value in sorted(opts.items(), key=lambda kv: kv[0] == "output"):  # -o last, after the options
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        parts.extend([flag] if value is True else [flag, str(value)])
    return " ".join(shlex.quote(p) for p in parts)


# --------------------------------------------------------------------------------------------------------
# the library function
# --------------------------------------------------------------------------------------------------------
def build_engine(
    model: str | Path,
    *,
    fp16: bool = False,
    int8: bool = False,
    calib: str | Path | None = None,
    cache: str | Path | None = None,
    force_cache: bool = False,
    algo: str | None = None,
    percentile: float = DEFAULT_PERCENTILE,
    mode: str = "auto",
    batch: int | None = None,
    min_batch: int | None = None,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    imgsz: int | Sequence[int] | None = None,
    workspace: float | None = None,
    dla_core: int | None = None,
    gpu_fallback: bool = True,
    timing_cache: str | Path | None = None,
    builder_opt_level: int | None = None,
    strongly_typed: bool | None = None,
    version_compatible: bool = False,
    hardware_compatible: bool = False,
    ultralytics_header: bool = False,
    output: str | Path | None = None,
    num_images: int | None = None,
    seed: int = 0,
    progress: bool = True,
    trt_module: ModuleType | None = None,
    device: Device | None = None,
    verify: bool = True,
    reference_images: int = 8,
) -> BuildResult:
    """Build a TensorRT engine from ``model`` (.pt, FP32 ONNX or Q/DQ ONNX); see the module docstring.

    ``version_compatible``: the engine also runs on later TensorRT releases (8.6+; it carries its own lean
    runtime, so it may be slower; the runtime must allow host code, which ``trtq.runtime`` does for engines
    recorded as version compatible). ``hardware_compatible``: the engine runs on every Ampere or newer
    discrete GPU (8.6+, not for DLA; may be slower). Both are recorded in the engine's metadata, which is
    what lets the runtime's compatibility check accept a newer TensorRT or another GPU.

    ``workspace`` is in GiB. ``strongly_typed=None`` picks: always on TensorRT 11; on 8.x/10.x a weakly
    typed network with INT8+FP16 flags (so layers outside the Q/DQ pairs run in FP16) unless the ONNX is
    already FP16-typed. ``trt_module`` is the TensorRT module to use (default: the installed one);
    ``device`` the CUDA device for calibration buffers (default: ``trtq.device.get_device()``).

    Raises :class:`MissingDependencyError` (exit code 3) after the CPU steps when TensorRT is absent.
    With ``calib``, reference inputs/outputs for ``trtq verify`` are written (``trtq.reference``); with
    ``verify`` the built engine is checked against them (:class:`trtq.verify.VerificationFailed` if it fails).
    """
    t0 = time.perf_counter()
    algo_given = algo is not None  # without --algo, a --cache FILE keeps the algorithm it was made with
    algo = algo or DEFAULT_ALGO
    if algo not in ALGORITHMS:
        raise TrtqError(f"unknown calibration algorithm {algo!r}; choose one of {', '.join(ALGORITHMS)}")
    if mode not in MODES:
        raise TrtqError(f"unknown INT8 mode {mode!r}; choose one of {', '.join(MODES)}")
    if workspace is not None and workspace <= 0:
        raise TrtqError(f"--workspace is in GiB and must be positive, got {workspace}")
    if builder_opt_level is not None and not 0 <= builder_opt_level <= 5:
        raise TrtqError(f"--builder-opt-level must be 0..5, got {builder_opt_level}")
    if dla_core is not None and dla_core < 0:
        raise TrtqError(f"--dla-core must be 0 or more, got {dla_core}")
    hw: tuple[int, int] | None = None
    if imgsz is not None:
        sizes = [int(imgsz)] * 2 if isinstance(imgsz, int) else [int(s) for s in imgsz]
        if len(sizes) == 1:
            sizes = sizes * 2
        if len(sizes) != 2 or min(sizes) < 32:
            raise TrtqError(f"--imgsz must be one or two sizes of at least 32, got {imgsz}")
        hw = (sizes[0], sizes[1])

    src = Path(model)
    # A bare ultralytics model name (yolov8n.pt) is fetched by ultralytics during export.
    if not src.is_file() and not (src.suffix.lower() == ".pt" and src.parent == Path(".")):
        raise TrtqError(f"model not found: {src}")
    suffix = src.suffix.lower()
    if suffix not in (".pt", ".onnx"):
        raise TrtqError(f"{src}: trtq build takes a .pt (Ultralytics YOLOv8) or an .onnx model")

    trt = trt_module if trt_module is not None else compat.load_tensorrt()
    if trt is not None and not compat.is_real_tensorrt(trt):
        trt = None
    caps = compat.capabilities(trt) if trt is not None else None

    # -- 1. ONNX -------------------------------------------------------------------------------------------
    import onnx

    from trtq.modelinfo import check_model, read_model_info

    if suffix == ".pt":
        from trtq.export import export_onnx

        precision_guess = "int8" if int8 else "fp16" if fp16 else "fp32"
        out_dir = Path(output).parent if output is not None else DEFAULT_OUTPUT_DIR
        ranged = any(v is not None for v in (min_batch, opt_batch, max_batch))
        onnx_path = export_onnx(
            src,
            imgsz=hw if hw is not None else 640,
            batch=max_batch or batch or 1,
            dynamic=ranged,
            output=out_dir / f"{_base_name(src)}.onnx",
        )
        log.info("exported %s -> %s (%s build)", src, onnx_path, precision_guess)
    else:
        onnx_path = src
    info = read_model_info(onnx_path)
    check_model(info)
    graph = onnx.load(str(onnx_path), load_external_data=False)
    refuse_cpu_target(graph, onnx_path)
    qdq = is_qdq_model(graph)
    fp16_onnx = info.input.dtype == "float16"

    # -- 2. precision and mode -----------------------------------------------------------------------------
    if qdq:
        if mode == "implicit":
            raise TrtqError(
                f"{onnx_path.name} is a Q/DQ ONNX (explicit INT8); implicit mode needs the FP32 ONNX it was made from"
            )
        if not int8:
            log.info("%s contains Q/DQ nodes: building explicit INT8", onnx_path.name)
        int8 = True
    if int8 and not fp16:
        fp16 = True  # INT8 always allows FP16: layers left out of INT8 must not fall back to FP32
    precision = "int8" if int8 else "fp16" if fp16 else "fp32"
    profile = _resolve_profile(info, batch=batch, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                               imgsz=hw)
    if dla_core is not None:
        if not profile.static:
            raise TrtqError(
                f"DLA needs static shapes: min, opt and max batch must be equal (got {profile.min}/{profile.opt}/"
                f"{profile.max}); pass --batch N"
            )
        if precision == "fp32":
            raise TrtqError("DLA has no FP32: add --fp16 or --int8")
    engine_path = Path(output) if output is not None else default_engine_path(src, precision, dla_core=dla_core)
    if engine_path.suffix != ".engine":
        engine_path = engine_path.with_name(engine_path.name + ".engine")
    workdir = engine_path.parent
    base = _base_name(onnx_path)

    int8_mode: str | None = None
    if int8:
        int8_mode = _choose_mode(mode, qdq=qdq, caps=caps, dla=dla_core is not None)

    # -- 3. INT8 inputs (CPU side) ---------------------------------------------------------------------
    plan = _Int8Plan(mode=int8_mode)
    if int8 and qdq:
        plan.qdq_path = onnx_path
    elif int8:
        plan = _prepare_int8(
            plan,
            onnx_path=onnx_path,
            info=info,
            profile=profile,
            calib=calib,
            cache=cache,
            force_cache=force_cache,
            algo=algo,
            algo_given=algo_given,
            percentile=percentile,
            num_images=num_images,
            seed=seed,
            workdir=workdir,
            base=base,
            trt_version=compat.trt_version(trt) if trt is not None else None,
            stream_available=trt is not None and caps is not None and caps.implicit_int8,
            dla=dla_core is not None,
            progress=progress,
        )
        if plan.table is not None and not algo_given and cache is not None:
            algo = plan.table.algorithm  # the --cache's own algorithm

    finish_opts: dict[str, Any] = {
        "batch": batch,
        "min_batch": min_batch,
        "opt_batch": opt_batch,
        "max_batch": max_batch,
        "workspace": workspace,
        "dla_core": dla_core,
        "no_gpu_fallback": not gpu_fallback if dla_core is not None else None,
        "builder_opt_level": builder_opt_level,
        "version_compatible": version_compatible,
        "hardware_compatible": hardware_compatible,
        "ultralytics_header": ultralytics_header,
        "output": engine_path if output is not None else None,  # the finishing command keeps the user's -o
    }
    # -- reference inputs/outputs for verification (trtq.reference) ---------------------------------------
    from trtq.reference import build_references

    refs = build_references(onnx_path=onnx_path, engine_path=engine_path, precision=precision, mode=plan.mode,
                            qdq_path=plan.qdq_path, table=plan.table, cache_path=plan.cache_path, calib=calib,
                            batch=profile.min, seed=seed, num_images=reference_images,
                            reuse=not plan.stream and plan.histograms is None) if reference_images else {}

    # -- 4. no TensorRT: stop here, saying how to finish ---------------------------------------------------
    if trt is None or caps is None:
        from trtq.verify import finish_lines

        *done, install = _finish_message(onnx_path, precision, plan, finish_opts, algo).splitlines()
        engine_for = engine_path if output is not None else None
        raise MissingDependencyError("\n".join([*done, *finish_lines(refs, plan.qdq_path, precision, engine=engine_for),
                                                install]))

    # -- 5. TensorRT -------------------------------------------------------------------------------------------
    build_path = plan.qdq_path if (int8 and plan.mode == "explicit") else onnx_path
    assert build_path is not None
    build_graph = graph if build_path == onnx_path else onnx.load(str(build_path), load_external_data=False)
    model_info = info if build_path == onnx_path else read_model_info(build_path)
    command = _command_line(build_path, {**finish_opts, "fp16": fp16 and not int8, "int8": int8 and not qdq,
                                         "cache": plan.cache_path if plan.mode == "implicit" else None,
                                         "mode": plan.mode if plan.mode == "implicit" else None})
    meta, plan_bytes, float_layers, batches = _build_with_tensorrt(
        trt,
        caps,
        onnx_path=build_path,
        graph=build_graph,
        info=model_info,
        profile=profile,
        precision=precision,
        int8_plan=plan,
        calib=calib,
        algo=algo,
        num_images=num_images,
        seed=seed,
        workspace=workspace,
        dla_core=dla_core,
        gpu_fallback=gpu_fallback,
        timing_cache=Path(timing_cache) if timing_cache is not None else None,
        builder_opt_level=builder_opt_level,
        strongly_typed=strongly_typed,
        version_compatible=version_compatible,
        hardware_compatible=hardware_compatible,
        fp16_onnx=fp16_onnx or model_info.input.dtype == "float16",
        device=device,
        command=command,
    )
    from trtq.engine_meta import write_engine

    if not verify:
        meta.verification = {"status": "skipped", "verified": False, "reason": "built with --no-verify"}
    write_engine(engine_path, plan_bytes, meta, ultralytics_header=ultralytics_header, onnx_metadata=info.metadata)
    verification = None
    if verify:  # trtq.verify: the engine against the CPU's reference; raises VerificationFailed (engine kept)
        from trtq.verify import verify_built_engine

        kind = "float" if precision != "int8" else plan.mode or "explicit"
        if kind not in refs and kind == "implicit" and plan.stream and reference_images:  # ranges TensorRT made
            refs = build_references(onnx_path=onnx_path, engine_path=engine_path, precision=precision, mode=kind,
                                    qdq_path=None, table=None, cache_path=plan.cache_path, calib=calib,
                                    batch=profile.min, seed=seed, num_images=reference_images, load_cache=True)
        ref = refs.get(kind)
        verification = verify_built_engine(engine_path, ref, onnx_path=build_path, precision=precision,
                                           cache=plan.cache_path if plan.mode == "implicit" else None)
    return BuildResult(
        engine_path=engine_path,
        metadata=meta,
        onnx_path=onnx_path,
        precision=precision,
        mode=plan.mode,
        qdq_path=plan.qdq_path,
        cache_path=plan.cache_path,
        timing_cache_path=Path(timing_cache) if timing_cache is not None else None,
        float_layers=float_layers,
        calibration_batches=batches,
        seconds=time.perf_counter() - t0,
        verification=verification,
        references=refs,
    )


def _choose_mode(mode: str, *, qdq: bool, caps: compat.Capabilities | None, dla: bool) -> str | None:
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


def _prepare_int8(
    plan: _Int8Plan,
    *,
    onnx_path: Path,
    info: ModelInfo,
    profile: Profile,
    calib: str | Path | None,
    cache: str | Path | None,
    force_cache: bool,
    algo: str,
    percentile: float,
    num_images: int | None,
    algo_given: bool = True,
    seed: int,
    workdir: Path,
    base: str,
    trt_version: str | None,
    stream_available: bool,
    dla: bool,
    progress: bool,
) -> _Int8Plan:
    """Find or make the INT8 ranges (cache) and, where needed, the Q/DQ ONNX."""
    from calibrators.table import DEFAULT_TRT_VERSION, CalibrationTable

    user_cache = Path(cache) if cache is not None else None
    cache_path = user_cache or workdir / f"{base}.{algo}.cache"
    plan.cache_path = cache_path
    table: CalibrationTable | None = None
    if cache_path.is_file():
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
        if table is not None and plan.cache_bytes is None:
            adopt = user_cache is not None and not algo_given
            diffs = table.differences(
                model_sha256=info.sha256,
                preprocessing=_expected_preprocessing(info, profile),
                algorithm=None if adopt else algo,
                percentile=percentile if algo == "percentile" and not adopt else None,
            )
            if diffs and force_cache:
                log.warning("calibration cache %s does not match this build (%s); using it anyway (--force-cache)",
                            cache_path, "; ".join(diffs))
            elif diffs and user_cache is not None:
                only_algo = all(d.startswith(("algorithm differs", "percentile differs")) for d in diffs)
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
    elif user_cache is not None and calib is None:
        raise TrtqError(f"calibration cache {user_cache} not found; pass --calib DIR to create it")

    if table is None:
        if calib is None:
            raise TrtqError(
                "INT8 needs calibration: pass --calib DIR (images like those the model will see; 500+ recommended) "
                "or --cache FILE (from `trtq calibrate`)"
            )
        from calibrators.trt import STREAMING_KINDS

        if stream_available and plan.mode == "implicit" and algo in STREAMING_KINDS:
            plan.stream = True  # TensorRT calibrates from the images during the build and writes the cache
            if dla and algo == "minmax":
                log.warning("DLA needs the entropy calibrator; calibrating with entropy instead of minmax")
        else:
            from calibrators.calibrate import calibrate

            result = calibrate(
                onnx_path,
                calib,
                algo=algo,
                percentile=percentile,
                num_images=num_images,
                batch=profile.opt,
                seed=seed,
                trt_version=trt_version or DEFAULT_TRT_VERSION,
                output=cache_path,
                progress=progress,
            )
            table = result.table
            plan.histograms = result.histograms
            log.info("calibrated %d images on the CPU (%s): %s", result.table.num_images, algo, cache_path)
    plan.table = table

    if plan.mode in ("explicit", None):
        from trtq.quantize import quantize

        qdq_out = workdir / f"{base}.int8.onnx"
        qres = quantize(
            onnx_path,
            calib,
            algo=algo,
            num_images=num_images,
            batch=profile.opt,
            seed=seed,
            output=qdq_out,
            table=table,
            progress=progress,
            percentile=percentile,
            histograms=plan.histograms,
        )
        plan.qdq_path = Path(qres.path)
        log.info("wrote Q/DQ ONNX %s", plan.qdq_path)
    return plan


def _finish_message(onnx_path: Path, precision: str, plan: _Int8Plan, opts: dict[str, Any], algo: str) -> str:
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
        lines.append("  " + _command_line(onnx_path, {**opts, "fp16": precision == "fp16"}))
    else:
        if plan.qdq_path is not None:
            lines.append("  " + _command_line(plan.qdq_path, opts) + "    # explicit INT8 (TensorRT >= 10.1; only way on 11)")
        if plan.cache_path is not None and plan.table is not None and plan.mode != "explicit":
            implicit = {**opts, "int8": True, "cache": plan.cache_path, "algo": algo if algo != DEFAULT_ALGO else None,
                        "mode": "implicit"}
            lines.append("  " + _command_line(onnx_path, implicit) + "    # implicit INT8 (TensorRT 8.5-10.x, DLA)")
    lines.append("Install TensorRT there (JetPack ships it; desktop: pip install tensorrt) plus pycuda or cuda-python.")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------
# the TensorRT part
# --------------------------------------------------------------------------------------------------------
def _choose_strongly_typed(
    caps: compat.Capabilities, requested: bool | None, *, precision: str, mode: str | None, fp16_onnx: bool
) -> bool:
    if caps.strongly_typed_only:
        if requested is False:
            raise TrtqError(f"TensorRT {caps.version} only builds strongly typed networks; drop --weakly-typed")
        return True
    if requested is True:
        if not caps.strongly_typed:
            raise TrtqError(f"TensorRT {caps.version} has no strongly typed networks (added in 9.x); drop --strongly-typed")
        return True
    if requested is False:
        return False
    # auto: strongly typed only where it loses no speed (the ONNX float parts are already FP16)
    return caps.strongly_typed and precision == "int8" and mode == "explicit" and fp16_onnx


def map_float_layers(network: Any, float_nodes: dict[str, str], onnx_node_names: set[str]) -> dict[str, str]:
    """TensorRT layer name -> reason, for layers made from the given ONNX nodes.

    TensorRT's ONNX parser names a node's main layer after the node and any further layer of the same node
    ``<node>_<n>`` (helper layers it adds on its own keep TensorRT's default names).
    """
    import re

    result: dict[str, str] = {}
    for i in range(int(network.num_layers)):
        name = str(network.get_layer(i).name)
        if name in float_nodes:
            result[name] = float_nodes[name]
            continue
        m = re.match(r"^(.*)_\d+$", name)
        if m and name not in onnx_node_names and m.group(1) in float_nodes:
            result[name] = float_nodes[m.group(1)]
    return result


#: layer types whose precision matters for the head; data-movement and shape layers are left alone
_PINNABLE_LAYER_TYPES = frozenset({
    "CONVOLUTION", "DECONVOLUTION", "ACTIVATION", "ELEMENTWISE", "SOFTMAX", "CONCATENATION", "MATRIX_MULTIPLY",
    "UNARY", "REDUCE", "SCALE", "POOLING",
})


def pin_float_layers(trt: ModuleType, network: Any, mapped: dict[str, str], *, fp16: bool) -> dict[str, str]:
    """Set precision constraints on the mapped head layers; return the ones actually pinned.

    Only compute layers whose outputs are float tensors are pinned: a shape computation (Shape, Gather on
    INT64) forced to a float type would fail the build under OBEY_PRECISION_CONSTRAINTS, and data movement
    (Reshape, Transpose, Slice) runs in whatever precision its input has.
    """
    t = compat.typed(trt)
    float_types = {int(t.float32), int(t.float16)}
    pinned: dict[str, str] = {}
    skipped = 0
    for i in range(int(network.num_layers)):
        layer = network.get_layer(i)
        reason = mapped.get(str(layer.name))
        if reason is None:
            continue
        outputs = [layer.get_output(j) for j in range(int(layer.num_outputs))]
        if layer.type.name not in _PINNABLE_LAYER_TYPES or any(int(o.dtype) not in float_types for o in outputs):
            skipped += 1
            continue
        if compat.set_layer_precision(trt, layer, _head_dtype(trt, layer, reason, fp16)):
            pinned[str(layer.name)] = reason
    if skipped:
        log.debug("head policy: %d head layers are shape or data-movement layers; not pinned", skipped)
    return pinned


def _head_dtype(trt: Any, layer: Any, reason: str, fp16: bool) -> Any:
    """Final head convs, the DFL and attention stay FP16 (when allowed); the rest of the head is tiny: FP32."""
    from trtq.headpolicy import FP16_REASONS, reason_code

    t = compat.typed(trt)
    if fp16 and reason_code(reason) in FP16_REASONS:
        return t.float16
    return t.float32


def _gpu_identity(device: Device | None) -> tuple[str, tuple[int, int] | None]:
    if device is not None:
        return device.name, device.compute_capability
    try:
        from trtq.device import get_device

        with get_device() as dev:
            return dev.name, dev.compute_capability
    except (MissingDependencyError, TrtqError) as exc:
        log.warning("GPU name and compute capability unknown (%s); not recorded in the engine metadata", exc)
        return "", None


def _build_with_tensorrt(
    trt: ModuleType,
    caps: compat.Capabilities,
    *,
    onnx_path: Path,
    graph: onnx.ModelProto,
    info: ModelInfo,
    profile: Profile,
    precision: str,
    int8_plan: _Int8Plan,
    calib: str | Path | None,
    algo: str,
    num_images: int | None,
    seed: int,
    workspace: float | None,
    dla_core: int | None,
    gpu_fallback: bool,
    timing_cache: Path | None,
    builder_opt_level: int | None,
    strongly_typed: bool | None,
    fp16_onnx: bool,
    device: Device | None,
    command: str,
    version_compatible: bool = False,
    hardware_compatible: bool = False,
) -> tuple[EngineMetadata, bytes, dict[str, str], int]:
    from trtq.engine_meta import EngineMetadata
    from trtq.fileio import sha256_file, write_bytes

    t = compat.typed(trt)
    int8 = precision == "int8"
    fp16 = precision in ("fp16", "int8")
    mode = int8_plan.mode if int8 else None
    strongly = _choose_strongly_typed(caps, strongly_typed, precision=precision, mode=mode, fp16_onnx=fp16_onnx)
    if int8 and mode == "implicit" and strongly:
        raise TrtqError("implicit INT8 (calibrator) needs a weakly typed network; drop --strongly-typed or use --mode explicit")
    note = compat.known_breakage(caps, strongly_typed=strongly, precision_flags=fp16 or int8)
    if note:
        log.warning(note)
    if strongly and fp16 and not fp16_onnx:
        if not int8:
            raise TrtqError(
                f"TensorRT {caps.version} builds strongly typed networks without an FP16 flag: precision comes from "
                f"the ONNX, and {onnx_path.name} is FP32, so the engine would silently be FP32. Convert the ONNX to FP16 "
                "first (e.g. `polygraphy convert --fp-to-fp16`) or build without --fp16"
            )
        log.warning(
            "strongly typed build: Q/DQ layers run in INT8, every other layer in the ONNX's FP32 (no FP16 flag on "
            "TensorRT %s); the metadata records this", caps.version,
        )

    logger = compat.trt_logger(trt)
    builder = t.Builder(logger)
    if dla_core is not None:
        cores = int(builder.num_DLA_cores)
        if cores == 0:
            raise TrtqError("--dla-core: this device has no DLA (DLA exists on Jetson Xavier/Orin); drop --dla-core")
        if dla_core >= cores:
            raise TrtqError(f"--dla-core {dla_core}: this device has {cores} DLA core(s) (0..{cores - 1})")
    network = builder.create_network(compat.network_flags(trt, strongly_typed=strongly))
    parser = t.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = []
        for i in range(int(parser.num_errors)):
            err = parser.get_error(i)
            errors.append(f"{err.desc()} (node {err.node()})")
        raise TrtqError(f"TensorRT could not parse {onnx_path.name}: " + "; ".join(errors[:3] or ["unknown error"]))
    config = builder.create_builder_config()
    config.profiling_verbosity = t.ProfilingVerbosity.DETAILED  # per-layer precisions in the engine inspector
    builder_info: dict[str, Any] = {"strongly_typed": strongly}
    if workspace is not None:
        compat.set_workspace(trt, config, int(workspace * (1 << 30)))
        builder_info["workspace_gib"] = workspace
    if builder_opt_level is not None:
        if compat.set_optimization_level(config, builder_opt_level):
            builder_info["optimization_level"] = builder_opt_level
        else:
            log.warning("TensorRT %s has no builder optimization level (8.6+); ignoring it", caps.version)

    flags: list[str] = []
    if not strongly:
        if fp16:
            if not compat.set_builder_flag(trt, config, "FP16"):
                raise TrtqError(f"TensorRT {caps.version} has no FP16 builder flag; this build would be FP32")
            flags.append("FP16")
        if int8:
            if not compat.set_builder_flag(trt, config, "INT8"):
                raise TrtqError(f"TensorRT {caps.version} has no INT8 builder flag; use --mode explicit")
            flags.append("INT8")

    # optimization profile: every dynamic input gets min/opt/max (opt = the calibration shape)
    inputs = [network.get_input(i) for i in range(int(network.num_inputs))]
    names = [str(x.name) for x in inputs]
    trt_profile = None
    if any(-1 in tuple(int(d) for d in x.shape[:]) for x in inputs):
        trt_profile = builder.create_optimization_profile()
        for name in names:
            trt_profile.set_shape(name, t.Dims4(*profile.shape("min")), t.Dims4(*profile.shape("opt")),
                                  t.Dims4(*profile.shape("max")))
        if config.add_optimization_profile(trt_profile) < 0:
            raise TrtqError(f"TensorRT rejected the batch profile {profile.min}/{profile.opt}/{profile.max}")

    if dla_core is not None:
        config.default_device_type = t.DeviceType.DLA
        config.DLA_core = int(dla_core)
        gpu_layers = []
        for i in range(int(network.num_layers)):
            layer = network.get_layer(i)
            if not config.can_run_on_DLA(layer):
                gpu_layers.append(str(layer.name))
                if gpu_fallback:
                    config.set_device_type(layer, t.DeviceType.GPU)
        if gpu_fallback:
            config.set_flag(t.BuilderFlag.GPU_FALLBACK)
            flags.append("GPU_FALLBACK")
        elif gpu_layers:
            raise TrtqError(
                f"{len(gpu_layers)} layer(s) cannot run on DLA (e.g. {gpu_layers[0]}) and --no-gpu-fallback was given; "
                "drop --no-gpu-fallback"
            )
        builder_info["dla_gpu_layers"] = len(gpu_layers)

    # engines that load on later TensorRT releases / on other GPUs (recorded for the runtime's checks)
    if version_compatible:
        if not compat.set_builder_flag(trt, config, "VERSION_COMPATIBLE"):
            raise TrtqError(f"TensorRT {caps.version} cannot build version-compatible engines (8.6 or newer can)")
        flags.append("VERSION_COMPATIBLE")
        builder_info["version_compatible"] = True
    if hardware_compatible:
        if dla_core is not None:
            raise TrtqError("hardware-compatible engines run on GPUs only; drop --dla-core or the hardware compatibility")
        if not compat.set_hardware_compatibility(trt, config):
            raise TrtqError(f"TensorRT {caps.version} cannot build hardware-compatible engines (8.6 or newer can)")
        builder_info["hardware_compatible"] = "ampere_plus"

    # YOLOv8 head policy (implicit INT8): pin the head to float with precision constraints
    float_layers: dict[str, str] = {}
    if int8 and mode == "implicit":
        from trtq.headpolicy import float_nodes

        nodes = float_nodes(graph)
        node_names = {n.name for n in graph.graph.node if n.name}
        float_layers = pin_float_layers(trt, network, map_float_layers(network, nodes, node_names), fp16=fp16)
        if float_layers:
            if compat.set_builder_flag(trt, config, "OBEY_PRECISION_CONSTRAINTS"):
                flags.append("OBEY_PRECISION_CONSTRAINTS")
            elif compat.set_builder_flag(trt, config, "STRICT_TYPES"):
                flags.append("STRICT_TYPES")
            log.info("head policy: %d layers kept out of INT8", len(float_layers))
        elif nodes:
            log.warning("head policy: none of %d head nodes matched a TensorRT layer name", len(nodes))

    # timing cache
    tc_obj = None
    if timing_cache is not None:
        tc_obj = _load_timing_cache(config, timing_cache, caps.version)
        builder_info["timing_cache"] = str(timing_cache)

    # calibrator (implicit INT8)
    calibrator: Any = None
    calibrator_label: str | None = None
    cache_sha: str | None = None
    if int8 and mode == "implicit":
        from calibrators.trt import CalibrationFeed, make_cache_calibrator, make_calibrator

        shapes = {n: profile.shape("opt") for n in names}
        dla_algo = "EntropyCalibration2" if dla_core is not None else None
        if int8_plan.stream:
            from trtq.images import ImageBatcher

            assert calib is not None and int8_plan.cache_path is not None
            kind = "entropy" if dla_core is not None else algo
            batcher = ImageBatcher.from_model(calib, info, batch=profile.opt, num_images=num_images, seed=seed,
                                              drop_last=True)
            feed = CalibrationFeed(
                names=names,
                shapes=shapes,
                batches=batcher,
                device=device,
                cache_path=None,  # an existing cache was judged stale above: never serve it, only replace it
                on_cache_written=_cache_writer(int8_plan.cache_path, info, batcher, kind, caps.version),
                label=f"{kind} calibrator",
            )
            calibrator = make_calibrator(trt, kind, feed)
            calibrator_label = f"{type(calibrator).__name__} (TensorRT {kind}, {len(batcher.selected)} images)"
        else:
            table = int8_plan.table
            data = int8_plan.cache_bytes
            if data is None:
                assert table is not None
                data = table.to_trt_cache(caps.version)
            calibrator = make_cache_calibrator(trt, data, names=names, shapes=shapes, algorithm=dla_algo)
            calibrator_label = f"{type(calibrator).__name__} serving the {algo} cache (no images)"
        calib_profile = trt_profile if (trt_profile is not None and caps.major_minor < (10, 0)) else None
        compat.set_int8_calibrator(config, calibrator, calib_profile)

    # build
    try:
        plan = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.close()
    batches = 0
    if calibrator is not None:
        batches = int(calibrator.feed.batches_served)
        calibrator.raise_if_failed()  # an exception TensorRT swallowed inside a callback
    if plan is None:
        raise TrtqError(
            f"TensorRT {caps.version} could not build {onnx_path.name} (its errors are in the log above; -v for more)"
        )
    plan_bytes = compat.serialize_plan(plan)
    if calibrator is not None and int8_plan.stream and batches == 0 and calibrator.feed.cache_reads == 0:
        log.warning("TensorRT did not ask for calibration data")

    if tc_obj is not None and timing_cache is not None:
        tc = config.get_timing_cache()
        if tc is not None:
            write_bytes(timing_cache, bytes(memoryview(tc.serialize())))
            log.info("saved timing cache %s", timing_cache)

    if int8 and mode == "implicit" and int8_plan.cache_path is not None and int8_plan.cache_path.is_file():
        cache_sha = sha256_file(int8_plan.cache_path)
    gpu_name, cc = _gpu_identity(device)
    shape_of = {
        "min": list(profile.shape("min")), "opt": list(profile.shape("opt")), "max": list(profile.shape("max"))
    }
    meta = EngineMetadata(
        tensorrt_version=caps.version,
        gpu_name=gpu_name,
        compute_capability=cc,
        dla_core=dla_core,
        precision=precision,
        mode=mode,
        strongly_typed=strongly,
        algorithm=(algo if mode == "implicit" else _qdq_algorithm(graph)) if int8 else None,
        calibrator=calibrator_label if int8 else None,
        cache_path=str(int8_plan.cache_path) if (int8 and mode == "implicit" and int8_plan.cache_path) else None,
        cache_sha256=cache_sha,
        model_path=str(onnx_path),
        model_sha256=info.sha256,
        inputs=_io_records(info.inputs),
        outputs=_io_records(info.outputs),
        profiles=[{n: shape_of for n in names}],
        names=info.names,
        stride=info.stride,
        imgsz=(profile.height, profile.width),
        task=str(info.metadata.get("task", "detect")),
        batch=profile.max,
        float_layers=float_layers,
        builder={**builder_info, "flags": flags, "float_layers_dtype": "fp32" if strongly and not fp16_onnx else None},
        command=command,
    )
    return meta, plan_bytes, float_layers, batches


def _load_timing_cache(config: Any, path: Path, trt_version: str) -> Any:
    """The timing cache in ``path`` attached to ``config``; a new, empty one when it cannot be used.

    ``create_timing_cache`` returns None (C++ nullptr) for a corrupt file or one written by another TensorRT
    version, and ``set_timing_cache`` refuses a cache made on another GPU: both start a new cache, which
    replaces the file after the build.
    """
    blob = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(blob) if blob else None
    if cache is not None and config.set_timing_cache(cache, False):
        return cache
    if blob:
        why = "is corrupt or from another TensorRT version" if cache is None else "was made on another GPU"
        log.warning("timing cache %s %s (this is TensorRT %s); starting a new one", path, why, trt_version)
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, False):
        raise TrtqError(f"TensorRT {trt_version} could not create a timing cache; build without --timing-cache")
    return cache


def _io_records(specs: Sequence[TensorSpec]) -> list[dict[str, Any]]:
    """Name, shape (-1 for a dynamic dimension) and dtype of each tensor, as the engine record stores them."""
    return [{"name": s.name, "shape": [d if d is not None else -1 for d in s.shape], "dtype": s.dtype} for s in specs]


def _qdq_algorithm(graph: onnx.ModelProto) -> str | None:
    """The range algorithm a Q/DQ ONNX records in its metadata (None for one made elsewhere: unknown)."""
    for prop in graph.metadata_props:
        if prop.key in ("trtq_algorithm", "trtq.algorithm", "calibration_algorithm"):
            return prop.value
    return None


def _cache_writer(cache_path: Path, info: ModelInfo, batcher: Any, kind: str, trt_version: str) -> Any:
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
