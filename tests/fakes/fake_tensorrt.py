"""A recording fake of the ``tensorrt`` Python module, builder side and runtime side.

``make_fake_tensorrt("10.3.0")`` returns a fresh module object whose attributes follow the real API of
that version: names removed in a version are absent (``EXPLICIT_BATCH`` and the implicit-INT8 API on 11,
``STRICT_TYPES`` / ``max_workspace_size`` only on 8.x, ``builder_optimization_level`` from 8.6, ...), and the
checks that make real builds fail are reproduced (missing EXPLICIT_BATCH on 8.x, dynamic input without a
profile, DLA with dynamic shapes, precision flags on a strongly typed network on 10.2-10.6, a calibrator
that never called its base ``__init__``, calibration with no data and no cache).

Every call is appended to ``module.CALLS`` as a tuple; the objects of the last build are kept in
``module.STATE``. The ONNX parser reads the model with ``onnx`` and creates one layer per node, named
after the node (as TensorRT's parser does), so precision constraints can be checked by name.

Implicit calibration follows the pybind trampoline: ``read_calibration_cache`` first; a cache whose header
matches this version and the calibrator's algorithm is used as is; otherwise ``get_batch`` is called until
it returns ``[]``/``None``, each pointer is read from ``fake_device`` memory with the calibration (OPT)
shape, and ``write_calibration_cache`` receives a ``memoryview``. Exceptions raised in a callback are
printed to stderr and swallowed, as the real bindings do.

The plan is JSON (with a magic prefix); the fake ``Runtime`` deserializes it into an ``ICudaEngine`` with
name-based I/O whose ``execute_async_v3`` reads the inputs from fake device memory, writes outputs computed
by ``engine.compute`` (default: per image, the mean of the input) and advances the fake clock by
``engine.fake_latency_ms``.
"""

from __future__ import annotations

import enum
import json
import struct
import sys
import types
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tests.fakes import fake_device

PLAN_MAGIC = b"FAKETRTPLAN1"

_ONNX_OP_TO_LAYER = {
    "Conv": "CONVOLUTION",
    "ConvTranspose": "DECONVOLUTION",
    "Sigmoid": "ACTIVATION",
    "Relu": "ACTIVATION",
    "Mul": "ELEMENTWISE",
    "Add": "ELEMENTWISE",
    "Sub": "ELEMENTWISE",
    "Div": "ELEMENTWISE",
    "MaxPool": "POOLING",
    "Concat": "CONCATENATION",
    "Softmax": "SOFTMAX",
    "Reshape": "SHUFFLE",
    "Transpose": "SHUFFLE",
    "Split": "SLICE",
    "Slice": "SLICE",
    "Resize": "RESIZE",
    "QuantizeLinear": "QUANTIZE",
    "DequantizeLinear": "DEQUANTIZE",
    "Constant": "CONSTANT",
    "Shape": "SHAPE",
    "Gather": "GATHER",
    "Gemm": "MATRIX_MULTIPLY",
    "MatMul": "MATRIX_MULTIPLY",
}
#: layer types the fake DLA refuses (forces GPU fallback handling)
DLA_UNSUPPORTED = {"SOFTMAX", "RESIZE", "SLICE", "SHUFFLE", "QUANTIZE", "DEQUANTIZE", "CONSTANT"}


def version_code(version: str) -> int:
    major, minor, patch = (list(int(x) for x in version.split(".")[:3]) + [0, 0, 0])[:3]
    # 8.x and 9.x write MAJOR*1000 + MINOR*100 + PATCH (TRT-8601, TRT-9300); 10 and later MAJOR*10000 + ...
    return major * 1000 + minor * 100 + patch if major < 10 else major * 10000 + minor * 100 + patch


