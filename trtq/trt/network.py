"""The TensorRT part of a build: network, builder config, head precision, calibrator, build, engine record.

Everything here speaks the TensorRT API (10.x, type-checked against ``tensorrt-stubs``); version differences
go through :mod:`trtq.trt.compat`. :func:`build_with_tensorrt` parses the ONNX (EXPLICIT_BATCH on 8.x,
STRONGLY_TYPED where chosen), sets the optimization profile, workspace, builder optimization level, DLA
with GPU fallback, version/hardware compatibility, the head policy as per-layer precision constraints
(implicit INT8), the timing cache and the calibrator, builds, and returns the serialized plan with its
:class:`~trtq.engine_meta.EngineMetadata`. The INT8 inputs it consumes are decided in :mod:`trtq.trt.int8`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from trtq.errors import MissingDependencyError, TrtqError
from trtq.trt import compat

if TYPE_CHECKING:
    import onnx

    from trtq.device import Device
    from trtq.engine_meta import EngineMetadata
    from trtq.modelinfo import ModelInfo, TensorSpec
    from trtq.trt.int8 import Int8Plan
    from trtq.trt.options import BuildOptions, Profile

log = logging.getLogger(__name__)


@dataclass
class NetworkJob:
    """What the TensorRT part builds: the ONNX to parse and every decision taken before TensorRT."""

    onnx_path: Path
    graph: onnx.ModelProto
    info: ModelInfo
    profile: Profile
    precision: str
    int8_plan: Int8Plan
    options: BuildOptions
    algo: str  # the range algorithm (a --cache's own when it was adopted)
    fp16_onnx: bool
    device: Device | None
    command: str

    @property
    def int8(self) -> bool:
        return self.precision == "int8"

    @property
    def fp16(self) -> bool:
        return self.precision in ("fp16", "int8")

    @property
    def mode(self) -> str | None:
        return self.int8_plan.mode if self.int8 else None


def choose_strongly_typed(
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


@dataclass(frozen=True)
class GpuIdentity:
    """The build GPU: name, compute capability (None if unknown) and whether it is integrated (Jetson)."""

    name: str = ""
    compute_capability: tuple[int, int] | None = None
    integrated: bool = False


def _gpu_identity(device: Device | None) -> GpuIdentity:
    from trtq.device import get_device, is_integrated

    if device is not None:
        return GpuIdentity(device.name, device.compute_capability, is_integrated(device))
    try:
        with get_device() as dev:
            return GpuIdentity(dev.name, dev.compute_capability, is_integrated(dev))
    except (MissingDependencyError, TrtqError) as exc:
        log.warning("GPU name and compute capability unknown (%s); not recorded in the engine metadata", exc)
        return GpuIdentity()


#: TensorRT releases without DLA support: 11.0 - 11.3 (DLA came back in 11.4.1, on AGX Orin with JetPack
#: 7.2.2 or newer; TensorRT 11.4.1 Jetson migration guide, docs.nvidia.com/deeplearning/tensorrt/11.4.1/api/
#: migration/tensorrt-10x-to-11x-jetson.html)
NO_DLA_RELEASES = ((11, 0), (11, 3))


def check_dla_release(caps: compat.Capabilities) -> None:
    """Refuse DLA on a TensorRT release without it (before any work: the device is not the problem)."""
    lo, hi = NO_DLA_RELEASES
    if lo <= caps.major_minor <= hi:
        raise TrtqError(
            f"--dla-core: TensorRT {caps.version} has no DLA support (TensorRT 11.0-11.3 dropped it; use TensorRT "
            "10.x from JetPack 6, or 11.4.1+ on AGX Orin), whatever the device; drop --dla-core or change TensorRT"
        )


def check_dla_core(caps: compat.Capabilities, builder: Any, dla_core: int) -> None:
    """Refuse a DLA core this TensorRT or this device cannot give (naming which of the two lacks DLA)."""
    check_dla_release(caps)
    cores = int(builder.num_DLA_cores)
    if cores == 0:
        raise TrtqError(
            f"--dla-core: TensorRT {caps.version} sees no DLA on this device (DLA exists on Jetson Xavier/Orin); "
            "drop --dla-core"
        )
    if dla_core >= cores:
        raise TrtqError(f"--dla-core {dla_core}: this device has {cores} DLA core(s) (0..{cores - 1})")


def build_with_tensorrt(
    trt: ModuleType, caps: compat.Capabilities, job: NetworkJob
) -> tuple[EngineMetadata, bytes, dict[str, str], int]:
    """Build ``job`` with TensorRT: ``(metadata, serialized plan, head layers kept float, calibration batches)``."""
    t = compat.typed(trt)
    options = job.options
    strongly = _network_typing(caps, job)
    logger = compat.trt_logger(trt)
    builder = t.Builder(logger)
    if options.dla_core is not None:
        check_dla_core(caps, builder, options.dla_core)
    gpu = _gpu_identity(job.device)
    network = _parse_network(trt, builder, logger, job.onnx_path, strongly=strongly)
    config = builder.create_builder_config()
    config.profiling_verbosity = t.ProfilingVerbosity.DETAILED  # per-layer precisions in the engine inspector
    builder_info: dict[str, Any] = {"strongly_typed": strongly}
    flags: list[str] = []
    _set_resources(caps, trt, config, options, builder_info)
    if not strongly:
        _set_precision_flags(trt, caps, config, job, flags)
    names, trt_profile = _set_profile(trt, builder, network, config, job.profile)
    if options.dla_core is not None:
        _set_dla(trt, network, config, options, flags, builder_info)
    _set_compatibility(trt, caps, config, options, flags, builder_info, gpu)

    # the head policy (implicit INT8): pin the head to float with precision constraints
    float_layers: dict[str, str] = {}
    if job.int8 and job.mode == "implicit":
        float_layers = _pin_head(trt, network, config, job.graph, fp16=job.fp16, flags=flags)

    timing_cache = options.timing_cache_path
    tc_obj = None
    if timing_cache is not None:
        tc_obj = _load_timing_cache(config, timing_cache, caps.version)
        builder_info["timing_cache"] = str(timing_cache)

    calibrator: Any = None
    calibrator_label: str | None = None
    if job.int8 and job.mode == "implicit":
        calibrator, calibrator_label = _attach_calibrator(trt, caps, config, job, names, trt_profile)

    plan_bytes, batches = _run_build(builder, network, config, calibrator, job, caps)
    if tc_obj is not None and timing_cache is not None:
        from trtq.fileio import write_bytes

        tc = config.get_timing_cache()
        if tc is not None:
            write_bytes(timing_cache, bytes(memoryview(tc.serialize())))
            log.info("saved timing cache %s", timing_cache)
    meta = _engine_metadata(caps, job, gpu, names=names, strongly=strongly, calibrator_label=calibrator_label,
                            float_layers=float_layers, builder_info={**builder_info, "flags": flags})
    return meta, plan_bytes, float_layers, batches


def _network_typing(caps: compat.Capabilities, job: NetworkJob) -> bool:
    """Strongly or weakly typed, refusing the combinations that would silently build something else."""
    strongly = choose_strongly_typed(caps, job.options.strongly_typed, precision=job.precision, mode=job.mode,
                                     fp16_onnx=job.fp16_onnx)
    if job.int8 and job.mode == "implicit" and strongly:
        raise TrtqError("implicit INT8 (calibrator) needs a weakly typed network; drop --strongly-typed or use --mode explicit")
    note = compat.known_breakage(caps, strongly_typed=strongly, precision_flags=job.fp16 or job.int8)
    if note:
        log.warning(note)
    if strongly and job.fp16 and not job.fp16_onnx:
        if not job.int8:
            raise TrtqError(
                f"TensorRT {caps.version} builds strongly typed networks without an FP16 flag: precision comes from "
                f"the ONNX, and {job.onnx_path.name} is FP32, so the engine would silently be FP32. Convert the ONNX "
                "to FP16 first (e.g. `polygraphy convert --fp-to-fp16`) or build without --fp16"
            )
        log.warning(
            "strongly typed build: Q/DQ layers run in INT8, every other layer in the ONNX's FP32 (no FP16 flag on "
            "TensorRT %s); the metadata records this", caps.version,
        )
    return strongly


def _parse_network(trt: ModuleType, builder: Any, logger: Any, onnx_path: Path, *, strongly: bool) -> Any:
    t = compat.typed(trt)
    network = builder.create_network(compat.network_flags(trt, strongly_typed=strongly))
    parser = t.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = []
        for i in range(int(parser.num_errors)):
            err = parser.get_error(i)
            errors.append(f"{err.desc()} (node {err.node()})")
        raise TrtqError(f"TensorRT could not parse {onnx_path.name}: " + "; ".join(errors[:3] or ["unknown error"]))
    return network


def _set_resources(
    caps: compat.Capabilities, trt: ModuleType, config: Any, options: BuildOptions, builder_info: dict[str, Any]
) -> None:
    """Workspace limit and builder optimization level."""
    if options.workspace is not None:
        compat.set_workspace(trt, config, int(options.workspace * (1 << 30)))
        builder_info["workspace_gib"] = options.workspace
    if options.builder_opt_level is not None:
        if compat.set_optimization_level(config, options.builder_opt_level):
            builder_info["optimization_level"] = options.builder_opt_level
        else:
            log.warning("TensorRT %s has no builder optimization level (8.6+); ignoring it", caps.version)


def _set_precision_flags(trt: ModuleType, caps: compat.Capabilities, config: Any, job: NetworkJob,
                         flags: list[str]) -> None:
    """FP16 / INT8 builder flags of a weakly typed network."""
    if job.fp16:
        if not compat.set_builder_flag(trt, config, "FP16"):
            raise TrtqError(f"TensorRT {caps.version} has no FP16 builder flag; this build would be FP32")
        flags.append("FP16")
    if job.int8:
        if not compat.set_builder_flag(trt, config, "INT8"):
            raise TrtqError(f"TensorRT {caps.version} has no INT8 builder flag; use --mode explicit")
        flags.append("INT8")


def _set_profile(trt: ModuleType, builder: Any, network: Any, config: Any, profile: Profile) -> tuple[list[str], Any]:
    """Input names, and the optimization profile where an input is dynamic (min/opt/max; opt = calibration)."""
    t = compat.typed(trt)
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
    return names, trt_profile


def _set_dla(trt: ModuleType, network: Any, config: Any, options: BuildOptions, flags: list[str],
             builder_info: dict[str, Any]) -> None:
    """DLA as the default device; layers DLA cannot run go to the GPU (or fail with --no-gpu-fallback)."""
    t = compat.typed(trt)
    assert options.dla_core is not None
    config.default_device_type = t.DeviceType.DLA
    config.DLA_core = int(options.dla_core)
    gpu_layers = []
    for i in range(int(network.num_layers)):
        layer = network.get_layer(i)
        if not config.can_run_on_DLA(layer):
            gpu_layers.append(str(layer.name))
            if options.gpu_fallback:
                config.set_device_type(layer, t.DeviceType.GPU)
    if options.gpu_fallback:
        config.set_flag(t.BuilderFlag.GPU_FALLBACK)
        flags.append("GPU_FALLBACK")
    elif gpu_layers:
        raise TrtqError(
            f"{len(gpu_layers)} layer(s) cannot run on DLA (e.g. {gpu_layers[0]}) and --no-gpu-fallback was given; "
            "drop --no-gpu-fallback"
        )
    builder_info["dla_gpu_layers"] = len(gpu_layers)


def _set_compatibility(trt: ModuleType, caps: compat.Capabilities, config: Any, options: BuildOptions,
                       flags: list[str], builder_info: dict[str, Any], gpu: GpuIdentity) -> None:
    """Engines that load on later TensorRT releases / on other GPUs (recorded for the runtime's checks)."""
    if options.version_compatible:
        if not compat.set_builder_flag(trt, config, "VERSION_COMPATIBLE"):
            raise TrtqError(f"TensorRT {caps.version} cannot build version-compatible engines (8.6 or newer can)")
        flags.append("VERSION_COMPATIBLE")
        builder_info["version_compatible"] = True
    if options.hardware_compatible:
        if options.dla_core is not None:
            raise TrtqError("hardware-compatible engines run on GPUs only; drop --dla-core or the hardware compatibility")
        if not compat.set_hardware_compatibility(trt, config):
            raise TrtqError(f"TensorRT {caps.version} cannot build hardware-compatible engines (8.6 or newer can)")
        refuse_hardware_compatibility(gpu)
        builder_info["hardware_compatible"] = "ampere_plus"


def refuse_hardware_compatibility(gpu: GpuIdentity) -> None:
    """AMPERE_PLUS needs a discrete Ampere-or-newer build GPU: refuse a Jetson / integrated or pre-Ampere one.

    NvInfer.h (``HardwareCompatibilityLevel::kAMPERE_PLUS``, NVIDIA/TensorRT v8.6.1 and v10.13.0): "only
    supported for engines built on NVIDIA Ampere and later GPUs"; TensorRT 8.6 developer guide, "Hardware
    Compatibility" (now docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/engine-compatibility.html):
    supported for Ampere and later architectures only, not on NVIDIA DRIVE OS or JetPack.
    """
    from trtq.engine_meta import HARDWARE_COMPATIBLE_MIN_CC, sm_label

    cc = gpu.compute_capability
    if gpu.integrated:
        raise TrtqError(
            f"--hardware-compatible is for discrete Ampere or newer GPUs; {gpu.name or 'this GPU'} "
            f"({sm_label(cc)}) is an integrated Jetson GPU, where TensorRT does not support it: drop --hardware-compatible"
        )
    if cc is not None and tuple(cc) < HARDWARE_COMPATIBLE_MIN_CC:
        raise TrtqError(
            f"--hardware-compatible engines must be built on an Ampere or newer GPU (SM 8.0+); {gpu.name or 'this GPU'} "
            f"is {sm_label(cc)}: build on an Ampere+ GPU or drop --hardware-compatible"
        )


def _pin_head(trt: ModuleType, network: Any, config: Any, graph: onnx.ModelProto, *, fp16: bool,
              flags: list[str]) -> dict[str, str]:
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
    return float_layers


def _attach_calibrator(trt: ModuleType, caps: compat.Capabilities, config: Any, job: NetworkJob, names: list[str],
                       trt_profile: Any) -> tuple[Any, str]:
    """The implicit-INT8 calibrator: TensorRT's own streaming the images, or one serving the cache."""
    from calibrators.trt import CalibrationFeed, make_cache_calibrator, make_calibrator

    options, plan, profile = job.options, job.int8_plan, job.profile
    shapes = {n: profile.shape("opt") for n in names}
    dla_algo = "EntropyCalibration2" if options.dla_core is not None else None
    if plan.stream:
        from trtq.images import ImageBatcher
        from trtq.trt.int8 import cache_writer

        assert options.calib is not None and plan.cache_path is not None
        kind = "entropy" if options.dla_core is not None else job.algo
        batcher = ImageBatcher.from_model(options.calib, job.info, batch=profile.opt, num_images=options.num_images,
                                          seed=options.seed, drop_last=True)
        feed = CalibrationFeed(
            names=names,
            shapes=shapes,
            batches=batcher,
            device=job.device,
            cache_path=None,  # an existing cache was judged stale before: never serve it, only replace it
            on_cache_written=cache_writer(plan.cache_path, job.info, batcher, kind, caps.version),
            label=f"{kind} calibrator",
        )
        calibrator = make_calibrator(trt, kind, feed)
        label = f"{type(calibrator).__name__} (TensorRT {kind}, {len(batcher.selected)} images)"
    else:
        data = plan.cache_bytes
        if data is None:
            assert plan.table is not None
            data = plan.table.to_trt_cache(caps.version)
        calibrator = make_cache_calibrator(trt, data, names=names, shapes=shapes, algorithm=dla_algo)
        label = f"{type(calibrator).__name__} serving the {job.algo} cache (no images)"
    calib_profile = trt_profile if (trt_profile is not None and caps.major_minor < (10, 0)) else None
    compat.set_int8_calibrator(config, calibrator, calib_profile)
    return calibrator, label


def _run_build(builder: Any, network: Any, config: Any, calibrator: Any, job: NetworkJob,
               caps: compat.Capabilities) -> tuple[bytes, int]:
    """The serialized plan and the number of calibration batches served; the calibrator is closed."""
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
            f"TensorRT {caps.version} could not build {job.onnx_path.name} (its errors are in the log above; -v for more)"
        )
    plan_bytes = compat.serialize_plan(plan)
    if calibrator is not None and job.int8_plan.stream and batches == 0 and calibrator.feed.cache_reads == 0:
        log.warning("TensorRT did not ask for calibration data")
    return plan_bytes, batches


