"""The one place where TensorRT's version differences (8.5 / 8.6 / 10.x / 11.x) are handled.

Everything else in trtq is written against the TensorRT 10.x Python API and type-checked against
``tensorrt-stubs``. Names that exist only in some versions (``EXPLICIT_BATCH``, ``max_workspace_size``,
``BuilderFlag.INT8``/``FP16`` on 11, the implicit-INT8 calibrator API, per-layer precision setters) are
reached here through ``getattr``/``setattr`` so that the checker accepts every branch and a missing name
gives a clear answer instead of an ``AttributeError`` deep inside a build.

``tensorrt`` is never imported at module import. Detecting it needs care: ``tensorrt-stubs`` installs a
``tensorrt/`` folder of ``.pyi`` files that imports as an empty namespace package, so a real TensorRT is
recognised by its ``__version__`` and ``Builder`` attributes, not by a successful import.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from trtq.errors import MissingDependencyError

log = logging.getLogger(__name__)

#: Algorithm names of the TensorRT calibration cache header -> calibrator base class.
CALIBRATOR_BASES: dict[str, str] = {
    "EntropyCalibration2": "IInt8EntropyCalibrator2",
    "MinMaxCalibration": "IInt8MinMaxCalibrator",
}


def is_real_tensorrt(module: object) -> bool:
    """True for an importable TensorRT with bindings; False for the stub-only namespace package."""
    return hasattr(module, "__version__") and hasattr(module, "Builder")


def load_tensorrt() -> ModuleType | None:
    """The installed ``tensorrt`` module, or None when it is absent, stub-only or broken."""
    try:
        module = importlib.import_module("tensorrt")
    except ImportError:
        return None
    except Exception as exc:  # e.g. the wheel is there but libnvinfer cannot be loaded
        log.debug("import tensorrt failed: %s: %s", type(exc).__name__, exc)
        return None
    if not is_real_tensorrt(module):
        return None
    return module


def missing_tensorrt_reason() -> str:
    """Why :func:`load_tensorrt` returned None, in words."""
    try:
        module = importlib.import_module("tensorrt")
    except ImportError:
        return "the Python package `tensorrt` is not installed"
    except Exception as exc:
        return f"`import tensorrt` failed ({type(exc).__name__}: {str(exc)[:100]})"
    if not is_real_tensorrt(module):
        return "only the type stubs of TensorRT (`tensorrt-stubs`) are installed, not TensorRT itself"
    return "TensorRT is installed"


def require_tensorrt(purpose: str) -> ModuleType:
    """Return TensorRT or raise :class:`MissingDependencyError` (exit code 3) naming what is missing."""
    module = load_tensorrt()
    if module is None:
        raise MissingDependencyError(
            f"{purpose} needs TensorRT: {missing_tensorrt_reason()}. Run it on the target machine "
            "(JetPack ships TensorRT; on a desktop GPU: pip install tensorrt)"
        )
    return module


def trt_version(module: ModuleType | None = None) -> str | None:
    """``tensorrt.__version__`` of the given (or installed) TensorRT, None without one."""
    mod = module if module is not None else load_tensorrt()
    if mod is None or not is_real_tensorrt(mod):
        return None
    return str(mod.__version__)


#: The one TensorRT logger of each TensorRT module (in practice: of the process).
_LOGGERS: weakref.WeakKeyDictionary[ModuleType, Any] = weakref.WeakKeyDictionary()
SEVERITIES = ("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")


def trt_logger(trt: ModuleType, severity: str | None = None) -> Any:
    """The process-wide ``trt.Logger``, its minimum severity set to ``severity``.

    ``severity=None``: ``INFO`` when trtq logs at DEBUG (``trtq -vv``), else ``WARNING``.

    TensorRT keeps the first logger given to a builder, runtime or refitter for the whole process: a later,
    different logger only draws a warning ("The logger passed into ... differs from one already provided")
    and its severity is ignored. So trtq makes exactly one per TensorRT module and changes its
    ``min_severity`` (a read-write property of ``trt.Logger`` in every version from 8.5 to 11).
    """
    if severity is None:
        severity = "INFO" if logging.getLogger("trtq").isEnabledFor(logging.DEBUG) else "WARNING"
    if severity not in SEVERITIES:
        raise ValueError(f"unknown TensorRT log severity {severity!r}; expected one of {', '.join(SEVERITIES)}")
    t = typed(trt)
    level = getattr(t.Logger.Severity, severity)
    logger = _LOGGERS.get(trt)
    if logger is None:
        logger = t.Logger(level)
        _LOGGERS[trt] = logger
    else:
        logger.min_severity = level
    return logger


@contextlib.contextmanager
def logger_at(trt: ModuleType, severity: str) -> Iterator[Any]:
    """The process-wide TensorRT logger at ``severity`` for the ``with`` block, its previous level restored after.

    A logger made here (none existed) is left at the default level (:func:`trt_logger` without a severity).
    """
    previous = _LOGGERS.get(trt)
    before = previous.min_severity if previous is not None else None
    logger = trt_logger(trt, severity)
    try:
        yield logger
    finally:
        if before is not None:
            logger.min_severity = before
        else:
            trt_logger(trt)


def allow_engine_host_code(runtime: Any) -> bool:
    """``runtime.engine_host_code_allowed = True`` where the binding has it (8.6+); False on 8.5.

    The property is bound from TensorRT 8.6 (``python/src/infer/pyCore.cpp``, ``py::class_<IRuntime>`` at
    NVIDIA/TensorRT v8.6.1 and v10.13.0; absent at 8.5.3), and pybind11 objects refuse new attributes, so
    setting it on 8.5 raises AttributeError. Version-compatible plans only exist from 8.6 on.
    """
    if not hasattr(runtime, "engine_host_code_allowed"):
        return False
    runtime.engine_host_code_allowed = True
    return True


def typed(module: ModuleType):  # noqa: ANN201 - the return type is the stub module, inferred by the checker
    """Return ``module`` unchanged; for the type checker it is the ``tensorrt`` stub module.

    Lets library functions take the TensorRT module as a parameter (a real one, or the recording fake of
    the tests) while every attribute access is still checked against ``tensorrt-stubs``.
    """
    if TYPE_CHECKING:
        import tensorrt

        return tensorrt
    return module


def version_tuple(version: str) -> tuple[int, int, int]:
    """``"10.3.0.26"`` -> ``(10, 3, 0)``; missing fields are 0."""
    parts: list[int] = []
    for field in version.split(".")[:3]:
        digits = "".join(ch for ch in field if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    while len(parts) < 3:
        parts.append(0)
    return parts[0], parts[1], parts[2]


def _has(owner: object, name: str) -> bool:
    return getattr(owner, name, None) is not None


@dataclass(frozen=True)
class Capabilities:
    """What the installed TensorRT offers, from its attributes (not from version arithmetic alone)."""

    version: str
    explicit_batch_flag: bool  # NetworkDefinitionCreationFlag.EXPLICIT_BATCH (needed for ONNX on 8.x; gone in 11)
    strongly_typed: bool  # NetworkDefinitionCreationFlag.STRONGLY_TYPED (9.x+)
    implicit_int8: bool  # calibrators + BuilderFlag.INT8 + IBuilderConfig.int8_calibrator (gone in 11)
    fp16_flag: bool  # BuilderFlag.FP16 (gone in 11)
    int8_flag: bool  # BuilderFlag.INT8 (gone in 11)
    obey_precision: bool  # OBEY_PRECISION_CONSTRAINTS (8.2 - 10.x)
    prefer_precision: bool
    strict_types: bool  # 8.x only
    layer_precision: bool  # ILayer.precision / set_output_type settable (gone in 11)
    memory_pool: bool  # IBuilderConfig.set_memory_pool_limit (8.4+)
    optimization_level: bool  # IBuilderConfig.builder_optimization_level (8.6+)
    calibration_profile: bool  # IBuilderConfig.set_calibration_profile (gone in 11)

    @property
    def major_minor(self) -> tuple[int, int]:
        major, minor, _ = version_tuple(self.version)
        return major, minor

    @property
    def implicit_deprecated(self) -> bool:
        """Implicit quantization is deprecated from TensorRT 10.1 (and removed in 11)."""
        return self.major_minor >= (10, 1)

    @property
    def strongly_typed_only(self) -> bool:
        """TensorRT 11: weak typing (precision flags, layer precisions) is gone."""
        return not self.fp16_flag and not self.int8_flag

    @property
    def rejects_fp16_flag_when_strongly_typed(self) -> bool:
        """10.2 - 10.6 refuse a STRONGLY_TYPED network together with any precision flag (#4228, #4253)."""
        return (10, 2) <= self.major_minor <= (10, 6)


def capabilities(trt: ModuleType) -> Capabilities:
    """Probe the given TensorRT module (real or fake) for the features trtq uses."""
    ncf = getattr(trt, "NetworkDefinitionCreationFlag", None)
    flags = getattr(trt, "BuilderFlag", None)
    config_cls = getattr(trt, "IBuilderConfig", None)
    layer_cls = getattr(trt, "ILayer", None)
    int8_flag = _has(flags, "INT8")
    return Capabilities(
        version=str(getattr(trt, "__version__", "0")),
        explicit_batch_flag=_has(ncf, "EXPLICIT_BATCH"),
        strongly_typed=_has(ncf, "STRONGLY_TYPED"),
        implicit_int8=int8_flag
        and _has(trt, "IInt8EntropyCalibrator2")
        and config_cls is not None
        and hasattr(config_cls, "int8_calibrator"),
        fp16_flag=_has(flags, "FP16"),
        int8_flag=int8_flag,
        obey_precision=_has(flags, "OBEY_PRECISION_CONSTRAINTS"),
        prefer_precision=_has(flags, "PREFER_PRECISION_CONSTRAINTS"),
        strict_types=_has(flags, "STRICT_TYPES"),
        layer_precision=layer_cls is not None and hasattr(layer_cls, "set_output_type"),
        memory_pool=config_cls is not None and hasattr(config_cls, "set_memory_pool_limit"),
        optimization_level=config_cls is not None and hasattr(config_cls, "builder_optimization_level"),
        calibration_profile=config_cls is not None and hasattr(config_cls, "set_calibration_profile"),
    )


@contextlib.contextmanager
def quiet_deprecations() -> Iterator[None]:
    """Silence TensorRT's own DeprecationWarnings for the implicit-INT8 API trtq uses on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def network_flags(trt: ModuleType, *, strongly_typed: bool) -> int:
    """Flags for ``Builder.create_network``: EXPLICIT_BATCH on 8.x, STRONGLY_TYPED when asked for."""
    ncf = trt.NetworkDefinitionCreationFlag
    caps = capabilities(trt)
    flags = 0
    eb = getattr(ncf, "EXPLICIT_BATCH", None)
    if eb is not None and caps.major_minor < (10, 0):
        flags |= 1 << int(eb)
    if strongly_typed:
        st = getattr(ncf, "STRONGLY_TYPED", None)
        if st is None:
            raise MissingDependencyError(
                f"TensorRT {caps.version} has no strongly typed networks (added in 9.x); build with --weakly-typed"
            )
        flags |= 1 << int(st)
    return flags


def builder_flag(trt: ModuleType, name: str) -> Any | None:
    """``trt.BuilderFlag.<name>`` or None where this TensorRT has no such flag."""
    return getattr(trt.BuilderFlag, name, None)


def set_builder_flag(trt: ModuleType, config: Any, name: str) -> bool:
    """Set ``BuilderFlag.<name>`` if this TensorRT has it; return whether it was set."""
    flag = builder_flag(trt, name)
    if flag is None:
        return False
    with quiet_deprecations():
        config.set_flag(flag)
    return True


def set_workspace(trt: ModuleType, config: Any, nbytes: int) -> None:
    """Workspace limit: ``set_memory_pool_limit`` (8.4+), else the old ``max_workspace_size``."""
    pool = getattr(getattr(trt, "MemoryPoolType", None), "WORKSPACE", None)
    if pool is not None and hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(pool, int(nbytes))
        return
    with quiet_deprecations():
        config.max_workspace_size = int(nbytes)


def set_hardware_compatibility(trt: ModuleType, config: Any) -> bool:
    """``hardware_compatibility_level = AMPERE_PLUS`` (8.6+): the engine runs on any Ampere or newer GPU."""
    level = getattr(getattr(trt, "HardwareCompatibilityLevel", None), "AMPERE_PLUS", None)
    if level is None or not hasattr(config, "hardware_compatibility_level"):
        return False
    config.hardware_compatibility_level = level
    return True


def set_optimization_level(config: Any, level: int) -> bool:
    """``builder_optimization_level`` (8.6+); False where this TensorRT has none."""
    if not hasattr(config, "builder_optimization_level"):
        return False
    config.builder_optimization_level = int(level)
    return True


def set_int8_calibrator(config: Any, calibrator: object, profile: object | None) -> bool:
    """Attach an implicit-INT8 calibrator (and its calibration profile where the API has one).

    Returns whether a calibration profile was set. Both setters are deprecated from 10.1 (they warn)
    and gone in 11; callers check :attr:`Capabilities.implicit_int8` first.
    """
    with quiet_deprecations():
        config.int8_calibrator = calibrator
        if profile is not None and hasattr(config, "set_calibration_profile"):
            ok = config.set_calibration_profile(profile)
            if ok is False:
                log.warning("TensorRT refused the calibration profile; calibration uses profile 0")
                return False
            return True
    return False


def set_layer_precision(trt: ModuleType, layer: Any, dtype: Any) -> bool:
    """Pin a layer's compute and output precision (weak typing only; needs OBEY/PREFER constraints)."""
    if not hasattr(layer, "set_output_type"):
        return False
    with quiet_deprecations():
        layer.precision = dtype
        for j in range(int(layer.num_outputs)):
            layer.set_output_type(j, dtype)
    return True


def calibrator_base(trt: ModuleType, algorithm: str) -> type | None:
    """The TensorRT calibrator base class for a cache algorithm name (None where it does not exist)."""
    name = CALIBRATOR_BASES.get(algorithm)
    if name is None:
        raise ValueError(f"unknown calibration algorithm {algorithm!r}; expected one of {sorted(CALIBRATOR_BASES)}")
    base = getattr(trt, name, None)
    return base if isinstance(base, type) else None


def serialize_plan(plan: object) -> bytes:
    """Bytes of an ``IHostMemory`` (buffer protocol) or of an already-bytes plan."""
    if isinstance(plan, (bytes, bytearray)):
        return bytes(plan)
    return bytes(memoryview(plan))  # type: ignore[arg-type]


def known_breakage(caps: Capabilities, *, strongly_typed: bool, precision_flags: bool) -> str | None:
    """A one-line explanation when this TensorRT is known to reject the requested combination."""
    if strongly_typed and precision_flags and caps.rejects_fp16_flag_when_strongly_typed:
        return (
            f"TensorRT {caps.version} rejects precision flags (FP16/INT8) on a strongly typed network "
            "(API Usage Error, TensorRT issues #4228/#4253); trtq leaves them unset: precision comes from the ONNX types"
        )
    if caps.major_minor == (10, 2):
        return (
            "TensorRT 10.2.0 has known engine-build regressions for YOLO models (ultralytics PR #24367); "
            "prefer 10.3 or newer"
        )
    return None