def make_fake_tensorrt(
    version: str = "10.3.0",
    *,
    num_dla_cores: int = 0,
    fake_latency_ms: float = 1.0,
) -> types.ModuleType:
    """A fresh fake ``tensorrt`` module for ``version`` (e.g. "8.5.3", "8.6.1", "10.3.0", "10.13.0", "11.0")."""
    vt = tuple((list(int(x) for x in version.split(".")[:3]) + [0, 0, 0])[:3])
    major = vt[0]
    v8 = major < 10
    v11 = major >= 11
    at_least_8_6 = vt >= (8, 6, 0)
    deprecated_implicit = vt >= (10, 1, 0)
    st_rejects_flags = (10, 2, 0) <= vt < (10, 7, 0)
    # TensorRT 11.0 - 11.3 have no DLA: even on an Orin, num_DLA_cores is 0 (DLA is back in 11.4.1 on AGX Orin;
    # TensorRT 11.x Jetson migration guides, docs.nvidia.com/deeplearning/tensorrt/11.4.1/api/migration/)
    if (11, 0, 0) <= vt < (11, 4, 0):
        num_dla_cores = 0

    mod = types.ModuleType("tensorrt")
    mod.__version__ = version
    mod.__file__ = "<fake tensorrt>"
    calls: list[tuple[Any, ...]] = []
    state = types.SimpleNamespace(
        builders=[], configs=[], networks=[], parsers=[], plans=[], engines=[], contexts=[], errors=[],
        calibration_batches=[], calibration_names=[], cache_written=None, cache_read=None, used_cache=False,
        loggers=[], logger=None,
    )
    mod.CALLS = calls
    mod.STATE = state
    mod.FAKE_LATENCY_MS = fake_latency_ms
    mod.FAKE_DEVICE = "fake-gpu-0"  # the device a timing cache is made on (set_timing_cache checks it)

    def rec(*entry: Any) -> None:
        calls.append(entry)

    # ---------------------------------------------------------------- enums
    def make_enum(name: str, members: Sequence[str]) -> type[enum.IntEnum]:
        e = enum.IntEnum(name, {m: i for i, m in enumerate(members)})
        return e

    def _enum_arg(fn: str, value: Any, kind: type) -> Any:
        """pybind11 enums do not convert from int: a plain int where an enum is expected is a TypeError."""
        if not isinstance(value, kind):
            raise TypeError(
                f"{fn}(): incompatible function arguments. The following argument types are supported: "
                f"tensorrt.{kind.__name__}; invoked with: {value!r} ({type(value).__name__})"
            )
        return value

    class DataType(enum.IntEnum):
        """``trt.DataType``: the members each version has (INT64 from 10.0, FP8/INT4 where present); read in
        NVIDIA/TensorRT v10.13.0 ``python/src/infer/pyFoundationalTypes.cpp`` (``py::enum_<DataType>``), and
        ``nptype`` as in the Python API docs (``trt.nptype``).
        """
        FLOAT = 0
        HALF = 1
        INT8 = 2
        INT32 = 3
        BOOL = 4
        UINT8 = 5
        INT64 = 8

    mod.DataType = DataType
    mod.float32, mod.float16, mod.int8, mod.int32 = DataType.FLOAT, DataType.HALF, DataType.INT8, DataType.INT32
    mod.bool, mod.uint8, mod.int64 = DataType.BOOL, DataType.UINT8, DataType.INT64
    _NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
           DataType.INT32: np.int32, DataType.BOOL: np.bool_, DataType.UINT8: np.uint8, DataType.INT64: np.int64}

    def nptype(dt: Any) -> type:
        return _NP[DataType(int(dt))]

    mod.nptype = nptype
    mod.volume = lambda shape: int(np.prod(list(shape), dtype=np.int64)) if len(list(shape)) else 1

    ncf = ["STRONGLY_TYPED"] if major >= 9 else []
    if not v11:
        ncf = ["EXPLICIT_BATCH", *(["EXPLICIT_PRECISION"] if v8 else []), *ncf]
    mod.NetworkDefinitionCreationFlag = make_enum("NetworkDefinitionCreationFlag", ncf)

    bflags = ["DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "TF32", "SPARSE_WEIGHTS", "DIRECT_IO"]
    if not v11:
        bflags += ["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"]
    if v8:
        bflags += ["STRICT_TYPES"]
    if at_least_8_6:
        bflags += ["VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME"]
    mod.BuilderFlag = make_enum("BuilderFlag", bflags)
    mod.MemoryPoolType = make_enum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM", "DLA_LOCAL_DRAM",
                                                      "DLA_GLOBAL_DRAM"])
    mod.DeviceType = make_enum("DeviceType", ["GPU", "DLA"])
    if at_least_8_6:
        mod.HardwareCompatibilityLevel = make_enum(
            "HardwareCompatibilityLevel",
            ["NONE", "AMPERE_PLUS", *(["SAME_COMPUTE_CAPABILITY"] if vt >= (10, 9, 0) else [])],
        )
    mod.ProfilingVerbosity = make_enum("ProfilingVerbosity", ["LAYER_NAMES_ONLY", "NONE", "DETAILED"])
    mod.TensorIOMode = make_enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    mod.LayerInformationFormat = make_enum("LayerInformationFormat", ["ONELINE", "JSON"])
    mod.LayerType = make_enum("LayerType", sorted(set(_ONNX_OP_TO_LAYER.values()) | {"IDENTITY"}))
    if not v11:
        mod.CalibrationAlgoType = make_enum(
            "CalibrationAlgoType",
            ["LEGACY_CALIBRATION", "ENTROPY_CALIBRATION", "ENTROPY_CALIBRATION_2", "MINMAX_CALIBRATION"],
        )

    class _Severity(enum.IntEnum):
        """``trt.ILogger.Severity``, the levels of ``py::enum_<ILogger::Severity>`` in NVIDIA/TensorRT v10.13.0
        ``python/src/infer/pyCore.cpp``.
        """
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    class Logger:
        """``trt.Logger(min_severity)``: ``DefaultLogger`` of NVIDIA/TensorRT v10.13.0
        ``python/src/infer/pyCore.cpp``, printing messages at or above its level; the fake records them in
        ``CALLS``.
        """
        Severity = _Severity
        INTERNAL_ERROR, ERROR, WARNING = _Severity.INTERNAL_ERROR, _Severity.ERROR, _Severity.WARNING
        INFO, VERBOSE = _Severity.INFO, _Severity.VERBOSE

        def __init__(self, min_severity: Any = _Severity.WARNING) -> None:
            self.min_severity = _enum_arg("Logger.__init__", min_severity, _Severity)
            self.messages: list[tuple[int, str]] = []
            state.loggers.append(self)

        def log(self, severity: Any, msg: str) -> None:
            self.messages.append((int(severity), msg))

    mod.Logger = Logger
    mod.ILogger = Logger

    def _log(severity: _Severity, msg: str) -> None:
        """What TensorRT reports goes to the first logger it was given (INFO is the largest value)."""
        logger = state.logger
        if logger is not None and severity <= logger.min_severity:
            logger.log(severity, msg)

    def _use_logger(logger: Any, api: str) -> None:
        """TensorRT keeps the first logger of the process; a different later one only draws a warning."""
        if state.logger is None:
            state.logger = logger
        elif logger is not state.logger:
            msg = (f"[TRT] The logger passed into {api} differs from one already provided for an existing builder, "
                   "runtime, or refitter. Uses of the global logger, returned by nvinfer1::getLogger(), will return "
                   "the existing value.")
            rec("warning", msg)
            _log(_Severity.WARNING, msg)

    def _error(msg: str) -> None:
        state.errors.append(msg)
        rec("error", msg)
        _log(_Severity.ERROR, msg)

    mod.init_libnvinfer_plugins = lambda logger, namespace: rec("init_libnvinfer_plugins", namespace) or True

    # ---------------------------------------------------------------- dims
    class Dims(tuple):
        """``trt.Dims``: a shape that behaves as a sequence of ints (``py::class_<Dims>`` in NVIDIA/TensorRT v10.13.0
        ``python/src/infer/pyFoundationalTypes.cpp``).
        """
        def __new__(cls, shape: Sequence[int] = ()) -> Dims:
            return super().__new__(cls, (int(d) for d in shape))

    def _dims_n(n: int) -> type:
        class DimsN(Dims):
            """``trt.Dims2``/``Dims3``/``Dims4``: fixed-rank ``Dims`` built from N ints (NVIDIA/TensorRT v10.13.0
            ``python/src/infer/pyFoundationalTypes.cpp``).
            """
            def __new__(cls, *args: int) -> Dims:
                if len(args) != n:
                    raise TypeError(f"Dims{n} takes {n} values")
                return Dims.__new__(cls, args)

        DimsN.__name__ = f"Dims{n}"
        return DimsN

    mod.Dims, mod.Dims2, mod.Dims3, mod.Dims4 = Dims, _dims_n(2), _dims_n(3), _dims_n(4)

    def _as_dims(value: Any) -> tuple[int, ...]:
        return tuple(int(d) for d in value)

    # ---------------------------------------------------------------- network
    class ITensor:
        """``trt.ITensor``: name, shape and dtype of a network tensor (``py::class_<ITensor>`` in NVIDIA/TensorRT
        v10.13.0 ``python/src/infer/pyGraph.cpp``).
        """
        def __init__(self, name: str, shape: Sequence[int], dtype: Any = DataType.FLOAT) -> None:
            self.name = name
            self.shape = Dims(shape)
            self.dtype = dtype

    mod.ITensor = ITensor

    class ILayer:
        """``trt.ILayer``: name, type, inputs/outputs, and the per-layer precision setters (``precision``,
        ``set_output_type``; deprecated in 10.12 and absent on 11) as bound in NVIDIA/TensorRT v10.13.0
        ``python/src/infer/pyGraph.cpp``.
        """
        def __init__(self, name: str, ltype: str, op_type: str, inputs: list[ITensor], outputs: list[ITensor]):
            self.name = name
            self.type = mod.LayerType[ltype]
            self.op_type = op_type
            self._inputs = inputs
            self._outputs = outputs
            self._precision: Any = DataType.FLOAT
            self.precision_is_set = False
            self.output_types: dict[int, Any] = {}

        @property
        def num_inputs(self) -> int:
            return len(self._inputs)

        @property
        def num_outputs(self) -> int:
            return len(self._outputs)

        def get_input(self, i: int) -> ITensor:
            return self._inputs[i]

        def get_output(self, i: int) -> ITensor:
            return self._outputs[i]

        def get_output_type(self, i: int) -> Any:
            return self.output_types.get(i, DataType.FLOAT)

        if not v11:

            @property
            def precision(self) -> Any:
                return self._precision

            @precision.setter
            def precision(self, dtype: Any) -> None:
                if vt >= (10, 12, 0):
                    warnings.warn("ILayer.precision is deprecated", DeprecationWarning, stacklevel=2)
                _enum_arg("ILayer.precision", dtype, DataType)
                rec("layer.precision", self.name, DataType(int(dtype)).name)
                self._precision = dtype
                self.precision_is_set = True

            def set_output_type(self, i: int, dtype: Any) -> None:
                _enum_arg("set_output_type", dtype, DataType)
                rec("layer.set_output_type", self.name, i, DataType(int(dtype)).name)
                self.output_types[i] = dtype

        else:

            @property
            def precision(self) -> Any:
                return self._precision

    mod.ILayer = ILayer

    class INetworkDefinition:
        """``trt.INetworkDefinition``: layers and I/O tensors by index, ``get_flag`` for the creation flags
        (``py::class_<INetworkDefinition>`` in NVIDIA/TensorRT v10.13.0 ``python/src/infer/pyGraph.cpp``).
        """
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.layers: list[ILayer] = []
            self.inputs: list[ITensor] = []
            self.outputs: list[ITensor] = []
            self.has_qdq = False

        @property
        def num_layers(self) -> int:
            return len(self.layers)

        def get_layer(self, i: int) -> ILayer:
            return self.layers[i]

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> ITensor:
            return self.inputs[i]

        @property
        def num_outputs(self) -> int:
            return len(self.outputs)

        def get_output(self, i: int) -> ITensor:
            return self.outputs[i]

        def get_flag(self, flag: Any) -> bool:
            _enum_arg("get_flag", flag, mod.NetworkDefinitionCreationFlag)
            return bool(self.flags & (1 << int(flag)))

    mod.INetworkDefinition = INetworkDefinition

    def _strongly_typed(network: INetworkDefinition) -> bool:
        st = getattr(mod.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        return v11 or (st is not None and network.get_flag(st))

    # ---------------------------------------------------------------- parser
    class ParserError:
        """``trt.ParserError``: ``code()``, ``desc()``, ``node()`` of one parse error (``py::class_<IParserError>``
        in NVIDIA/TensorRT v10.13.0 ``python/src/parsers/pyOnnx.cpp``).
        """
        def __init__(self, desc: str, node: int = -1) -> None:
            self._desc, self._node = desc, node

        def code(self) -> int:
            return 8

        def desc(self) -> str:
            return self._desc

        def node(self) -> int:
            return self._node

        def __str__(self) -> str:
            return self._desc

    class OnnxParser:
        """``trt.OnnxParser(network, logger)``: ``parse_from_file``/``parse`` return False and keep ``ParserError`` s
        on failure; each ONNX node becomes a layer named after the node, later layers of one node ``<node>_<n>``
        (``py::class_<IParser>`` in NVIDIA/TensorRT v10.13.0 ``python/src/parsers/pyOnnx.cpp``). The layer naming
        is the one ``trtq.trt.network.map_float_layers`` relies on; the bindings do not show it (it lives in the
        parser library), so it is the fake's assumption, checked only on a real build.
        """
        def __init__(self, network: INetworkDefinition, logger: Any) -> None:
            self.network = network
            self.errors: list[ParserError] = []
            state.parsers.append(self)
            rec("OnnxParser")

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> ParserError:
            return self.errors[i]

        def parse_from_file(self, path: str) -> bool:
            rec("parse_from_file", str(path))
            import onnx

            try:
                model = onnx.load(str(path), load_external_data=False)
            except Exception as exc:
                self.errors.append(ParserError(f"cannot read {path}: {exc}"))
                return False
            return self._import(model)

        def parse(self, model: bytes, path: str | None = None) -> bool:
            rec("parse", len(model))
            import onnx

            return self._import(onnx.load_from_string(bytes(model)))

        def _import(self, model: Any) -> bool:
            net = self.network
            if v8 and not net.get_flag(mod.NetworkDefinitionCreationFlag.EXPLICIT_BATCH):
                self.errors.append(ParserError("Network must have the explicit batch flag (ONNX models need it)"))
                return False
            opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
            if v8 and opset > 17:  # the 8.5 / 8.6 ONNX parsers stop at opset 17
                self.errors.append(ParserError(f"Unsupported ONNX opset {opset} (this parser supports up to 17)"))
                return False
            graph = model.graph
            inits = {i.name for i in graph.initializer}
            tensors: dict[str, ITensor] = {}
            for vi in graph.input:
                if vi.name in inits:
                    continue
                dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
                        for d in vi.type.tensor_type.shape.dim]
                dt = DataType.HALF if vi.type.tensor_type.elem_type == 10 else DataType.FLOAT
                t = ITensor(vi.name, dims, dt)
                net.inputs.append(t)
                tensors[vi.name] = t
            used: set[str] = set()
            counter = [0]

            def unique(base: str) -> str:
                cand = base
                while cand in used:
                    cand = f"{base}_{counter[0]}"
                    counter[0] += 1
                used.add(cand)
                return cand

            for node in graph.node:
                ltype = _ONNX_OP_TO_LAYER.get(node.op_type, "IDENTITY")
                if ltype in ("QUANTIZE", "DEQUANTIZE"):
                    net.has_qdq = True
                ins = [tensors.get(n) or ITensor(n, []) for n in node.input if n]
                int_op = node.op_type == "Shape" or (
                    bool(ins) and all(t.dtype == DataType.INT64 for t in ins) and node.op_type != "Constant")
                outs = [ITensor(n, [], DataType.INT64 if int_op else DataType.FLOAT) for n in node.output]
                for t in outs:
                    tensors[t.name] = t
                name = unique(node.name or f"node_of_{node.output[0]}")
                net.layers.append(ILayer(name, ltype, node.op_type, ins, outs))
            for vo in graph.output:
                dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
                        for d in vo.type.tensor_type.shape.dim]
                t = tensors.get(vo.name) or ITensor(vo.name, dims)
                t.shape = Dims(dims)
                net.outputs.append(t)
            return True

    mod.OnnxParser = OnnxParser

    # ---------------------------------------------------------------- config, profile, timing cache
    class IOptimizationProfile:
        """``trt.IOptimizationProfile``: min/opt/max shape per input (``set_shape``/``get_shape``;
        ``py::class_<IOptimizationProfile>`` in NVIDIA/TensorRT v10.13.0 ``python/src/infer/pyCore.cpp``).
        """
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}

        def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002
            for v in (min, opt, max):
                if not isinstance(v, Dims):  # the real binding converts tuples; trtq passes Dims (stub-typed)
                    raise TypeError("set_shape expects Dims")
            rec("profile.set_shape", input, _as_dims(min), _as_dims(opt), _as_dims(max))
            self.shapes[input] = (_as_dims(min), _as_dims(opt), _as_dims(max))

        def get_shape(self, input: str) -> list[Dims]:  # noqa: A002
            return [Dims(s) for s in self.shapes[input]]

    mod.IOptimizationProfile = IOptimizationProfile

    class ITimingCache:
        """``trt.ITimingCache``: ``serialize``/``combine`` (``py::class_<ITimingCache>`` in NVIDIA/TensorRT v10.13.0
        ``python/src/infer/pyCore.cpp``); ``create_timing_cache`` returns None for a corrupt or foreign blob (the
        ``netconfig_create_timing_cache`` lambda returns the C++ result, nullptr -> None).

        A timing cache of this TensorRT version, made on device ``mod.FAKE_DEVICE``."""

        def __init__(self, entries: int = 0, device: str | None = None) -> None:
            self.entries = entries
            self.device = device if device is not None else mod.FAKE_DEVICE

        def serialize(self) -> bytes:
            return json.dumps({"version": version, "device": self.device, "entries": self.entries}).encode()

        def combine(self, other: ITimingCache, ignore_mismatch: bool) -> bool:
            if other.device != self.device and not ignore_mismatch:
                return False
            self.entries += other.entries
            return True

    def _timing_cache_from(blob: bytes) -> ITimingCache | None:
        """``IBuilderConfig::createTimingCache``: nullptr (None in Python) for a blob it cannot read, which
        includes a cache serialized by another TensorRT version (NVIDIA's samples check for it)."""
        if not blob:
            return ITimingCache()
        try:
            info = json.loads(bytes(blob).decode())
            entries, origin, device = int(info["entries"]), str(info["version"]), str(info["device"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            _error("Error Code 1: Serialization (Serialization assertion failed: corrupt timing cache)")
            return None
        if origin != version:
            _error(f"Error Code 1: Serialization (timing cache of TensorRT {origin}, this is {version})")
            return None
        return ITimingCache(entries, device)

    mod.ITimingCache = ITimingCache

    class IBuilderConfig:
        """``trt.IBuilderConfig``: flags, memory pools, profiles, DLA device types, timing cache, and the version-
        dependent members (``max_workspace_size`` on 8.x, ``builder_optimization_level`` from 8.6,
        ``hardware_compatibility_level`` from 8.6, ``int8_calibrator``/``set_calibration_profile`` before 11);
        read in ``python/src/infer/pyCore.cpp`` (``py::class_<IBuilderConfig>``) at v8.6.1, v10.13.0 and v11.0 of
        NVIDIA/TensorRT.
        """
        def __init__(self) -> None:
            self.flags: set[str] = set()
            self.pools: dict[str, int] = {}
            self.profiles: list[IOptimizationProfile] = []
            self._profiling_verbosity = mod.ProfilingVerbosity.LAYER_NAMES_ONLY
            self._default_device_type = mod.DeviceType.GPU
            self.DLA_core = -1
            self.device_types: dict[str, Any] = {}
            self._timing_cache: ITimingCache | None = None
            self._calibrator: Any = None
            self.calibration_profile: IOptimizationProfile | None = None
            self._opt_level = 3
            self._workspace = 0
            state.configs.append(self)

        @property
        def profiling_verbosity(self) -> Any:
            return self._profiling_verbosity

        @profiling_verbosity.setter
        def profiling_verbosity(self, value: Any) -> None:
            self._profiling_verbosity = _enum_arg("profiling_verbosity", value, mod.ProfilingVerbosity)

        @property
        def default_device_type(self) -> Any:
            return self._default_device_type

        @default_device_type.setter
        def default_device_type(self, value: Any) -> None:
            self._default_device_type = _enum_arg("default_device_type", value, mod.DeviceType)

        def set_flag(self, flag: Any) -> None:
            _enum_arg("set_flag", flag, mod.BuilderFlag)
            rec("config.set_flag", mod.BuilderFlag(int(flag)).name)
            self.flags.add(mod.BuilderFlag(int(flag)).name)

        def clear_flag(self, flag: Any) -> None:
            _enum_arg("clear_flag", flag, mod.BuilderFlag)
            self.flags.discard(mod.BuilderFlag(int(flag)).name)

        def get_flag(self, flag: Any) -> bool:
            _enum_arg("get_flag", flag, mod.BuilderFlag)
            return mod.BuilderFlag(int(flag)).name in self.flags

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            _enum_arg("set_memory_pool_limit", pool, mod.MemoryPoolType)
            rec("config.set_memory_pool_limit", mod.MemoryPoolType(int(pool)).name, int(size))
            self.pools[mod.MemoryPoolType(int(pool)).name] = int(size)

        def get_memory_pool_limit(self, pool: Any) -> int:
            _enum_arg("get_memory_pool_limit", pool, mod.MemoryPoolType)
            return self.pools.get(mod.MemoryPoolType(int(pool)).name, 0)

        def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
            rec("config.add_optimization_profile", dict(profile.shapes))
            for mn, op, mx in profile.shapes.values():
                if len(mn) != len(op) or len(op) != len(mx):
                    return -1
                if any(a > b or b > c for a, b, c in zip(mn, op, mx, strict=False)):
                    return -1
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def can_run_on_DLA(self, layer: ILayer) -> bool:  # noqa: N802
            return layer.type.name not in DLA_UNSUPPORTED

        def set_device_type(self, layer: ILayer, device_type: Any) -> None:
            _enum_arg("set_device_type", device_type, mod.DeviceType)
            rec("config.set_device_type", layer.name, mod.DeviceType(int(device_type)).name)
            self.device_types[layer.name] = device_type

        def get_device_type(self, layer: ILayer) -> Any:
            return self.device_types.get(layer.name, self.default_device_type)

        def create_timing_cache(self, blob: Any) -> ITimingCache | None:
            rec("config.create_timing_cache", len(bytes(blob)))
            return _timing_cache_from(bytes(blob))

        def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
            if not isinstance(cache, ITimingCache):  # the binding takes a reference: None is a TypeError
                raise TypeError(f"set_timing_cache(): incompatible function arguments; invoked with: {cache!r}")
            rec("config.set_timing_cache", cache.entries, ignore_mismatch)
            if cache.device != mod.FAKE_DEVICE and not ignore_mismatch:  # made on another GPU
                return False
            self._timing_cache = cache
            return True

        def get_timing_cache(self) -> ITimingCache | None:
            return self._timing_cache

        if at_least_8_6:

            @property
            def hardware_compatibility_level(self) -> Any:
                return getattr(self, "_hw_level", mod.HardwareCompatibilityLevel.NONE)

            @hardware_compatibility_level.setter
            def hardware_compatibility_level(self, level: Any) -> None:
                _enum_arg("hardware_compatibility_level", level, mod.HardwareCompatibilityLevel)
                rec("config.hardware_compatibility_level", level.name)
                self._hw_level = level

            @property
            def builder_optimization_level(self) -> int:
                return self._opt_level

            @builder_optimization_level.setter
            def builder_optimization_level(self, level: int) -> None:
                rec("config.builder_optimization_level", int(level))
                self._opt_level = int(level)

        if v8:

            @property
            def max_workspace_size(self) -> int:
                return self._workspace

            @max_workspace_size.setter
            def max_workspace_size(self, size: int) -> None:
                warnings.warn("max_workspace_size is deprecated", DeprecationWarning, stacklevel=2)
                rec("config.max_workspace_size", int(size))
                self._workspace = int(size)

        if not v11:

            @property
            def int8_calibrator(self) -> Any:
                return self._calibrator

            @int8_calibrator.setter
            def int8_calibrator(self, calibrator: Any) -> None:
                if deprecated_implicit:
                    warnings.warn("int8_calibrator is deprecated", DeprecationWarning, stacklevel=2)
                base = next((c.__name__ for c in type(calibrator).__mro__ if c.__name__.startswith("IInt8")), None)
                rec("config.int8_calibrator", base if calibrator is not None else None)
                self._calibrator = calibrator

            def set_calibration_profile(self, profile: IOptimizationProfile) -> bool:
                if deprecated_implicit:
                    warnings.warn("set_calibration_profile is deprecated", DeprecationWarning, stacklevel=2)
                rec("config.set_calibration_profile", dict(profile.shapes))
                self.calibration_profile = profile
                return True

    mod.IBuilderConfig = IBuilderConfig

    # ---------------------------------------------------------------- calibrators (8.x - 10.x)
    if not v11:

        class IInt8Calibrator:
            """``trt.IInt8Calibrator``: the pybind trampoline of NVIDIA/TensorRT v10.13.0
            ``python/src/infer/pyInt8.cpp``: a subclass must call the base ``__init__``; ``get_batch`` returns
            device pointers (or ``[]``/None to end), ``read_calibration_cache`` returns bytes or None,
            ``write_calibration_cache`` receives a ``memoryview``; an exception in a callback is printed to stderr
            and swallowed. The file is gone at v11.0 (no implicit INT8).
            """
            ALGO = "LegacyCalibration"

            def __init__(self) -> None:
                self._fake_base_init = True

            def get_algorithm(self) -> Any:
                return mod.CalibrationAlgoType.LEGACY_CALIBRATION

            def get_batch_size(self) -> int:
                raise NotImplementedError

            def get_batch(self, names: list[str]) -> list[int]:
                raise NotImplementedError

            def read_calibration_cache(self) -> Any:
                return None

            def write_calibration_cache(self, cache: Any) -> None:
                return None

        class IInt8EntropyCalibrator2(IInt8Calibrator):
            """``trt.IInt8EntropyCalibrator2``: algorithm ENTROPY_CALIBRATION_2 (NVIDIA/TensorRT v10.13.0
            ``python/src/infer/pyInt8.cpp``).
            """
            ALGO = "EntropyCalibration2"

            def get_algorithm(self) -> Any:
                return mod.CalibrationAlgoType.ENTROPY_CALIBRATION_2

        class IInt8MinMaxCalibrator(IInt8Calibrator):
            """``trt.IInt8MinMaxCalibrator``: algorithm MINMAX_CALIBRATION (NVIDIA/TensorRT v10.13.0
            ``python/src/infer/pyInt8.cpp``).
            """
            ALGO = "MinMaxCalibration"

            def get_algorithm(self) -> Any:
                return mod.CalibrationAlgoType.MINMAX_CALIBRATION

        class IInt8EntropyCalibrator(IInt8Calibrator):
            """``trt.IInt8EntropyCalibrator`` (legacy entropy): algorithm ENTROPY_CALIBRATION (NVIDIA/TensorRT
            v10.13.0 ``python/src/infer/pyInt8.cpp``).
            """
            ALGO = "EntropyCalibration"

        mod.IInt8Calibrator = IInt8Calibrator
        mod.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
        mod.IInt8MinMaxCalibrator = IInt8MinMaxCalibrator
        mod.IInt8EntropyCalibrator = IInt8EntropyCalibrator

    def _callback(name: str, fn: Callable[[], Any], on_error: Any) -> Any:
        """The pybind trampoline: print and swallow exceptions raised in Python callbacks."""
        try:
            return fn()
        except Exception as exc:
            print(f"[ERROR] Exception caught in {name}(): {exc}", file=sys.stderr)
            rec("callback_exception", name, type(exc).__name__)
            return on_error

    def _calibrate(net: INetworkDefinition, config: IBuilderConfig) -> dict[str, float] | None:
        cal = config._calibrator
        if not getattr(cal, "_fake_base_init", False):
            raise RuntimeError("Segmentation fault (calibrator did not call the base class __init__)")
        algo = type(cal).ALGO
        header = f"TRT-{version_code(version)}-{algo}"
        data = _callback("read_calibration_cache", cal.read_calibration_cache, None)
        rec("calibrator.read_calibration_cache", data is not None)
        if data is not None:
            text = bytes(memoryview(data)).decode(errors="replace")
            lines = text.splitlines()
            state.cache_read = text
            if lines and lines[0] == header:
                scales = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.rsplit(":", 1)
                        scales[k.strip()] = struct.unpack(">f", bytes.fromhex(v.strip()))[0]
                state.used_cache = True
                return scales
            rec("calibrator.cache_rejected", lines[0] if lines else "")
        profile = config.calibration_profile or (config.profiles[0] if config.profiles else None)
        names = [t.name for t in net.inputs]
        shapes = {}
        for t in net.inputs:
            shape = tuple(t.shape)
            if -1 in shape:
                if profile is None or t.name not in profile.shapes:
                    _error(f"calibration needs a profile for dynamic input {t.name}")
                    return None
                shape = profile.shapes[t.name][1]
            shapes[t.name] = shape
        batch_size = _callback("get_batch_size", cal.get_batch_size, -1)
        rec("calibrator.get_batch_size", batch_size)
        amax = {n: 0.0 for n in names}
        count = 0
        while True:
            ptrs = _callback("get_batch", lambda: cal.get_batch(list(names)), None)
            rec("calibrator.get_batch", None if ptrs is None else len(ptrs))
            if not ptrs:
                break
            if len(ptrs) != len(names):
                raise RuntimeError(f"get_batch returned {len(ptrs)} pointers for {len(names)} inputs (memcpy UB)")
            batch = {}
            for n, p in zip(names, ptrs, strict=False):
                shape = shapes[n]
                arr = fake_device.read_device(int(p), int(np.prod(shape)) * 4, np.float32, shape)
                batch[n] = arr
                amax[n] = max(amax[n], float(np.abs(arr).max()))
            state.calibration_batches.append(batch)
            count += 1
        if count == 0:
            _error("Calibration failure occurred with no scaling factors detected")
            return None
        scales = {n: (a or 1.0) / 127.0 for n, a in amax.items()}
        for layer in net.layers:
            for j in range(layer.num_outputs):
                scales.setdefault(layer.get_output(j).name, 0.05)
        body = "".join(f"{k}: {struct.pack('>f', v).hex()}\n" for k, v in scales.items())
        cache = (header + "\n" + body).encode()
        view = memoryview(np.frombuffer(cache, dtype=np.uint8))
        _callback("write_calibration_cache", lambda: cal.write_calibration_cache(view), None)
        rec("calibrator.write_calibration_cache", len(cache))
        state.cache_written = cache
        return scales

    # ---------------------------------------------------------------- builder
    class IHostMemory(bytes):
        """``trt.IHostMemory``: the serialized plan, a buffer with ``nbytes`` (``py::class_<IHostMemory>`` with the
        buffer protocol in NVIDIA/TensorRT v10.13.0 ``python/src/infer/pyFoundationalTypes.cpp``).
        """
        @property
        def nbytes(self) -> int:
            return len(self)

    mod.IHostMemory = IHostMemory

    class Builder:
        """``trt.Builder(logger)``: ``create_network`` (EXPLICIT_BATCH required on 8.x), ``create_builder_config``,
        ``num_DLA_cores``, ``build_serialized_network`` returning None on failure, plus the checks real builds
        fail on (dynamic input without a profile, DLA with dynamic shapes, precision flags on a strongly typed
        network on 10.2-10.6); ``py::class_<IBuilder>`` in ``python/src/infer/pyCore.cpp`` at v8.6.1, v10.13.0 and
        v11.0, the failures as the TensorRT developer guide and release notes describe them.
        """
        def __init__(self, logger: Any) -> None:
            self.logger = logger
            _use_logger(logger, "createInferBuilder")
            state.builders.append(self)
            rec("Builder")

        @property
        def num_DLA_cores(self) -> int:  # noqa: N802
            return num_dla_cores

        if not v11:

            @property
            def platform_has_fast_fp16(self) -> bool:
                return True

            @property
            def platform_has_fast_int8(self) -> bool:
                return True

        def create_network(self, flags: int = 0) -> INetworkDefinition:
            rec("create_network", int(flags))
            net = INetworkDefinition(int(flags))
            state.networks.append(net)
            return net

        def create_builder_config(self) -> IBuilderConfig:
            rec("create_builder_config")
            return IBuilderConfig()

        def create_optimization_profile(self) -> IOptimizationProfile:
            return IOptimizationProfile()

        def build_serialized_network(self, net: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
            rec("build_serialized_network", sorted(config.flags))
            strongly = _strongly_typed(net)
            if strongly and st_rejects_flags and ({"FP16", "INT8"} & config.flags):
                _error("API Usage Error (condition: !config.getFlag(BuilderFlag::kFP16))")
                return None
            if strongly and any(layer.precision_is_set or layer.output_types for layer in net.layers):
                _error("API Usage Error: setPrecision/setOutputType are not allowed on a strongly typed network")
                return None
            dynamic = [t for t in net.inputs if -1 in tuple(t.shape)]
            if dynamic and not config.profiles:
                _error(f"Network has dynamic or shape inputs, but no optimization profile has been defined ({dynamic[0].name})")
                return None
            for p in config.profiles:
                for t in net.inputs:
                    if t.name not in p.shapes:
                        if -1 in tuple(t.shape):
                            _error(f"optimization profile is missing values for input {t.name}")
                            return None
                        continue
                    for shape in p.shapes[t.name]:
                        if len(shape) != len(t.shape) or any(s != d for s, d in zip(shape, t.shape, strict=False) if d != -1):
                            _error(f"profile shape {shape} does not match input {t.name}{tuple(t.shape)}")
                            return None
            dla = config.default_device_type == mod.DeviceType.DLA
            if dla:
                if not 0 <= config.DLA_core < num_dla_cores:
                    _error(f"DLA core {config.DLA_core} requested; this device has {num_dla_cores}")
                    return None
                for p in config.profiles:
                    for mn, op, mx in p.shapes.values():
                        if not mn == op == mx:
                            _error("DLA does not support dynamic shapes (min, opt and max must be equal)")
                            return None
                if not v11 and not ({"FP16", "INT8"} & config.flags):
                    _error("DLA needs FP16 or INT8")
                    return None
                if "GPU_FALLBACK" not in config.flags:
                    for layer in net.layers:
                        if not config.can_run_on_DLA(layer) and config.get_device_type(layer) != mod.DeviceType.GPU:
                            _error(f"layer {layer.name} cannot run on DLA and GPU fallback is off")
                            return None
            scales: dict[str, float] | None = None
            int8 = "INT8" in config.flags or (strongly and net.has_qdq)
            if int8 and not net.has_qdq:
                if config._calibrator is not None:
                    scales = _calibrate(net, config)
                    if scales is None:
                        return None
                else:
                    rec("warning", "Calibrator is not being used")
            if config._timing_cache is not None:
                config._timing_cache.entries += len(net.layers)
            fp16 = "FP16" in config.flags
            layers = []
            for layer in net.layers:
                if layer.precision_is_set:
                    prec = DataType(int(layer.precision)).name
                elif int8 and layer.type.name == "CONVOLUTION":
                    prec = "INT8"
                elif fp16:
                    prec = "HALF"
                else:
                    prec = "FLOAT"
                dev = "GPU"
                if dla and config.can_run_on_DLA(layer) and config.get_device_type(layer) == mod.DeviceType.DLA:
                    dev = "DLA"
                layers.append({"name": layer.name, "type": layer.type.name, "precision": prec, "device": dev})
            out_dtype = "FLOAT"
            plan = {
                "version": version,
                "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": DataType(int(t.dtype)).name}
                           for t in net.inputs],
                "outputs": [{"name": t.name, "shape": list(t.shape), "dtype": out_dtype} for t in net.outputs],
                "profiles": [{k: [list(s) for s in v] for k, v in p.shapes.items()} for p in config.profiles],
                "flags": sorted(config.flags),
                "strongly_typed": strongly,
                "layers": layers,
                "dla_core": config.DLA_core if dla else None,
                "profiling_verbosity": config.profiling_verbosity.name,
                "calibrated": scales is not None,
                "version_compatible": "VERSION_COMPATIBLE" in config.flags,
                "hardware_compatibility": config.hardware_compatibility_level.name if at_least_8_6 else "NONE",
            }
            state.plans.append(plan)
            return IHostMemory(PLAN_MAGIC + json.dumps(plan).encode())

        if not v11 and major < 10:

            def build_engine(self, net: INetworkDefinition, config: IBuilderConfig) -> Any:
                warnings.warn("build_engine is deprecated", DeprecationWarning, stacklevel=2)
                plan = self.build_serialized_network(net, config)
                return None if plan is None else Runtime(self.logger).deserialize_cuda_engine(plan)

    mod.Builder = Builder

    # ---------------------------------------------------------------- runtime
    class IExecutionContext:
        """``trt.IExecutionContext``: ``set_optimization_profile_async``, ``set_input_shape``,
        ``set_tensor_address``, ``execute_async_v3(stream_handle)`` (``py::class_<IExecutionContext>`` and the
        ``execute_async_v3`` lambda in NVIDIA/TensorRT v10.13.0 ``python/src/infer/pyCore.cpp``); the fake
        computes on fake device memory and advances the fake clock.
        """
        def __init__(self, engine: ICudaEngine) -> None:
            self.engine = engine
            self.input_shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}
            self.profile = 0
            self.executions = 0
            state.contexts.append(self)

        def set_optimization_profile_async(self, index: int, stream: int) -> bool:
            rec("context.set_optimization_profile_async", index)
            if not 0 <= index < max(len(self.engine.plan["profiles"]), 1):
                return False
            self.profile = index
            return True

        def set_input_shape(self, name: str, shape: Any) -> bool:
            shape = _as_dims(shape)
            rec("context.set_input_shape", name, shape)
            spec = self.engine._io(name)
            if spec is None or len(shape) != len(spec["shape"]):
                return False
            if any(d != -1 and s != d for s, d in zip(shape, spec["shape"], strict=False)):
                return False
            profiles = self.engine.plan["profiles"]
            if profiles and name in profiles[self.profile]:
                mn, _, mx = profiles[self.profile][name]
                if any(s < a or s > b for s, a, b in zip(shape, mn, mx, strict=False)):
                    return False
            self.input_shapes[name] = shape
            return True

        def get_tensor_shape(self, name: str) -> Dims:
            spec = self.engine._io(name)
            if spec is None:
                return Dims([])
            if name in self.input_shapes:
                return Dims(self.input_shapes[name])
            shape = list(spec["shape"])
            if shape and shape[0] == -1 and self.input_shapes:
                shape[0] = next(iter(self.input_shapes.values()))[0]
            return Dims(shape)

        def infer_shapes(self) -> list[str]:
            return []

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            rec("context.set_tensor_address", name, int(ptr))
            if self.engine._io(name) is None:
                return False
            self.addresses[name] = int(ptr)
            return True

        def get_tensor_address(self, name: str) -> int:
            return self.addresses.get(name, 0)

        def execute_async_v3(self, stream_handle: int) -> bool:
            handle = int(stream_handle)  # the binding converts the stream to its integer address
            rec("context.execute_async_v3", handle)
            captured = fake_device.CAPTURING.get(handle)
            if captured is not None:  # the stream is being captured into a CUDA graph: record, run at launch
                captured.append(self._execute)
                return True
            return self._execute()

        def _execute(self) -> bool:
            eng = self.engine
            inputs = {}
            for spec in eng.plan["inputs"]:
                name = spec["name"]
                shape = self.input_shapes.get(name) or tuple(spec["shape"])
                if -1 in shape or name not in self.addresses:
                    _error(f"input {name}: shape or address not set")
                    return False
                dtype = np.dtype(nptype(DataType[spec["dtype"]]))
                inputs[name] = fake_device.read_device(self.addresses[name], int(np.prod(shape)) * dtype.itemsize,
                                                       dtype, shape)
            outputs = eng.compute(inputs, {o["name"]: tuple(self.get_tensor_shape(o["name"]))
                                           for o in eng.plan["outputs"]})
            for spec in eng.plan["outputs"]:
                if spec["name"] not in self.addresses:
                    _error(f"output {spec['name']}: address not set")
                    return False
                fake_device.write_device(self.addresses[spec["name"]], np.asarray(outputs[spec["name"]], np.float32))
            fake_device.FakeClock.advance(eng.fake_latency_ms)
            self.executions += 1
            return True

    mod.IExecutionContext = IExecutionContext

    def _default_compute(inputs: dict[str, np.ndarray], out_shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
        x = next(iter(inputs.values())).astype(np.float32)
        per_image = x.reshape(x.shape[0], -1).mean(axis=1)
        result = {}
        for name, shape in out_shapes.items():
            out = np.empty(shape, np.float32)
            out[...] = per_image.reshape((-1,) + (1,) * (len(shape) - 1))
            result[name] = out
        return result

    class EngineInspector:
        """``trt.EngineInspector``: ``get_layer_information``/``get_engine_information`` as JSON
        (``py::class_<IEngineInspector>`` named ``EngineInspector`` in NVIDIA/TensorRT v10.13.0
        ``python/src/infer/pyCore.cpp``).
        """
        def __init__(self, engine: ICudaEngine) -> None:
            self.engine = engine
            self.execution_context: Any = None

        def _layer(self, i: int) -> dict[str, Any]:
            layer = self.engine.plan["layers"][i]
            if self.engine.plan["profiling_verbosity"] != "DETAILED":
                return {"Name": layer["name"]}
            fmt = {"INT8": "Int8", "HALF": "Half", "FLOAT": "Float"}.get(layer["precision"], "Float")
            tensor = ({"Name": f"{layer['name']}_out", "Datatype": fmt, "Format": "Row major linear"} if v11 else
                      {"Name": f"{layer['name']}_out", "Format/Datatype": f"Row major linear {fmt}"})
            return {"Name": layer["name"], "LayerType": layer["type"], "Inputs": [], "Outputs": [tensor],
                    "TacticName": "fake", "Device": layer["device"]}

        def get_layer_information(self, index: int, fmt: Any) -> str:
            _enum_arg("get_layer_information", fmt, mod.LayerInformationFormat)
            rec("inspector.get_layer_information", index)
            return json.dumps(self._layer(index))

        def get_engine_information(self, fmt: Any) -> str:
            _enum_arg("get_engine_information", fmt, mod.LayerInformationFormat)
            return json.dumps({"Layers": [self._layer(i) for i in range(len(self.engine.plan["layers"]))]})

    mod.EngineInspector = EngineInspector

    class ICudaEngine:
        """``trt.ICudaEngine``: name-based I/O (``num_io_tensors``, ``get_tensor_name/mode/shape/dtype``,
        ``get_tensor_profile_shape``), ``create_execution_context``, ``create_engine_inspector``
        (``py::class_<ICudaEngine>`` in NVIDIA/TensorRT v10.13.0 ``python/src/infer/pyCore.cpp``).
        """
        def __init__(self, plan: dict[str, Any]) -> None:
            self.plan = plan
            self.fake_latency_ms = float(mod.FAKE_LATENCY_MS)
            self.compute: Callable[..., dict[str, Any]] = _default_compute
            self.name = "fake engine"
            state.engines.append(self)

        def _io(self, name: str) -> dict[str, Any] | None:
            for spec in self.plan["inputs"] + self.plan["outputs"]:
                if spec["name"] == name:
                    return spec
            return None

        @property
        def num_io_tensors(self) -> int:
            return len(self.plan["inputs"]) + len(self.plan["outputs"])

        def get_tensor_name(self, i: int) -> str:
            return (self.plan["inputs"] + self.plan["outputs"])[i]["name"]

        def __getitem__(self, i: int) -> str:
            return self.get_tensor_name(i)

        def get_tensor_mode(self, name: str) -> Any:
            if any(s["name"] == name for s in self.plan["inputs"]):
                return mod.TensorIOMode.INPUT
            if any(s["name"] == name for s in self.plan["outputs"]):
                return mod.TensorIOMode.OUTPUT
            return mod.TensorIOMode.NONE

        def get_tensor_shape(self, name: str) -> Dims:
            spec = self._io(name)
            return Dims(spec["shape"] if spec else [])

        def get_tensor_dtype(self, name: str) -> Any:
            spec = self._io(name)
            return DataType[spec["dtype"]] if spec else DataType.FLOAT

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Dims]:
            profiles = self.plan["profiles"]
            if profile_index < len(profiles) and name in profiles[profile_index]:
                return [Dims(s) for s in profiles[profile_index][name]]
            spec = self._io(name)
            shape = Dims(spec["shape"] if spec else [])
            return [shape, shape, shape]

        @property
        def num_optimization_profiles(self) -> int:
            return max(len(self.plan["profiles"]), 1)

        @property
        def num_layers(self) -> int:
            return len(self.plan["layers"])

        @property
        def profiling_verbosity(self) -> Any:
            return mod.ProfilingVerbosity[self.plan["profiling_verbosity"]]

        @property
        def device_memory_size(self) -> int:
            return 1 << 20

        def create_execution_context(self) -> IExecutionContext:
            rec("engine.create_execution_context")
            return IExecutionContext(self)

        def create_engine_inspector(self) -> EngineInspector:
            return EngineInspector(self)

        def serialize(self) -> IHostMemory:
            return IHostMemory(PLAN_MAGIC + json.dumps(self.plan).encode())

    mod.ICudaEngine = ICudaEngine

    class Runtime:
        """``trt.Runtime(logger)``: ``deserialize_cuda_engine`` returns None for a plan it cannot load;
        ``engine_host_code_allowed`` for version-compatible plans (``py::class_<IRuntime>`` and
        ``runtime_deserialize_cuda_engine`` in NVIDIA/TensorRT v10.13.0 ``python/src/infer/pyCore.cpp``).
        """
        def __init__(self, logger: Any) -> None:
            object.__setattr__(self, "logger", logger)
            _use_logger(logger, "createInferRuntime")
            self.DLA_core = -1
            if at_least_8_6:
                self.engine_host_code_allowed = False
            rec("Runtime")

        def __setattr__(self, name: str, value: Any) -> None:
            # pybind11 objects take no new attributes: ``engine_host_code_allowed`` is bound from 8.6 only
            # (``py::class_<IRuntime>`` in NVIDIA/TensorRT v8.6.1 pyCore.cpp; absent at 8.5.3), so setting it on
            # 8.5 raises AttributeError
            if name == "engine_host_code_allowed" and not at_least_8_6:
                raise AttributeError(f"'tensorrt.tensorrt.Runtime' object has no attribute {name!r}")
            object.__setattr__(self, name, value)

        @property
        def num_DLA_cores(self) -> int:  # noqa: N802
            return num_dla_cores

        def deserialize_cuda_engine(self, data: Any) -> ICudaEngine | None:
            raw = bytes(memoryview(data)) if not isinstance(data, bytes) else data
            rec("runtime.deserialize_cuda_engine", len(raw), self.DLA_core)
            if not raw.startswith(PLAN_MAGIC):
                _error("Serialization assertion failed: magic tag does not match (not a TensorRT plan)")
                return None
            plan = json.loads(raw[len(PLAN_MAGIC):])
            built = tuple(int(x) for x in str(plan["version"]).split(".")[:3])
            # a version-compatible plan (8.6+) also loads on later releases; it carries the lean runtime as host
            # code, which the runtime refuses unless engine_host_code_allowed is set
            newer_ok = bool(plan.get("version_compatible")) and at_least_8_6 and vt >= built
            if plan["version"] != version and not newer_ok:
                _error(f"The engine plan file is not compatible with this version of TensorRT, "
                       f"expecting library version {version} got {plan['version']}")
                return None
            if plan.get("version_compatible") and not getattr(self, "engine_host_code_allowed", False):
                _error("Cannot deserialize a version-compatible engine that contains host code: "
                       "set IRuntime::setEngineHostCodeAllowed(true) for trusted plans")
                return None
            return ICudaEngine(plan)

    mod.Runtime = Runtime
    return mod


def install(monkeypatch: Any, version: str = "10.3.0", **kwargs: Any) -> types.ModuleType:
    """Make ``import tensorrt`` return a fresh fake for the rest of a test (pytest ``monkeypatch``)."""
    mod = make_fake_tensorrt(version, **kwargs)
    monkeypatch.setitem(sys.modules, "tensorrt", mod)
    return mod


def plan_info(plan: bytes) -> dict[str, Any]:
    """Decode a fake plan (what the fake builder recorded about the engine)."""
    raw = bytes(plan)
    if not raw.startswith(PLAN_MAGIC):
        raise ValueError("not a fake TensorRT plan")
    return json.loads(raw[len(PLAN_MAGIC):])


__all__ = ["PLAN_MAGIC", "install", "make_fake_tensorrt", "plan_info", "version_code"]
