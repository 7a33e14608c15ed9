"""``build``: the library function behind ``trtq build``.

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

The build is split by concern: the options and their validation in :mod:`trtq.trt.options`, the INT8
inputs (steps 2-4) in :mod:`trtq.trt.int8`, the TensorRT network and config (step 5) in
:mod:`trtq.trt.network` beside the compat shim :mod:`trtq.trt.compat`; this module puts them in order.
TensorRT itself can be passed in (``trt_module``), which is how the contract tests run every step with a
recording fake.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from trtq.engine_meta import DEFAULT_OUTPUT_DIR, default_engine_path, engine_base_name
from trtq.errors import MissingDependencyError, TrtqError
from trtq.trt import compat
from trtq.trt.int8 import Int8Plan, check_parser_opset, choose_mode, finish_message, prepare_int8
from trtq.trt.network import NetworkJob, build_with_tensorrt, check_dla_release
from trtq.trt.options import BuildOptions, Profile, command_line, resolve_profile

if TYPE_CHECKING:
    import onnx

    from trtq.device import Device
    from trtq.engine_meta import EngineMetadata
    from trtq.modelinfo import ModelInfo

log = logging.getLogger(__name__)

_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


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


# --------------------------------------------------------------------------------------------------------
# the library function
# --------------------------------------------------------------------------------------------------------
def build_engine(
    model: str | Path, *, trt_module: ModuleType | None = None, device: Device | None = None, **options: Any
) -> BuildResult:
    """:func:`build` with the options as keywords (the fields of :class:`~trtq.trt.options.BuildOptions`)."""
    return build(model, BuildOptions(**options), trt_module=trt_module, device=device)


def build(
    model: str | Path,
    options: BuildOptions | None = None,
    *,
    trt_module: ModuleType | None = None,
    device: Device | None = None,
) -> BuildResult:
    """Build a TensorRT engine from ``model`` (.pt, FP32 ONNX or Q/DQ ONNX); see the module docstring.

    ``options``: what to build (:class:`~trtq.trt.options.BuildOptions`, validated first). ``trt_module`` is
    the TensorRT module to use (default: the installed one); ``device`` the CUDA device for calibration
    buffers (default: ``trtq.device.get_device()``).

    Raises :class:`MissingDependencyError` (exit code 3) after the CPU steps when TensorRT is absent.
    With ``options.calib``, reference inputs/outputs for ``trtq verify`` are written (``trtq.reference``);
    with ``options.verify`` the built engine is checked against them (:class:`trtq.verify.VerificationFailed`
    if it fails).
    """
    t0 = time.perf_counter()
    options = options if options is not None else BuildOptions()
    options.validate()
    src = Path(model)
    # A bare ultralytics model name (yolov8n.pt) is fetched by ultralytics during export.
    if not src.is_file() and not (src.suffix.lower() == ".pt" and src.parent == Path(".")):
        raise TrtqError(f"model not found: {src}")
    if src.suffix.lower() not in (".pt", ".onnx"):
        raise TrtqError(f"{src}: trtq build takes a .pt (Ultralytics YOLOv8) or an .onnx model")

    trt = trt_module if trt_module is not None else compat.load_tensorrt()
    if trt is not None and not compat.is_real_tensorrt(trt):
        trt = None
    caps = compat.capabilities(trt) if trt is not None else None

    # -- 1. ONNX and 2. precision --------------------------------------------------------------------------
    import onnx

    from trtq.modelinfo import check_model, read_model_info

    onnx_path = _onnx_input(src, options)
    info = read_model_info(onnx_path)
    check_model(info)
    graph = onnx.load(str(onnx_path), load_external_data=False)
    refuse_cpu_target(graph, onnx_path)
    qdq = is_qdq_model(graph)
    precision = _precision(options, qdq=qdq, onnx_path=onnx_path)
    profile = resolve_profile(info, options)
    engine_path = _engine_path(src, options, precision, profile)

    # -- 3. INT8 inputs (CPU side) ---------------------------------------------------------------------
    plan = Int8Plan(mode=None)
    if precision == "int8":
        plan.mode = choose_mode(options.mode, qdq=qdq, caps=caps, dla=options.dla_core is not None)
    if caps is not None:
        if options.dla_core is not None:
            check_dla_release(caps)
        check_parser_opset(caps, graph, onnx_path, explicit_from_fp16=precision == "int8" and not qdq
                           and plan.mode == "explicit" and info.float_dtype == "float16")
    if precision == "int8":
        if qdq:
            plan.qdq_path = onnx_path
        else:
            plan = prepare_int8(
                plan, options, onnx_path=onnx_path, info=info, profile=profile, workdir=engine_path.parent,
                base=engine_base_name(onnx_path), trt_version=compat.trt_version(trt) if trt is not None else None,
                stream_available=trt is not None and caps is not None and caps.implicit_int8,
            )
    algo = options.algorithm
    if plan.table is not None and options.algo is None and options.cache is not None:
        algo = plan.table.algorithm  # the --cache's own algorithm
    refs = _references(options, onnx_path=onnx_path, engine_path=engine_path, precision=precision, plan=plan,
                       profile=profile)
    user_engine = engine_path if options.output is not None else None  # the finishing command keeps the user's -o
    flags = {**options.target_flags(), "output": user_engine}

    # -- 4. no TensorRT: stop here, saying how to finish ---------------------------------------------------
    if trt is None or caps is None:
        from trtq.verify import finish_lines

        *done, install = finish_message(onnx_path, precision, plan, flags, algo).splitlines()
        raise MissingDependencyError("\n".join([*done, *finish_lines(refs, plan.qdq_path, precision, engine=user_engine),
                                                install]))

    # -- 5. TensorRT -------------------------------------------------------------------------------------------
    build_path = plan.qdq_path if (precision == "int8" and plan.mode == "explicit") else onnx_path
    assert build_path is not None
    model_info = info if build_path == onnx_path else read_model_info(build_path)
    command = command_line(build_path, {**flags, "fp16": precision == "fp16",
                                        "int8": precision == "int8" and not qdq,
                                        "cache": plan.cache_path if plan.mode == "implicit" else None,
                                        "mode": plan.mode if plan.mode == "implicit" else None})
    job = NetworkJob(
        onnx_path=build_path,
        graph=graph if build_path == onnx_path else onnx.load(str(build_path), load_external_data=False),
        info=model_info, profile=profile, precision=precision, int8_plan=plan, options=options, algo=algo,
        fp16_onnx=info.input.dtype == "float16" or model_info.input.dtype == "float16", device=device,
        command=command,
    )
    meta, plan_bytes, float_layers, batches = build_with_tensorrt(trt, caps, job)
    verification, refs = _write_and_verify(engine_path, plan_bytes, meta, options, info=info, onnx_path=onnx_path,
                                     build_path=build_path, precision=precision, plan=plan, profile=profile, refs=refs)
    return BuildResult(
        engine_path=engine_path,
        metadata=meta,
        onnx_path=onnx_path,
        precision=precision,
        mode=plan.mode,
        qdq_path=plan.qdq_path,
        cache_path=plan.cache_path,
        timing_cache_path=options.timing_cache_path,
        float_layers=float_layers,
        calibration_batches=batches,
        seconds=time.perf_counter() - t0,
        verification=verification,
        references=refs,
    )


def _onnx_input(src: Path, options: BuildOptions) -> Path:
    """The ONNX to build from: ``src`` itself, or its export into the output folder for a ``.pt``."""
    if src.suffix.lower() != ".pt":
        return src
    from trtq.export import export_onnx

    precision_guess = "int8" if options.int8 else "fp16" if options.fp16 else "fp32"
    out_dir = Path(options.output).parent if options.output is not None else DEFAULT_OUTPUT_DIR
    hw = options.image_size
    onnx_path = export_onnx(
        src,
        imgsz=hw if hw is not None else 640,
        batch=options.max_batch or options.batch or 1,
        dynamic=options.ranged,
        output=out_dir / f"{engine_base_name(src)}.onnx",
    )
    log.info("exported %s -> %s (%s build)", src, onnx_path, precision_guess)
    return onnx_path


def _precision(options: BuildOptions, *, qdq: bool, onnx_path: Path) -> str:
    """fp32 | fp16 | int8: a Q/DQ ONNX is INT8, and INT8 always allows FP16."""
    int8 = options.int8
    if qdq:
        if options.mode == "implicit":
            raise TrtqError(
                f"{onnx_path.name} is a Q/DQ ONNX (explicit INT8); implicit mode needs the FP32 ONNX it was made from"
            )
        if not int8:
            log.info("%s contains Q/DQ nodes: building explicit INT8", onnx_path.name)
        int8 = True
    # INT8 always allows FP16: layers left out of INT8 must not fall back to FP32
    return "int8" if int8 else "fp16" if options.fp16 else "fp32"


def _engine_path(src: Path, options: BuildOptions, precision: str, profile: Profile) -> Path:
    """Where the engine goes (``-o`` or ``engines/<model>.<precision>.engine``), after the DLA checks."""
    if options.dla_core is not None:
        if not profile.static:
            raise TrtqError(
                f"DLA needs static shapes: min, opt and max batch must be equal (got {profile.min}/{profile.opt}/"
                f"{profile.max}); pass --batch N"
            )
        if precision == "fp32":
            raise TrtqError("DLA has no FP32: add --fp16 or --int8")
    out = options.output
    default = default_engine_path(src, precision, dla_core=options.dla_core)
    engine_path = Path(out) if out is not None else default
    if engine_path.is_dir():  # -o FOLDER: the default name inside it
        engine_path = engine_path / default.name
    if engine_path.suffix != ".engine":
        engine_path = engine_path.with_name(engine_path.name + ".engine")
    return engine_path


def _references(options: BuildOptions, *, onnx_path: Path, engine_path: Path, precision: str, plan: Int8Plan,
                profile: Profile) -> dict[str, Any]:
    """Reference inputs/outputs for verification (``trtq.reference``), where the options ask for them."""
    if not options.reference_images:
        return {}
    from trtq.reference import build_references

    return build_references(onnx_path=onnx_path, engine_path=engine_path, precision=precision, mode=plan.mode,
                            qdq_path=plan.qdq_path, table=plan.table, cache_path=plan.cache_path, calib=options.calib,
                            batch=profile.min, seed=options.seed, num_images=options.reference_images,
                            reuse=not plan.stream and plan.histograms is None)


def _write_and_verify(
    engine_path: Path, plan_bytes: bytes, meta: EngineMetadata, options: BuildOptions, *, info: ModelInfo,
    onnx_path: Path, build_path: Path, precision: str, plan: Int8Plan, profile: Profile, refs: dict[str, Any],
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Write the engine and its record, then check it against the CPU's reference (trtq.verify).

    Returns the verification record and the references it used. A failing engine raises :class:`trtq.verify.VerificationFailed` (the engine is kept).
    """
    from trtq.engine_meta import write_engine

    if not options.verify:
        meta.verification = {"status": "skipped", "verified": False, "reason": "built with --no-verify"}
    write_engine(engine_path, plan_bytes, meta, ultralytics_header=options.ultralytics_header,
                 onnx_metadata=info.metadata)
    if not options.verify:
        return None, refs
    from trtq.verify import verify_built_engine

    kind = "float" if precision != "int8" else plan.mode or "explicit"
    if kind not in refs and kind == "implicit" and plan.stream and options.reference_images:  # ranges TensorRT made
        from trtq.reference import build_references

        refs = build_references(onnx_path=onnx_path, engine_path=engine_path, precision=precision, mode=kind,
                                qdq_path=None, table=None, cache_path=plan.cache_path, calib=options.calib,
                                batch=profile.min, seed=options.seed, num_images=options.reference_images,
                                load_cache=True)
    verification = verify_built_engine(engine_path, refs.get(kind), onnx_path=build_path, precision=precision,
                                       cache=plan.cache_path if plan.mode == "implicit" else None)
    return verification, refs
