"""INT8 for ONNX Runtime's CPU provider: a Q/DQ layout it fuses into integer kernels.

The TensorRT layout (:mod:`trtq.qdq`) puts Q/DQ only on the inputs of weighted ops; TensorRT fuses the
rest. ONNX Runtime's CPU provider fuses a node into an integer kernel only when *every* data input comes
from a DequantizeLinear and its output goes to a QuantizeLinear (its QDQ selectors, applied at graph
optimization level "basic" and above):

* ``DQ(x), DQ(w), DQ(b) -> Conv -> Q``            -> ``QLinearConv`` (u8 activations, s8 weights, i32 bias)
* ``DQ -> Sigmoid -> Q``                          -> ``com.microsoft.QLinearSigmoid`` (table lookup)
* ``DQ, DQ -> Add / Mul -> Q``                     -> ``com.microsoft.QLinearAdd`` / ``QLinearMul``
* ``DQ... -> Concat -> Q``                        -> ``com.microsoft.QLinearConcat``
* ``DQ -> MaxPool / Resize / Split / Slice / Reshape / Transpose -> Q`` with equal scale and zero point
  on both sides -> the op runs directly on the 8-bit tensor (Q/DQ dropped).

So this layout quantizes every activation tensor of the network body (a Q/DQ pair after each producer),
with its own asymmetric range; the ops that only move data share their input's quantization parameters.
Activations are u8 with an asymmetric zero point: ``q = clamp(round(x / S) + Z, 0, 255)`` with
``S = (hi - lo) / 255`` and ``Z = round(-lo / S)``; ``[lo, hi]`` is the tensor's signed range clipped to
``[-amax, amax]``, ``amax`` from the chosen range algorithm. u8 activations with s8 weights are what ONNX
Runtime's x86 kernels (AVX2, AVX512, AVX512-VNNI, AMX) and Arm kernels run natively. Weights are s8
symmetric per output channel, biases i32 with scale ``S_x * S_w[c]``.

The head policy is the same as for TensorRT: the head's final convs, DFL, decode, Sigmoid and output Concat
stay float. The report lists every node as an integer kernel or float, with the reason, and checks the
claim against the graph ONNX Runtime actually optimizes.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from trtq import __version__, onnxgraph
from trtq.cpuisa import (
    FULL8_KEY,
    ISA_LAYOUT,
    TARGET_CPU,
    TARGET_KEY,
    U8_MAX,
    WEIGHT_LAYOUTS,
    WEIGHTS_S7,
    WEIGHTS_S8,
    WEIGHTS_S8_DATA,
    WEIGHTS_S8_PAIR128,
    cpu_metadata,
    fit_grid,
    resolve_isa,
)
from trtq.errors import TrtqError
from trtq.fileio import atomic_path, default_output, write_json, write_text
from trtq.headpolicy import node_key
from trtq.modelinfo import model_sha256
from trtq.quantize_options import TARGET_TENSORRT, QuantizeOptions

logger = logging.getLogger(__name__)

# TARGET_KEY: the metadata key every trtq Q/DQ model carries (absent on older files: TensorRT)
CPU_SUFFIX = ".int8.cpu.onnx"

# ops the CPU provider runs on 8-bit tensors directly when the quantization parameters are the same on
# both sides (its "drop Q/DQ" rules)
PASS_THROUGH_OPS = frozenset({"MaxPool", "Resize", "Split", "Slice", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze"})
# op -> the integer kernel ONNX Runtime's CPU provider turns the Q/DQ node group into
INTEGER_KERNELS = {
    "Conv": "QLinearConv",
    "Sigmoid": "QLinearSigmoid",
    "Add": "QLinearAdd",
    "Mul": "QLinearMul",
    "Concat": "QLinearConcat",
    **{op: f"{op} (8-bit)" for op in PASS_THROUGH_OPS},
}
# integer ops as they appear in ONNX Runtime's optimized graph
_ORT_INT_OPS = frozenset({"QLinearConv", "QLinearSigmoid", "QLinearAdd", "QLinearMul", "QLinearConcat", "ConvInteger"})

REASON_NO_KERNEL = "no integer kernel for {op} in ONNX Runtime's CPU provider"
REASON_FLOAT_INPUT = "an input is float (not produced by an integer kernel)"
REASON_CONST_INPUT = "a constant input: the fused kernel needs every input quantized"
REASON_NO_WEIGHT = "weight is not a constant initializer"
REASON_GRAPH_OUTPUT = "its output is a model output"
REASON_SILU_FLOAT = "SiLU kept float (silu='float')"
REASON_EXCLUDED = "excluded by the user (--exclude)"

_LAYOUT_TEXT = {
    WEIGHTS_S8: "full 8 bits: exact where products accumulate in 32 bits (VNNI, Arm64)",
    WEIGHTS_S8_PAIR128: "per channel the finest 7 to 8-bit grid whose adjacent pairs have |w1|+|w2| <= 128: "
                        "no 16-bit saturation",
    WEIGHTS_S8_DATA: "per channel the finest 7 to 8-bit grid whose adjacent pairs, times the largest input codes "
                     "seen in calibration (with headroom), fit int16: no 16-bit saturation on that data",
    WEIGHTS_S7: "7 bits: no 16-bit saturation",
}
# s8-data: the calibrated per-channel maximum of a conv input is scaled by this before it becomes a code
# bound, for inputs brighter than the calibration images (README "Quantization math")
DATA_HEADROOM = 1.25


@dataclass
class CpuPlan:
    """Which nodes run as integer kernels and which tensors carry Q/DQ (names of the float model)."""

    # node -> integer kernel it becomes
    int_nodes: dict[str, str] = field(default_factory=dict)
    # node -> why it stays float
    float_nodes: dict[str, str] = field(default_factory=dict)
    # quantized tensor -> the tensor whose range gives its parameters (itself, or a pass-through op's input)
    tensors: dict[str, str] = field(default_factory=dict)
    # Conv weight initializer -> node
    weights: dict[str, str] = field(default_factory=dict)

    @property
    def range_tensors(self) -> list[str]:
        """Tensors that need statistics (the ones with their own range)."""
        return [t for t, src in self.tensors.items() if src == t]


def _silu_nodes(graph: onnx.GraphProto) -> set[str]:
    """Sigmoid and Mul nodes that form SiLU, x * Sigmoid(x)."""
    prod = {o: n for n in graph.node for o in n.output}
    result: set[str] = set()
    for n in graph.node:
        if n.op_type != "Mul" or len(n.input) != 2:
            continue
        for a, b in (n.input, n.input[::-1]):
            sig = prod.get(b)
            if sig is not None and sig.op_type == "Sigmoid" and sig.input[0] == a:
                result |= {node_key(n), node_key(sig)}
    return result


def plan_cpu(
    model: onnx.ModelProto,
    *,
    keep_float: Mapping[str, str] | None = None,
    exclude: Iterable[str] = (),
    silu: str = "int",
) -> CpuPlan:
    """Decide, in graph order, which nodes become integer kernels (no statistics needed)."""
    from trtq.qdq import match_nodes

    if silu not in ("int", "float"):
        raise ValueError(f"silu must be 'int' or 'float', got {silu!r}")
    graph = model.graph
    keep = dict(keep_float or {})
    for pattern, names in match_nodes(model, exclude).items():
        if not names:
            raise TrtqError(f"--exclude {pattern!r} matches no node of the model")
        for n in names:
            keep.setdefault(n, REASON_EXCLUDED)
    if silu == "float":
        for n in _silu_nodes(graph):
            keep.setdefault(n, REASON_SILU_FLOAT)
    inits = {i.name: i for i in graph.initializer}
    constants = set(inits) | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    graph_outputs = {o.name for o in graph.output}
    plan = CpuPlan()
    for node in graph.node:
        key = node_key(node)
        op = node.op_type
        if op == "Constant":
            continue
        if key in keep:
            plan.float_nodes[key] = keep[key]
            continue
        if op not in INTEGER_KERNELS:
            plan.float_nodes[key] = REASON_NO_KERNEL.format(op=op)
            continue
        if any(o in graph_outputs for o in node.output):
            plan.float_nodes[key] = REASON_GRAPH_OUTPUT
            continue
        data = node.input[0] if node.input else ""
        if op == "Conv":
            if len(node.input) < 2 or node.input[1] not in inits:
                plan.float_nodes[key] = REASON_NO_WEIGHT
                continue
            # the input gets its own Q/DQ when its producer is float (a graph input, a float node)
            plan.tensors.setdefault(data, data)
            plan.weights[key] = node.input[1]
        elif op in ("Add", "Mul", "Concat"):
            ins = [i for i in node.input if i]
            if any(i in constants for i in ins):
                plan.float_nodes[key] = REASON_CONST_INPUT
                continue
            if any(i not in plan.tensors for i in ins):
                plan.float_nodes[key] = REASON_FLOAT_INPUT
                continue
        elif data not in plan.tensors:  # Sigmoid and pass-through ops
            plan.float_nodes[key] = REASON_FLOAT_INPUT
            continue
        plan.int_nodes[key] = INTEGER_KERNELS[op]
        for out in node.output:
            if out:
                plan.tensors[out] = plan.tensors[data] if op in PASS_THROUGH_OPS else out
    return plan


@dataclass(frozen=True)
class QParams:
    """Per-tensor quantization parameters: x ~ (q - zero_point) * scale."""

    scale: float
    zero_point: int
    lo: float
    hi: float
    dtype: str  # "u8" or "s8"


def qparams(lo: float, hi: float, dtype: str = "u8") -> QParams:
    """Asymmetric 8-bit parameters for the range [lo, hi] (widened to contain 0, as ONNX requires)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo <= 1e-12:
        hi = lo + 1e-6
    scale = (hi - lo) / 255.0
    qmin = 0 if dtype == "u8" else -128
    zp = int(np.clip(np.rint(qmin - lo / scale), qmin, qmin + 255))
    return QParams(scale, zp, lo, hi, dtype)


