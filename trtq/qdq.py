"""Q/DQ placement and graph rewriting for explicit INT8 quantization.

Placement (see the project's qdq-placement notes): INT8 symmetric (zero point 0), weights per output
channel, activations per tensor. QuantizeLinear/DequantizeLinear pairs go on

* every input of a weighted op (Conv, ConvTranspose, Gemm, MatMul): activation per tensor, weight per
  channel (stored as INT8 initializer -> DequantizeLinear),
* the shortcut input of a residual Add (the input that does not come from the conv TensorRT fuses the Add
  into), so that Conv + Add runs as one INT8 kernel,

and nowhere else: no Q/DQ after weighted ops, around activations, or in the nodes the head policy keeps in
float. Quantized tensors that meet at a Concat (through ops that commute with quantization) share one
scale, the largest amax of the group, so TensorRT does not requantize at the Concat.

:func:`plan_qdq` decides where Q/DQ goes (no statistics needed), :func:`insert_qdq` writes the pairs for a
given ``{tensor: amax}``. Both are pure functions of the model.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from calibrators.ranges import QMAX  # symmetric INT8: q in [-127, 127] (TensorRT never uses -128)
from trtq import onnxgraph
from trtq.errors import TrtqError
from trtq.headpolicy import WEIGHTED_OPS, node_key

logger = logging.getLogger(__name__)

MIN_OPSET = 13  # per-channel DequantizeLinear (axis) needs opset 13
# Single-input ops that commute with per-tensor quantization: TensorRT moves Q/DQ across them.
COMMUTING_OPS = frozenset(
    {"MaxPool", "Resize", "Upsample", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Split", "Identity"}
)
# Element-wise activations TensorRT fuses into the producing weighted op.
_FUSABLE_ACTS = frozenset({"Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Clip", "Tanh", "Elu", "Selu"})

REASON_EXCLUDED = "excluded by the user (--exclude)"
REASON_NOT_CONSTANT_WEIGHT = "weight is not a constant initializer"
REASON_SHARED_WEIGHT_AXIS = "weight shared with {node}, which quantizes it along another channel axis"


@dataclass
class QdqPlan:
    """Where Q/DQ goes. Tensor names refer to the float model."""

    # activation tensor -> names of the nodes that read it through Q/DQ
    activations: dict[str, list[str]] = field(default_factory=dict)
    # weight initializer -> (first node that reads it, channel axis)
    weights: dict[str, tuple[str, int]] = field(default_factory=dict)
    # weight initializer -> every node that reads it through its DequantizeLinear (a shared weight has several)
    weight_readers: dict[str, list[str]] = field(default_factory=dict)
    # node name -> why it keeps float inputs (head policy, exclusions, unsupported weights)
    float_nodes: dict[str, str] = field(default_factory=dict)
    # residual Add node -> the input tensor quantized on it (the shortcut)
    residual_adds: dict[str, str] = field(default_factory=dict)
    # groups of quantized tensors that meet at a Concat (share one scale when unified)
    concat_groups: list[list[str]] = field(default_factory=list)

    @property
    def activation_tensors(self) -> list[str]:
        return list(self.activations)


def _initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {init.name: init for init in graph.initializer}


def match_nodes(model: onnx.ModelProto, patterns: Iterable[str]) -> dict[str, list[str]]:
    """Pattern -> matching node names (exact name, or an fnmatch pattern such as ``/model.22/*``)."""
    names = [node_key(n) for n in model.graph.node]
    result: dict[str, list[str]] = {}
    for pattern in patterns:
        exact = [n for n in names if n == pattern]
        result[pattern] = exact or [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return result


def _weight_axis(node: onnx.NodeProto, weight_index: int, weight: onnx.TensorProto) -> int:
    """Output-channel axis of a weight: 0 for Conv, 1 for ConvTranspose, Gemm by transA/transB; MatMul: the
    last axis (N) of a constant right operand [.., K, N], the second to last (M) of a constant left one
    [.., M, K]."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        if weight_index == 1:
            return 0 if trans_b else 1
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        return 1 if trans_a else 0
    # MatMul: a constant B [.., K, N] has its outputs along the last axis, a constant A [.., M, K] along M
    if len(weight.dims) < 2:
        return 0  # a vector: quantized per tensor
    return len(weight.dims) - 1 if weight_index == 1 else len(weight.dims) - 2


def _fused_weighted_op(
    tensor: str, producers: Mapping[str, onnx.NodeProto], consumers: Mapping[str, list[onnx.NodeProto]]
) -> int | None:
    """Depth of the weighted op ``tensor`` comes from through fusable activations, else None.

    Only chains whose intermediate tensors feed nothing else qualify: those are what TensorRT fuses into a
    single Conv(+activation)(+Add) kernel.
    """
    t = tensor
    for depth in range(6):
        prod = producers.get(t)
        if prod is None:
            return None
        if prod.op_type in WEIGHTED_OPS:
            return depth
        if prod.op_type in _FUSABLE_ACTS and prod.input:
            t = prod.input[0]
            continue
        if prod.op_type == "Mul" and len(prod.input) == 2:  # SiLU: x * Sigmoid(x)
            a, b = prod.input
            pa, pb = producers.get(a), producers.get(b)
            if pb is not None and pb.op_type == "Sigmoid" and pb.input and pb.input[0] == a:
                users = {node_key(u) for u in consumers.get(a, [])}
                if users <= {node_key(prod), node_key(pb)}:
                    t = a
                    continue
            if pa is not None and pa.op_type == "Sigmoid" and pa.input and pa.input[0] == b:
                users = {node_key(u) for u in consumers.get(b, [])}
                if users <= {node_key(prod), node_key(pa)}:
                    t = b
                    continue
        return None
    return None


def plan_qdq(
    model: onnx.ModelProto,
    *,
    keep_float: Mapping[str, str] | None = None,
    exclude: Iterable[str] = (),
    residual_add: bool = True,
) -> QdqPlan:
    """Decide where Q/DQ pairs go.

    ``keep_float`` maps node names to the reason they stay float (the head policy's output);
    ``exclude`` holds node names or fnmatch patterns the user keeps in float (an unknown name is an error).
    """
    graph = model.graph
    inits = _initializers(graph)
    constants = onnxgraph.constant_names(graph)
    producers = onnxgraph.producers(graph)
    consumers = onnxgraph.consumers(graph)

    plan = QdqPlan()
    plan.float_nodes.update(keep_float or {})
    excluded = match_nodes(model, exclude)
    missing = [p for p, hits in excluded.items() if not hits]
    if missing:
        raise TrtqError(
            f"--exclude {missing[0]!r} matches no node of the model; pass a node name (see the quantization report) "
            "or a pattern such as '/model.22/*'"
        )
    for hits in excluded.values():
        for name in hits:
            plan.float_nodes.setdefault(name, REASON_EXCLUDED)

    def want(tensor: str, node: onnx.NodeProto) -> None:
        users = plan.activations.setdefault(tensor, [])
        if node_key(node) not in users:
            users.append(node_key(node))

    for node in graph.node:
        key = node_key(node)
        if node.op_type in WEIGHTED_OPS:
            if key in plan.float_nodes:
                continue
            weight_index = 1
            if node.op_type == "Gemm" or node.op_type == "MatMul":
                # the constant operand is the weight; the other one the activation
                weight_index = 1 if len(node.input) > 1 and node.input[1] in inits else 0
            if len(node.input) < 2 or node.input[weight_index] not in inits:
                plan.float_nodes[key] = REASON_NOT_CONSTANT_WEIGHT
                continue
            data = node.input[1 - weight_index]
            weight = node.input[weight_index]
            axis = _weight_axis(node, weight_index, inits[weight])
            owner, owner_axis = plan.weights.setdefault(weight, (key, axis))
            if owner_axis != axis:  # one initializer, one Q/DQ: it cannot be per channel along two axes
                plan.float_nodes[key] = REASON_SHARED_WEIGHT_AXIS.format(node=owner)
                continue
            plan.weight_readers.setdefault(weight, []).append(key)
            if data not in constants:
                want(data, node)
        elif node.op_type == "Add" and residual_add and key not in plan.float_nodes:
            ins = [i for i in node.input if i]
            if len(ins) != 2 or any(i in constants for i in ins):
                continue
            depth = [_fused_weighted_op(i, producers, consumers) for i in ins]
            if depth[0] is None and depth[1] is None:
                continue  # not a Conv + Add pattern: TensorRT runs it as a plain element-wise layer
            if depth[0] is not None and depth[1] is not None:
                # both could fuse: TensorRT fuses the Add into the later conv; the other one is the shortcut
                order = {node_key(n): i for i, n in enumerate(graph.node)}
                p0, p1 = producers[ins[0]], producers[ins[1]]
                shortcut = ins[0] if order[node_key(p0)] < order[node_key(p1)] else ins[1]
            else:
                shortcut = ins[0] if depth[0] is None else ins[1]
            want(shortcut, node)
            plan.residual_adds[key] = shortcut

    plan.concat_groups = _concat_groups(graph, plan, producers)
    return plan


def _concat_groups(graph: onnx.GraphProto, plan: QdqPlan, producers: Mapping[str, onnx.NodeProto]) -> list[list[str]]:
    """Quantized tensors that meet at a Concat, directly or through ops that commute with quantization."""
    quantized = set(plan.activations)
    parent: dict[str, str] = {t: t for t in quantized}

    def find(t: str) -> str:
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    def members_behind(tensor: str) -> list[str]:
        found: list[str] = []
        t = tensor
        for _ in range(16):
            if t in quantized:
                found.append(t)
            prod = producers.get(t)
            if prod is None or prod.op_type not in COMMUTING_OPS or not prod.input:
                break
            t = prod.input[0]
        return found

    for node in graph.node:
        if node.op_type != "Concat" or node_key(node) in plan.float_nodes:
            continue
        members: list[str] = []
        for out in node.output:
            if out in quantized:
                members.append(out)
        if not members:
            continue  # the Concat's output is never read quantized: nothing to requantize
        for name in node.input:
            members.extend(members_behind(name))
        for m in members[1:]:
            ra, rb = find(members[0]), find(m)
            if ra != rb:
                parent[rb] = ra
    groups: dict[str, list[str]] = {}
    for t in plan.activations:
        groups.setdefault(find(t), []).append(t)
    return [g for g in groups.values() if len(g) > 1]


def unify_amax(
    amax: Mapping[str, float], groups: Iterable[Iterable[str]], *, max_ratio: float | None = None
) -> dict[str, float]:
    """Give every tensor of a group the group's largest amax.

    With ``max_ratio`` a group whose largest amax exceeds ``max_ratio`` times its smallest keeps its
    own ranges (a shared scale would cost the small-range tensors that much resolution).
    """
    out = dict(amax)
    for group in groups:
        members = [t for t in group if t in out]
        if len(members) < 2:
            continue
        top = max(out[t] for t in members)
        low = min(out[t] for t in members)
        if max_ratio is not None and low > 0 and top / low > max_ratio:
            continue
        for t in members:
            out[t] = top
    return out


def quantize_weight(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric INT8 quantization of a weight: per channel along ``axis`` (None: per tensor).

    Returns ``(q int8, scale float32)``; ``scale`` has one entry per channel (a scalar array for per
    tensor). ``amax_c = max|w_c|``; an all-zero channel gets scale 1/127 so nothing divides by zero.
    """
    w = np.asarray(w, dtype=np.float32)
    if axis is None:
        amax = np.array(float(np.max(np.abs(w))) if w.size else 0.0, dtype=np.float32)
        bshape: tuple[int, ...] = ()
    else:
        axis = axis % w.ndim
        reduce_axes = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.max(np.abs(w), axis=reduce_axes).astype(np.float32) if w.size else np.zeros(w.shape[axis], np.float32)
        bshape = tuple(w.shape[i] if i == axis else 1 for i in range(w.ndim))
    amax = np.where(amax > 0, amax, np.float32(1.0)).astype(np.float32)
    scale = (amax / np.float32(QMAX)).astype(np.float32)
    q = np.clip(np.rint(w / scale.reshape(bshape)), -QMAX, QMAX).astype(np.int8)
    return q, scale


def dequantize_weight(q: np.ndarray, scale: np.ndarray, axis: int | None) -> np.ndarray:
    if axis is None or scale.ndim == 0:
        return q.astype(np.float32) * scale.astype(np.float32)
    axis = axis % q.ndim
    bshape = tuple(q.shape[i] if i == axis else 1 for i in range(q.ndim))
    return q.astype(np.float32) * scale.reshape(bshape).astype(np.float32)


def ensure_opset(model: onnx.ModelProto, minimum: int = MIN_OPSET) -> onnx.ModelProto:
    """Return ``model`` at opset >= ``minimum`` (converted with onnx's version converter if older)."""
    current = onnxgraph.default_opset(model)
    if current >= minimum:
        return model
    from onnx import version_converter

    logger.info("upgrading the model from opset %d to %d for its Q/DQ nodes", current, minimum)
    try:
        return version_converter.convert_version(model, minimum)
    except Exception as exc:  # the converter raises bare RuntimeErrors for unsupported ops
        raise TrtqError(
            f"could not upgrade the model from opset {current} to {minimum} ({str(exc).splitlines()[0][:120]}); "
            f"re-export it with `trtq export --opset 17`"
        ) from None


def insert_qdq(
    model: onnx.ModelProto,
    plan: QdqPlan,
    amax: Mapping[str, float],
    *,
    per_channel: bool = True,
    unify_concat: bool = True,
    unify_max_ratio: float | None = None,
    int8_weights: bool = False,
) -> tuple[onnx.ModelProto, dict[str, float]]:
    """Write Q/DQ pairs into a copy of ``model``; return it and the activation amax actually used.

    ``amax`` must hold every tensor of ``plan.activations``. With ``unify_concat`` the tensors of each
    Concat group share the group's largest amax (only groups whose ranges differ by at most
    ``unify_max_ratio``, when given). Weights stay float behind QuantizeLinear -> DequantizeLinear (what
    TensorRT 8.x requires, and TensorRT 10 accepts); ``int8_weights`` stores them as INT8 initializers ->
    DequantizeLinear instead (a smaller file; TensorRT >= 10 and ONNX Runtime only).
    """
    missing = [t for t in plan.activations if t not in amax]
    if missing:
        raise TrtqError(
            f"no calibration range for {len(missing)} tensor(s) to quantize (first: {missing[0]!r}); "
            "the calibration table was made for another model: recalibrate"
        )
    used = {t: float(amax[t]) for t in plan.activations}
    for t, a in used.items():
        if not np.isfinite(a) or a < 0:
            raise TrtqError(f"invalid amax {a!r} for tensor {t!r}; recalibrate")
        if a == 0.0:
            logger.warning("tensor %s was always zero during calibration; using amax 1.0", t)
            used[t] = 1.0
    if unify_concat:
        used = unify_amax(used, plan.concat_groups, max_ratio=unify_max_ratio)

    from trtq.precision import FP16_QDQ_OPSET, is_float16, tensor_types

    fp16 = is_float16(model)  # scales in the model's float type: FP16 Q/DQ needs opset 19
    types = tensor_types(model) if fp16 else {}
    out = onnx.ModelProto()
    out.CopyFrom(ensure_opset(model, FP16_QDQ_OPSET if fp16 else MIN_OPSET))
    graph = out.graph
    inits = _initializers(graph)
    names_taken = {n for node in graph.node for n in (*node.input, *node.output)} | set(inits)
    names_taken |= {i.name for i in graph.input} | {node.name for node in graph.node}

    def fresh(base: str) -> str:
        name, k = base, 1
        while name in names_taken:
            name, k = f"{base}_{k}", k + 1
        names_taken.add(name)
        return name

    new_inits: list[onnx.TensorProto] = []
    weight_nodes: list[onnx.NodeProto] = []
    weight_rename: dict[str, str] = {}
    for wname, (_, axis) in plan.weights.items():
        w = numpy_helper.to_array(inits[wname]).astype(np.float32)
        ax = axis if per_channel and w.ndim > 1 else None
        q, scale = quantize_weight(w, ax)
        w_dtype = np.float16 if inits[wname].data_type == onnx.TensorProto.FLOAT16 else np.float32
        if w_dtype is np.float16:  # the scale as FP16 stores it (never below its smallest normal), q to match
            scale = np.maximum(scale, np.finfo(np.float16).tiny).astype(np.float16).astype(np.float32)
            bshape = tuple(w.shape[i] if i == ax else 1 for i in range(w.ndim)) if ax is not None else ()
            q = np.clip(np.rint(w / scale.reshape(bshape)), -QMAX, QMAX).astype(np.int8)
        s_name, z_name = fresh(f"{wname}_scale"), fresh(f"{wname}_zero_point")
        dq_out = fresh(f"{wname}_DequantizeLinear_Output")
        new_inits.append(numpy_helper.from_array(scale.astype(w_dtype), s_name))
        new_inits.append(numpy_helper.from_array(np.zeros(scale.shape, dtype=np.int8), z_name))
        if int8_weights:
            q_name = fresh(f"{wname}_quantized")
            new_inits.append(numpy_helper.from_array(q, q_name))
        else:  # float weights -> QuantizeLinear: the form TensorRT 8.x requires (it quantizes them at build time)
            q_name = fresh(f"{wname}_QuantizeLinear_Output")
            qn = helper.make_node("QuantizeLinear", [wname, s_name, z_name], [q_name], name=fresh(f"{wname}_QuantizeLinear"))
            if ax is not None:
                qn.attribute.append(helper.make_attribute("axis", int(ax)))
            weight_nodes.append(qn)
        dq = helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [dq_out], name=fresh(f"{wname}_DequantizeLinear"))
        if ax is not None:
            dq.attribute.append(helper.make_attribute("axis", int(ax)))
        weight_nodes.append(dq)
        weight_rename[wname] = dq_out

    act_nodes: dict[str, list[onnx.NodeProto]] = {}
    act_rename: dict[str, str] = {}
    for tensor in plan.activations:
        a = used[tensor]
        s_name, z_name = fresh(f"{tensor}_scale"), fresh(f"{tensor}_zero_point")
        q_out, dq_out = fresh(f"{tensor}_QuantizeLinear_Output"), fresh(f"{tensor}_DequantizeLinear_Output")
        s_dtype = np.float16 if types.get(tensor) == onnx.TensorProto.FLOAT16 else np.float32
        new_inits.append(numpy_helper.from_array(np.array(max(a / QMAX, float(np.finfo(s_dtype).tiny)), dtype=s_dtype), s_name))
        new_inits.append(numpy_helper.from_array(np.array(0, dtype=np.int8), z_name))
        act_nodes[tensor] = [
            helper.make_node("QuantizeLinear", [tensor, s_name, z_name], [q_out], name=fresh(f"{tensor}_QuantizeLinear")),
            helper.make_node("DequantizeLinear", [q_out, s_name, z_name], [dq_out], name=fresh(f"{tensor}_DequantizeLinear")),
        ]
        act_rename[tensor] = dq_out

    readers: dict[str, set[str]] = {t: set(users) for t, users in plan.activations.items()}
    weight_readers = {w: set(plan.weight_readers.get(w) or [node]) for w, (node, _) in plan.weights.items()}
    new_nodes: list[onnx.NodeProto] = list(weight_nodes)
    graph_inputs = {i.name for i in graph.input}
    produced = {o for n in graph.node for o in n.output}
    for tensor, pair in act_nodes.items():
        if tensor in graph_inputs or tensor not in produced:
            new_nodes.extend(pair)
    for node in graph.node:
        key = node_key(node)
        for i, name in enumerate(node.input):
            if name in act_rename and key in readers.get(name, ()):
                node.input[i] = act_rename[name]
            elif name in weight_rename and key in weight_readers[name]:
                node.input[i] = weight_rename[name]
        new_nodes.append(node)
        for o in node.output:
            if o in act_nodes and o not in graph_inputs:
                new_nodes.extend(act_nodes[o])
    still_used = {n for node in new_nodes for n in node.input}
    kept_inits = [init for init in graph.initializer if init.name in still_used or init.name not in plan.weights]
    kept_inits = [init for init in kept_inits if not (init.name in plan.weights and init.name not in still_used)]
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept_inits + new_inits)
    # float weights that became INT8 initializers must not linger as graph inputs either
    stale_inputs = [i for i in graph.input if i.name in plan.weights and i.name not in still_used]
    for i in stale_inputs:
        graph.input.remove(i)
    return out, used


def qdq_summary(model: onnx.ModelProto) -> dict[str, int]:
    """Counts of Q/DQ nodes in a model (for reports and tests)."""
    q = sum(1 for n in model.graph.node if n.op_type == "QuantizeLinear")
    dq = sum(1 for n in model.graph.node if n.op_type == "DequantizeLinear")
    return {"quantize_linear": q, "dequantize_linear": dq}