def _engine_metadata(caps: compat.Capabilities, job: NetworkJob, gpu: GpuIdentity, *, names: list[str],
                     strongly: bool,
                     calibrator_label: str | None, float_layers: dict[str, str],
                     builder_info: dict[str, Any]) -> EngineMetadata:
    from trtq.engine_meta import EngineMetadata
    from trtq.fileio import sha256_file

    int8, mode, plan, info, profile = job.int8, job.mode, job.int8_plan, job.info, job.profile
    cache_sha: str | None = None
    if int8 and mode == "implicit" and plan.cache_path is not None and plan.cache_path.is_file():
        cache_sha = sha256_file(plan.cache_path)
    shape_of = {
        "min": list(profile.shape("min")), "opt": list(profile.shape("opt")), "max": list(profile.shape("max"))
    }
    return EngineMetadata(
        tensorrt_version=caps.version,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        dla_core=job.options.dla_core,
        precision=job.precision,
        mode=mode,
        strongly_typed=strongly,
        algorithm=(job.algo if mode == "implicit" else _qdq_algorithm(job.graph)) if int8 else None,
        calibrator=calibrator_label if int8 else None,
        cache_path=str(plan.cache_path) if (int8 and mode == "implicit" and plan.cache_path) else None,
        cache_sha256=cache_sha,
        model_path=str(job.onnx_path),
        model_sha256=info.sha256,
        inputs=_io_records(info.inputs),
        outputs=_io_records(info.outputs),
        profiles=[{n: shape_of for n in names}],
        names=info.names or _layout_names(info),
        stride=info.stride,
        imgsz=(profile.height, profile.width),
        task=str(info.metadata.get("task") or _layout_task(info)),
        batch=profile.max,
        float_layers=float_layers,
        builder={**builder_info, "float_layers_dtype": "fp32" if strongly and not job.fp16_onnx else None},
        command=job.command,
    )


def _layout_task(info: ModelInfo) -> str:
    """The task of a model without task metadata, as :func:`trtq.modelinfo.model_layout` tells it."""
    layout = info.layout_or_none
    return layout.task if layout is not None else "detect"


def _layout_names(info: ModelInfo) -> dict[int, str]:
    """Class ids as names for a model without names, so the engine's record says how many classes it has."""
    layout = info.layout_or_none
    return {i: str(i) for i in range(layout.nc)} if layout is not None else {}


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