def activation_ranges(
    histograms: Mapping[str, Any],
    amax: Mapping[str, float],
    tensors: Iterable[str],
) -> dict[str, tuple[float, float]]:
    """Signed range per tensor: the exact [min, max] clipped to [-amax, amax] of the range algorithm."""
    result: dict[str, tuple[float, float]] = {}
    for t in tensors:
        h = histograms[t]
        a = float(amax[t])
        mn = float(getattr(h, "min_value", -a))
        mx = float(getattr(h, "max_value", a))
        lo = max(mn, -a) if np.isfinite(mn) else -a
        hi = min(mx, a) if np.isfinite(mx) else a
        result[t] = (lo, hi)
    return result


def _np_dtype(dtype: str) -> type[np.integer[Any]]:
    return np.uint8 if dtype == "u8" else np.int8


def insert_cpu_qdq(
    model: onnx.ModelProto,
    plan: CpuPlan,
    params: Mapping[str, QParams],
    *,
    weights: str = WEIGHTS_S8,
    clipped_biases: list[str] | None = None,
    weight_codes: Mapping[str, np.ndarray] | None = None,
    grids: dict[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    """A copy of ``model`` with Q/DQ after every quantized tensor and quantized Conv weights and biases.

    ``params`` holds the parameters of every tensor in ``plan.range_tensors``. ``weights`` is the weight
    layout (:mod:`trtq.cpuisa`): ``s8`` full range; ``s8-pair128`` 8 bits with adjacent same-sign pairs
    limited so that x86 CPUs without VNNI (u8 x s8 products added pairwise in 16 bits) cannot saturate;
    ``s7`` 7 bits ([-63, 63]); ``s8-data`` as ``s8-pair128`` with each pair weighted by the largest u8
    codes of its input channels, ``weight_codes`` (weight initializer -> per-input-channel codes, see
    :func:`weight_input_codes`). Biases whose i32 code does not fit are clipped and named in
    ``clipped_biases``. ``grids``, when given, receives per weight the ``qmax`` of each output channel.
    """
    if weights not in WEIGHT_LAYOUTS:
        raise ValueError(f"unknown weight layout {weights!r}")
    wmax = 63.0 if weights == WEIGHTS_S7 else 127.0
    q = onnx.ModelProto()
    q.CopyFrom(model)
    graph = q.graph
    inits = {i.name: i for i in graph.initializer}
    new_inits: list[onnx.TensorProto] = []
    new_nodes: dict[int, list[onnx.NodeProto]] = {}  # insert after position (-1: before every node)
    producer_pos = {o: i for i, n in enumerate(graph.node) for o in n.output}

    def scalar(name: str, value: Any, dtype: Any) -> str:
        new_inits.append(numpy_helper.from_array(np.array(value, dtype=dtype), name))
        return name

    dq_name: dict[str, str] = {}
    for t, src in plan.tensors.items():
        p = params[src]
        s = scalar(f"{t}_scale", p.scale, np.float32)
        z = scalar(f"{t}_zero_point", p.zero_point, _np_dtype(p.dtype))
        qn = helper.make_node("QuantizeLinear", [t, s, z], [f"{t}_quantized"], name=f"{t}_QuantizeLinear")
        dqn = helper.make_node("DequantizeLinear", [f"{t}_quantized", s, z], [f"{t}_dequantized"], name=f"{t}_DequantizeLinear")
        new_nodes.setdefault(producer_pos.get(t, -1), []).extend([qn, dqn])
        dq_name[t] = f"{t}_dequantized"

    # weights (s8 symmetric per output channel) and biases (i32, scale S_x * S_w)
    conv_of = {node_key(n): n for n in graph.node if n.op_type == "Conv"}
    weight_scale: dict[str, np.ndarray] = {}  # an initializer shared by several convs is quantized once
    emitted: set[str] = set()
    for n_conv, (key, w) in enumerate(plan.weights.items()):
        node = conv_of[key]
        pos = producer_pos.get(node.output[0], -1) - 1  # just before the Conv (it is its own producer)
        if w not in weight_scale:
            arr = numpy_helper.to_array(inits[w]).astype(np.float32)
            if weights in (WEIGHTS_S8_PAIR128, WEIGHTS_S8_DATA):
                codes = (weight_codes or {}).get(w) if weights == WEIGHTS_S8_DATA else None
                wq, w_scale, qmax = fit_grid(arr, codes=codes)
            else:
                amax_c = np.max(np.abs(arr.reshape(arr.shape[0], -1)), axis=1)
                w_scale = np.where(amax_c > 0, amax_c / wmax, 1.0).astype(np.float32)
                wq = np.clip(np.rint(arr / w_scale.reshape(-1, *([1] * (arr.ndim - 1)))), -wmax, wmax).astype(np.int8)
                qmax = np.full(arr.shape[0], int(wmax), np.int64)
            if grids is not None:
                grids[w] = qmax
            new_inits.append(numpy_helper.from_array(wq, f"{w}_quantized"))
            new_inits.append(numpy_helper.from_array(w_scale, f"{w}_scale"))
            new_inits.append(numpy_helper.from_array(np.zeros(wq.shape[0], np.int8), f"{w}_zero_point"))
            dqw = helper.make_node(
                "DequantizeLinear", [f"{w}_quantized", f"{w}_scale", f"{w}_zero_point"], [f"{w}_dequantized"],
                name=f"{w}_DequantizeLinear", axis=0,
            )
            new_nodes.setdefault(pos, []).append(dqw)
            weight_scale[w] = w_scale
        w_scale = weight_scale[w]
        node.input[1] = f"{w}_dequantized"
        if len(node.input) > 2 and node.input[2] in inits:
            b = node.input[2]
            # the bias scale is S_x * S_w of this conv: a bias shared by several convs gets one copy each
            bname = b if b not in emitted else f"{b}_conv{n_conv}"
            emitted.add(b)
            x_scale = params[plan.tensors[node.input[0]]].scale
            b_scale = (w_scale.astype(np.float64) * x_scale).astype(np.float32)
            bq = np.rint(numpy_helper.to_array(inits[b]).astype(np.float64) / b_scale).astype(np.int64)
            if clipped_biases is not None and np.any((bq < -(2**31)) | (bq > 2**31 - 1)):
                clipped_biases.append(key)
            bq = np.clip(bq, -(2**31), 2**31 - 1).astype(np.int32)
            new_inits.append(numpy_helper.from_array(bq, f"{bname}_quantized"))
            new_inits.append(numpy_helper.from_array(b_scale, f"{bname}_scale"))
            new_inits.append(numpy_helper.from_array(np.zeros(bq.shape, np.int32), f"{bname}_zero_point"))
            dqb = helper.make_node(
                "DequantizeLinear", [f"{bname}_quantized", f"{bname}_scale", f"{bname}_zero_point"],
                [f"{bname}_dequantized"], name=f"{bname}_DequantizeLinear", axis=0,
            )
            new_nodes.setdefault(pos, []).append(dqb)
            node.input[2] = f"{bname}_dequantized"

    # every reader of a quantized tensor (except its own Q) reads the dequantized copy
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in dq_name:
                node.input[i] = dq_name[name]
    ordered: list[onnx.NodeProto] = list(new_nodes.get(-1, []))
    for i, node in enumerate(graph.node):
        ordered.append(node)
        ordered.extend(new_nodes.get(i, []))
    del graph.node[:]
    graph.node.extend(ordered)
    used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    for opset in q.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < 13:
            opset.version = 13
    return q


def max_codes(channel_max: np.ndarray, p: QParams, headroom: float = DATA_HEADROOM) -> np.ndarray:
    """The largest u8 code each channel of a tensor with parameters ``p`` carries, from the channel's
    largest value scaled by ``headroom`` (codes ``round(x / S) + Z``, capped at 255). Never below ``Z``:
    the code of 0, which convolution padding inserts, and what a channel that stays negative stays under."""
    if p.dtype != "u8":  # the u8 x s8 analysis does not apply: assume the worst
        return np.full(np.asarray(channel_max).shape, U8_MAX, np.int64)
    x = np.where(np.isfinite(channel_max), np.maximum(channel_max, 0.0), 0.0) * headroom
    codes = np.rint(x.astype(np.float64) / p.scale) + p.zero_point
    return np.clip(codes, p.zero_point, U8_MAX).astype(np.int64)


def weight_input_codes(
    model: onnx.ModelProto,
    plan: CpuPlan,
    params: Mapping[str, QParams],
    channel_max: Mapping[str, np.ndarray],
    headroom: float = DATA_HEADROOM,
) -> dict[str, np.ndarray]:
    """Per quantized conv weight, the largest u8 code of each input channel of the conv (the largest over
    the convs that share the weight): what the ``s8-data`` layout bounds its pair sums with."""
    conv_of = {node_key(n): n for n in model.graph.node if n.op_type == "Conv"}
    result: dict[str, np.ndarray] = {}
    for key, w in plan.weights.items():
        x = conv_of[key].input[0]
        codes = max_codes(channel_max[x], params[plan.tensors[x]], headroom)
        result[w] = codes if w not in result else np.maximum(result[w], codes)
    return result


def conv_inputs(model: onnx.ModelProto, plan: CpuPlan) -> list[str]:
    """The data inputs of the quantized convs of ``plan``."""
    conv_of = {node_key(n): n for n in model.graph.node if n.op_type == "Conv"}
    return list(dict.fromkeys(conv_of[k].input[0] for k in plan.weights))


def _is_integer(op: str) -> bool:
    return op in _ORT_INT_OPS or op.endswith("(8-bit)")


def ort_optimized_ops(model_path: str | os.PathLike[str], *, threads: int = 1) -> Counter[str]:
    """Op counts of the graph ONNX Runtime's CPU provider actually runs (after its QDQ fusions)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="trtq-ort-") as tmp:
        out = Path(tmp) / "optimized.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(out)
        so.intra_op_num_threads = threads
        ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        m = onnx.load(str(out))
    # ops that only move data count as 8-bit when they read an 8-bit tensor ("MaxPool (8-bit)")
    eight_bit: set[str] = set()
    ops: Counter[str] = Counter()
    for n in m.graph.node:
        op = n.op_type
        if op == "QuantizeLinear" or op in _ORT_INT_OPS:
            eight_bit.update(n.output)
        elif op in PASS_THROUGH_OPS and n.input and n.input[0] in eight_bit:
            eight_bit.update(n.output)
            op = f"{op} (8-bit)"
        ops[op] += 1
    return ops


@dataclass
class CpuQuantizeResult:
    path: Path
    report: dict[str, Any]
    report_path: Path
    markdown_path: Path
    plan: CpuPlan
    seconds: float = 0.0

    def summary(self) -> str:
        c = self.report["counts"]
        k = self.report["ort_kernels"]
        o = self.report["options"]
        return "\n".join(
            [
                f"wrote {self.path} (target cpu: {c['integer_nodes']} integer kernels, {c['float_nodes']} nodes float; "
                f"{c['quantized_convs']} of {c['convs']} convs INT8)",
                f"CPU ISA {o['cpu_isa']} ({o['cpu_isa_reason']}): weights {o['weights']} ({_LAYOUT_TEXT[o['weights']]}; "
                f"{o['weights_8bit_channels']} conv channels full 8-bit)",
                "ONNX Runtime CPU runs: " + ", ".join(f"{v} {op}" for op, v in sorted(k.items())),
                f"report {self.report_path} and {self.markdown_path}",
            ]
        )


def _report(
    *,
    model_path: Path,
    output: Path,
    model: onnx.ModelProto,
    plan: CpuPlan,
    params: Mapping[str, QParams],
    algo: str,
    chosen: Mapping[str, str],
    percentile: float | None,
    options: Mapping[str, Any],
    calibration: Mapping[str, Any],
    ort_ops: Mapping[str, int],
) -> dict[str, Any]:
    op_of = {node_key(n): n.op_type for n in model.graph.node}
    convs = [k for k, op in op_of.items() if op == "Conv"]
    by_kernel = Counter(plan.int_nodes.values())
    acts = [
        {
            "tensor": t,
            "shares_range_of": None if src == t else src,
            "scale": params[src].scale,
            "zero_point": params[src].zero_point,
            "lo": params[src].lo,
            "hi": params[src].hi,
            "algorithm": chosen.get(src, algo),
        }
        for t, src in plan.tensors.items()
    ]
    return {
        "kind": "trtq-cpu-int8-report",
        "target": TARGET_CPU,
        "trtq_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": str(model_path),
        "model_sha256": model_sha256(model_path),
        "output": str(output),
        "algorithm": algo,
        "percentile": percentile,
        "options": dict(options),
        "calibration": dict(calibration),
        "counts": {
            "integer_nodes": len(plan.int_nodes),
            "float_nodes": len(plan.float_nodes),
            "convs": len(convs),
            "quantized_convs": len(plan.weights),
            "quantized_tensors": len(plan.tensors),
            "by_kernel": dict(by_kernel),
        },
        "ort_kernels": {k: int(v) for k, v in ort_ops.items() if _is_integer(k)},
        "ort_float_ops": {k: int(v) for k, v in ort_ops.items() if not _is_integer(k) and "QuantizeLinear" not in k},
        "ort_conversions": {k: int(v) for k, v in ort_ops.items() if k in ("QuantizeLinear", "DequantizeLinear")},
        "integer_nodes": [{"node": n, "op_type": op_of.get(n, "?"), "kernel": k} for n, k in plan.int_nodes.items()],
        "float_nodes": [{"node": n, "op_type": op_of.get(n, "?"), "reason": r} for n, r in plan.float_nodes.items()],
        "quantized_activations": acts,
    }


def _markdown(r: Mapping[str, Any]) -> str:
    c = r["counts"]
    lines = [
        f"# INT8 report (target cpu, ONNX Runtime CPU provider): {Path(r['output']).name}",
        "",
        f"- model: `{r['model']}` (sha256 {r['model_sha256'][:12]})",
        f"- algorithm: {r['algorithm']}" + (f" (percentile {r['percentile']})" if r["percentile"] is not None else ""),
        f"- calibration: {r['calibration'].get('num_images', '?')} images from `{r['calibration'].get('source', '?')}`",
        "- options: " + ", ".join(f"{k}={v}" for k, v in r["options"].items()),
        f"- {c['quantized_convs']} of {c['convs']} convs INT8; {c['integer_nodes']} nodes as integer kernels, "
        f"{c['float_nodes']} float; {c['quantized_tensors']} activation tensors quantized (u8/s8 per tensor, "
        "asymmetric zero point), weights s8 per output channel, biases i32",
        "- ONNX Runtime's optimized graph runs: " + ", ".join(f"{v} {k}" for k, v in sorted(r["ort_kernels"].items()))
        + "; float: " + ", ".join(f"{v} {k}" for k, v in sorted(r["ort_float_ops"].items()))
        + "; float/8-bit conversions: " + ", ".join(f"{v} {k}" for k, v in sorted(r["ort_conversions"].items())),
        "",
        "## Nodes kept in float",
        "",
        "| node | op | reason |",
        "|---|---|---|",
    ]
    for f in r["float_nodes"]:
        lines.append(f"| `{f['node']}` | {f['op_type']} | {f['reason']} |")
    lines += ["", "## Integer kernels", "", "| node | op | kernel |", "|---|---|---|"]
    for n in r["integer_nodes"]:
        lines.append(f"| `{n['node']}` | {n['op_type']} | {n['kernel']} |")
    lines += ["", "## Quantized activations", "", "| tensor | range [lo, hi] | scale | zero point | algorithm |", "|---|---|---:|---:|---|"]
    for a in r["quantized_activations"]:
        rng = f"[{a['lo']:.4g}, {a['hi']:.4g}]" + (f" (of `{a['shares_range_of']}`)" if a["shares_range_of"] else "")
        lines.append(f"| `{a['tensor']}` | {rng} | {a['scale']:.5g} | {a['zero_point']} | {a['algorithm']} |")
    return "\n".join(lines) + "\n"


def quantize_cpu(
    model: str | os.PathLike[str],
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None,
    options: QuantizeOptions | None = None,
    *,
    output: str | os.PathLike[str] | None = None,
    histograms: Mapping[str, Any] | None = None,
) -> CpuQuantizeResult:
    """Calibrate ``model`` on ``source`` and write an INT8 ONNX laid out for ONNX Runtime's CPU provider.

    ``options`` (:class:`QuantizeOptions` with target cpu; default: all defaults): its ``cpu_isa``
    (``auto``: this CPU) picks the weight layout that cannot saturate that CPU's integer kernels
    (:data:`trtq.cpuisa.ISA_LAYOUT`); ``reduce_range`` forces 7-bit weights on any ISA. ``histograms``
    skip the image pass.
    """
    from trtq.amax import activation_amax, calibration_record, collect_statistics
    from trtq.headpolicy import float_nodes as head_float_nodes
    from trtq.quantize import _resolve_model, _set_metadata, report_paths

    t0 = time.perf_counter()
    opts = options if options is not None else QuantizeOptions(target=TARGET_CPU)
    opts.validate()
    if opts.target != TARGET_CPU:
        raise TrtqError(f"these options are for --target {opts.target}: quantize them with trtq.quantize.quantize")
    algo, percentile, exclude, head_policy = opts.algorithm, opts.percentile, opts.exclude, opts.head_policy
    num_images, batch, seed, progress = opts.num_images, opts.batch, opts.seed, opts.progress
    activations, silu, reduce_range, cpu_isa = opts.activations, opts.silu, opts.reduce_range, opts.cpu_isa
    isa = resolve_isa(cpu_isa)
    layout = WEIGHTS_S7 if reduce_range else ISA_LAYOUT[isa.isa]
    mpath = _resolve_model(model)
    fmodel = onnx.load(str(mpath))
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv") for n in fmodel.graph.node):
        raise TrtqError(f"{mpath.name} is already quantized; quantize the FP32 ONNX it was made from")
    from trtq.modelinfo import check_model, read_model_info
    from trtq.qdq import ensure_opset

    check_model(read_model_info(mpath, with_hash=False))  # refuses what trtq cannot decode before any work
    fmodel = ensure_opset(fmodel)  # opset 11-12: upgraded with onnx's version converter (tensor names kept)
    from trtq.precision import as_float32

    fmodel = as_float32(fmodel)  # an FP16 model runs in float32 + int8 here: the CPU provider's kernels
    onnxgraph.topological_sort(fmodel.graph)
    keep = dict(head_float_nodes(fmodel)) if head_policy else {}
    plan = plan_cpu(fmodel, keep_float=keep, exclude=exclude, silu=silu)
    tensors = plan.range_tensors
    graph_inputs = [i.name for i in fmodel.graph.input]
    calibration: dict[str, Any]
    batcher: Any = None
    if layout == WEIGHTS_S8_DATA and source is None:
        logger.warning("no calibration images to bound the input codes of the %s layout: weights %s instead",
                       WEIGHTS_S8_DATA, WEIGHTS_S8_PAIR128)
        layout = WEIGHTS_S8_PAIR128
    if histograms is None:
        if source is None:
            raise TrtqError("quantize needs calibration images: pass --calib DIR")
        histograms, batcher = collect_statistics(
            mpath, source, tensors, num_images=num_images, batch=batch, seed=seed, progress=progress, fused_silu=False
        )
        calibration = calibration_record(source, batcher, seed)
    else:
        calibration = {"source": str(source) if source is not None else "precomputed histograms"}
    amax, chosen = activation_amax(histograms, tensors, algo, percentile=percentile, graph_inputs=graph_inputs)
    ranges = activation_ranges(histograms, amax, tensors)
    params = {t: qparams(lo, hi, activations) for t, (lo, hi) in ranges.items()}
    codes = None
    if layout == WEIGHTS_S8_DATA:
        assert source is not None
        codes = _data_codes(mpath, fmodel, plan, params, source, batcher, num_images=num_images, batch=batch, seed=seed)
    clipped: list[str] = []
    grids: dict[str, np.ndarray] = {}
    qmodel = insert_cpu_qdq(fmodel, plan, params, weights=layout, clipped_biases=clipped, weight_codes=codes,
                            grids=grids)
    full8 = f"{sum(int((g == 127).sum()) for g in grids.values())} of {sum(g.size for g in grids.values())}"
    if clipped:
        logger.warning("%d conv biases do not fit int32 at scale S_x * S_w and were clipped (first: %s): those "
                       "channels' outputs change; keep the convs in float with --exclude", len(clipped), clipped[0])
    out = Path(output) if output is not None else default_output(mpath, CPU_SUFFIX)
    _set_metadata(
        qmodel,
        {
            "trtq_quantization": "int8-qdq",
            TARGET_KEY: TARGET_CPU,
            "trtq_algorithm": algo,
            "trtq_version": __version__,
            **cpu_metadata(isa, layout),
            FULL8_KEY: full8,
        },
    )
    onnxgraph.topological_sort(qmodel.graph)  # converters may leave nodes after their readers
    try:
        onnx.checker.check_model(qmodel)
    except onnx.checker.ValidationError as exc:  # a bug in trtq, not a user error
        raise RuntimeError(f"the CPU INT8 model does not pass onnx.checker: {str(exc).splitlines()[0]}") from exc
    with atomic_path(out, suffix=".onnx") as tmp:
        onnx.save(qmodel, str(tmp))
        ort_ops = ort_optimized_ops(tmp)
    recorded = {
        "head_policy": head_policy,
        "activations": activations,
        "silu": silu,
        "weight_bits": 7 if layout == WEIGHTS_S7 else 8,
        "weights": layout,
        "weights_8bit_channels": full8,
        **({"weights_headroom": DATA_HEADROOM} if layout == WEIGHTS_S8_DATA else {}),
        "cpu_isa": isa.isa,
        "cpu_isa_reason": isa.reason,
        "clipped_biases": clipped,
        "exclude": list(exclude),
    }
    report = _report(
        model_path=mpath,
        output=out,
        model=fmodel,
        plan=plan,
        params=params,
        algo=algo,
        chosen=chosen,
        percentile=percentile if algo in ("percentile", "auto") else None,
        options=recorded,
        calibration=calibration,
        ort_ops=ort_ops,
    )
    fused = ort_ops.get("QLinearConv", 0) + ort_ops.get("ConvInteger", 0)
    if fused < len(plan.weights):
        logger.warning("ONNX Runtime fused only %d of %d quantized convs into integer kernels", fused, len(plan.weights))
    json_path, md_path = report_paths(out)
    write_json(json_path, report)
    write_text(md_path, _markdown(report))
    result = CpuQuantizeResult(out, report, json_path, md_path, plan, time.perf_counter() - t0)
    logger.info("quantized %s for the CPU in %.1f s", mpath.name, result.seconds)
    return result


def _data_codes(
    mpath: Path,
    fmodel: onnx.ModelProto,
    plan: CpuPlan,
    params: Mapping[str, QParams],
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    batcher: Any,
    *,
    num_images: int | None,
    batch: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Per conv weight, the largest u8 input codes on the calibration images (one more float pass)."""
    from trtq.amax import calibration_batcher, channel_maxima

    if batcher is None:
        batcher = calibration_batcher(mpath, source, num_images=num_images, batch=batch, seed=seed)
    t0 = time.perf_counter()
    chmax = channel_maxima(mpath, batcher, conv_inputs(fmodel, plan))
    logger.info("per-channel maxima of %d conv inputs in %.1f s", len(chmax), time.perf_counter() - t0)
    return weight_input_codes(fmodel, plan, params, chmax, DATA_HEADROOM)


def model_target(model: str | os.PathLike[str] | onnx.ModelProto) -> str | None:
    """The target a trtq INT8 ONNX was made for ('cpu', 'tensorrt'), or None for a model trtq did not quantize."""
    if isinstance(model, onnx.ModelProto):
        m = model
    else:
        try:
            m = onnx.load(str(model), load_external_data=False)
        except Exception:  # noqa: BLE001 - not an ONNX file: nothing to say about its target
            return None
    meta = {p.key: p.value for p in m.metadata_props}
    if TARGET_KEY in meta:
        return meta[TARGET_KEY]
    return TARGET_TENSORRT if meta.get("trtq_quantization") == "int8-qdq" else None
