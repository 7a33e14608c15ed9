"""Head policy: which nodes of a YOLO model must stay in float, for every task and architecture.

Every Ultralytics head (YOLOv8, YOLO11, YOLO26; detect, segment, pose, OBB; grid or end-to-end) ends in
one last 1x1 conv per stride and branch (box, class, and per task mask coefficients, keypoints or angle),
followed by the decode: the DFL (softmax over distance bins and a fixed 1x1 conv; absent with YOLO26's
``reg_max=1``), the box decode with anchors and strides, the class Sigmoid, the keypoint and angle decode,
YOLO26's one-to-one selection (TopK / GatherElements) and the output Concat. Segment models add the mask
prototype, whose last conv feeds the second output. Quantizing any of these collapses accuracy (raw
distances, logits and coordinates need more than 8 bits), so explicit quantization leaves them
unquantized and the TensorRT builder pins them to a float precision in implicit mode. The attention of
YOLO11 / YOLO26 (C2PSA / PSA: MatMul of two activations, Softmax) stays float too.

Everything is found from the graph structure, never from node names: starting at the graph outputs, the
policy walks back through every producer until it reaches the weighted ops (Conv, ConvTranspose, Gemm,
MatMul) that feed the head; those are the branches' last convs (the DFL conv, fed by a Softmax, is part of
the decode and the walk continues through it). Each last conv is assigned its branch from its output
channels and the task layout (:mod:`trtq.tasks`), with graph hints (reaching the DFL Softmax, the angle's
Cos/Sin) where channel counts are ambiguous.

Every decision carries a :class:`Reason` code; the text shown in reports is derived from the code and the
branch. Logic must use the codes (``FloatReason.code``), never the text.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import onnx

from trtq import onnxgraph

logger = logging.getLogger(__name__)

WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# Ops that only move data around: walking through them keeps a node "directly fed" by its producer.
_LAYOUT_OPS = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
# Ops whose output depends only on their input's shape: the head walk does not follow their input.
_SHAPE_OPS = frozenset({"Shape", "Size"})
_ARITHMETIC_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Cos", "Sin", "Pow", "Sqrt", "Atan"})


class Branch(enum.Enum):
    """The head branch a last conv belongs to (value: its name in reports)."""

    BOX = "box"
    CLASS = "class"
    MASK = "mask-coefficient"
    KEYPOINTS = "keypoint"
    ANGLE = "angle"
    PROTO = "mask-prototype"
    HEAD = "head"  # a last conv whose branch could not be told apart


_BRANCH_CONTENT = {
    Branch.BOX: "box distances",
    Branch.CLASS: "class logits",
    Branch.MASK: "mask coefficients",
    Branch.KEYPOINTS: "keypoint offsets and visibility logits",
    Branch.ANGLE: "angle logit",
    Branch.PROTO: "mask prototypes (combined with the coefficients into masks)",
    Branch.HEAD: "head outputs",
}


class Reason(enum.Enum):
    """Why a node stays float (value: a stable code, also written to the JSON report)."""

    FINAL_CONV = "final_conv"
    DFL = "dfl"
    BOX_DECODE = "box_decode"
    ANCHORS = "anchors"
    SCORES = "scores"
    KEYPOINT_DECODE = "keypoint_decode"
    ANGLE_DECODE = "angle_decode"
    MASK_COEFFICIENTS = "mask_coefficients"
    PROTO_OUTPUT = "proto_output"
    END2END_SELECT = "end2end_select"
    OUTPUT_CONCAT = "output_concat"
    HEAD_LAYOUT = "head_layout"
    ATTENTION = "attention"


_REASON_TEXT = {
    Reason.DFL: "DFL: softmax over the distance bins and the fixed 1x1 projection conv",
    Reason.BOX_DECODE: "box decode (distances to boxes with anchors and strides): pixel coordinates",
    Reason.ANCHORS: "anchor and stride math",
    Reason.SCORES: "class scores: Sigmoid to [0, 1]",
    Reason.KEYPOINT_DECODE: "keypoint decode (offsets to pixels with anchors and strides, visibility Sigmoid)",
    Reason.ANGLE_DECODE: "angle decode (Sigmoid to radians)",
    Reason.MASK_COEFFICIENTS: "mask coefficients carried to the output",
    Reason.PROTO_OUTPUT: "mask prototype output activation",
    Reason.END2END_SELECT: "end-to-end one-to-one selection (TopK / GatherElements of the best detections)",
    Reason.OUTPUT_CONCAT: "output Concat: coordinates in pixels next to scores in [0, 1] in one tensor",
    Reason.HEAD_LAYOUT: "head output layout: reshaping and joining the branches",
    Reason.ATTENTION: "attention math (MatMul of two activations, Softmax): kept float",
}

#: reasons whose layers TensorRT may run in FP16 when allowed (the rest of the head is tiny: FP32)
FP16_REASONS = frozenset({Reason.FINAL_CONV, Reason.DFL, Reason.ATTENTION})


class FloatReason(str):
    """Why one node stays float: a :class:`Reason` code, the head branch, and the text derived from them.

    It is a ``str`` (the text) so reports and JSON show it as it is; code must test ``.code`` / ``.branch``.
    """

    code: Reason
    branch: Branch | None

    def __new__(cls, code: Reason, branch: Branch | None = None) -> FloatReason:
        if code is Reason.FINAL_CONV:
            b = branch or Branch.HEAD
            if b is Branch.PROTO:
                text = f"last conv of the {b.value} branch: raw {_BRANCH_CONTENT[b]}; INT8 here costs accuracy"
            else:
                text = f"final head conv ({b.value} branch): raw {_BRANCH_CONTENT[b]}; INT8 here costs accuracy"
        else:
            text = _REASON_TEXT[code]
        obj = super().__new__(cls, text)
        obj.code = code
        obj.branch = branch
        return obj

    def __reduce__(self) -> tuple[Any, ...]:
        return (FloatReason, (self.code, self.branch))


def reason_code(reason: str) -> Reason | None:
    """The code of a reason (None for a plain string, e.g. a user exclusion)."""
    return reason.code if isinstance(reason, FloatReason) else None


def node_key(node: onnx.NodeProto) -> str:
    """The name a node is known by (its name; its first output when the exporter left it unnamed)."""
    return node.name or (node.output[0] if node.output else node.op_type)


def _fed_by_softmax(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> bool:
    """True when ``node``'s data input comes from a Softmax, possibly through layout-only ops."""
    name = node.input[0] if node.input else ""
    for _ in range(8):
        prod = producers.get(name)
        if prod is None:
            return False
        if prod.op_type == "Softmax":
            return True
        if prod.op_type not in _LAYOUT_OPS or not prod.input:
            return False
        name = prod.input[0]
    return False


def _head_region(graph: onnx.GraphProto) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]]:
    """(nodes of the head region in graph order, the final weighted ops that feed it).

    The walk does not follow the input of Shape/Size: a dynamic export computes its anchors from the
    feature maps' shapes, which does not make the convs producing those maps part of the head.
    """
    producers = onnxgraph.producers(graph)
    region: set[int] = set()
    finals: set[int] = set()
    stack = [o.name for o in graph.output]
    seen_tensors: set[str] = set()
    while stack:
        tensor = stack.pop()
        if tensor in seen_tensors:
            continue
        seen_tensors.add(tensor)
        node = producers.get(tensor)
        if node is None or id(node) in region or id(node) in finals:
            continue
        if node.op_type in WEIGHTED_OPS and not _fed_by_softmax(node, producers):
            finals.add(id(node))
            continue
        region.add(id(node))
        if node.op_type not in _SHAPE_OPS:
            stack.extend(i for i in node.input if i)
    ordered = [n for n in graph.node if id(n) in region]
    final_nodes = [n for n in graph.node if id(n) in finals]
    return ordered, final_nodes


def _reach_forward(start: Iterable[onnx.NodeProto], allowed: set[int], consumers: dict[str, list[Any]]) -> set[int]:
    seen: set[int] = set()
    stack = list(start)
    while stack:
        node = stack.pop()
        for out in node.output:
            for nxt in consumers.get(out, []):
                if id(nxt) in allowed and id(nxt) not in seen:
                    seen.add(id(nxt))
                    stack.append(nxt)
    return seen


def _out_channels(node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto]) -> int | None:
    if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in inits:
        dims = inits[node.input[1]].dims
        return int(dims[0]) if dims else None
    return None


def _model_layout(model: onnx.ModelProto) -> Any:
    """The task layout from the model's metadata and outputs, or None where it cannot be told."""
    from trtq.errors import TrtqError
    from trtq.tasks import parse_metadata_value, task_layout

    meta = {p.key: parse_metadata_value(p.value) for p in model.metadata_props}
    if "task" not in meta:
        return graph_layout(model)
    shapes = []
    for o in model.graph.output:
        dims = o.type.tensor_type.shape.dim
        shapes.append(tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims))
    imgsz = None
    if model.graph.input:
        dims = model.graph.input[0].type.tensor_type.shape.dim
        if len(dims) == 4 and all(d.HasField("dim_value") and d.dim_value > 0 for d in dims[2:]):
            imgsz = (int(dims[2].dim_value), int(dims[3].dim_value))
    try:
        return task_layout(meta, shapes, imgsz=imgsz)
    except TrtqError:
        return None


def _branch_candidates(channels: int | None, layout: Any) -> list[Branch]:
    """Branches whose last conv has ``channels`` outputs, in the order of the output rows."""
    if channels is None:
        return []
    found: list[Branch] = []
    if channels in (4, 64):  # 4 * reg_max: 16 bins per side (YOLOv8 / YOLO11) or direct distances (YOLO26)
        found.append(Branch.BOX)
    if layout is None:
        if channels == 1:
            found.append(Branch.ANGLE)
        return found
    if channels == layout.nc:
        found.append(Branch.CLASS)
    if layout.task == "segment" and channels == layout.nm:
        found.append(Branch.MASK)
    if layout.task == "pose" and layout.kpt_shape and channels == layout.kpt_shape[0] * layout.kpt_shape[1]:
        found.append(Branch.KEYPOINTS)
    if layout.task == "obb" and channels == 1:
        found.append(Branch.ANGLE)
    return found


def _classify_final(
    node: onnx.NodeProto,
    channels: int | None,
    layout: Any,
    reached: set[int],
    by_id: Mapping[int, onnx.NodeProto],
    rank4_outputs: set[str],
    det_outputs: set[str],
) -> Branch:
    ops = {by_id[i].op_type for i in reached}
    outs = {o for i in reached for o in by_id[i].output} | set(node.output)
    if outs & rank4_outputs and not outs & det_outputs:
        return Branch.PROTO
    candidates = _branch_candidates(channels, layout)
    if len(candidates) == 1:
        return candidates[0]
    hints = {
        Branch.BOX: "Softmax" in ops,
        Branch.ANGLE: bool(ops & {"Cos", "Sin"}),
        Branch.CLASS: "Sigmoid" in ops or "TopK" in ops,
    }
    hinted = [c for c in candidates or list(hints) if hints.get(c, False)]
    if len(hinted) == 1:
        return hinted[0]
    return candidates[0] if candidates else Branch.HEAD


def _attention(graph: onnx.GraphProto, skip: set[int]) -> list[onnx.NodeProto]:
    """Attention math outside the head: a Softmax, the MatMul(s) of two activations that produce its input
    (through element-wise scaling and layout ops) and the MatMul that consumes it (through layout ops)."""
    producers = onnxgraph.producers(graph)
    consumers = onnxgraph.consumers(graph)
    constants = onnxgraph.constant_names(graph)
    found: dict[int, onnx.NodeProto] = {}

    def activation_matmul(n: onnx.NodeProto) -> bool:
        return n.op_type == "MatMul" and all(i not in constants for i in n.input[:2])

    for sm in graph.node:
        if sm.op_type != "Softmax" or id(sm) in skip:
            continue
        group = [sm]
        t = sm.input[0] if sm.input else ""
        for _ in range(6):  # backwards to the score MatMul
            prod = producers.get(t)
            if prod is None:
                break
            if activation_matmul(prod):
                group.append(prod)
                break
            if prod.op_type in _LAYOUT_OPS or prod.op_type in {"Mul", "Div", "Add"}:
                group.append(prod)
                t = next((i for i in prod.input if i and i not in constants), "")
                continue
            break
        frontier = list(sm.output)
        for _ in range(6):  # forwards to the value MatMul
            nxt = [c for t2 in frontier for c in consumers.get(t2, [])]
            if not nxt:
                break
            mm = [c for c in nxt if activation_matmul(c)]
            group.extend(mm)
            layout = [c for c in nxt if c.op_type in _LAYOUT_OPS]
            group.extend(layout)
            if mm or not layout:
                break
            frontier = [o for c in layout for o in c.output]
        if any(activation_matmul(n) for n in group):
            for n in group:
                found[id(n)] = n
    return [n for n in graph.node if id(n) in found]


def head_policy(model: onnx.ModelProto, layout: Any = None) -> dict[str, FloatReason]:
    """Nodes that must stay in float, in graph order: node name -> :class:`FloatReason`.

    ``layout`` (a :class:`trtq.tasks.TaskLayout`) names the branches; by default it is read from the
    model's metadata and outputs. A graph without a YOLO head (no Sigmoid or DFL Softmax between the last
    weighted ops and the outputs) keeps only its attention math float.
    """
    graph = model.graph
    if layout is None:
        layout = _model_layout(model)
    region, finals = _head_region(graph)
    result: dict[str, FloatReason] = {}
    region_ops = {n.op_type for n in region}
    if not region_ops & {"Softmax", "Sigmoid"}:
        logger.info("head policy: no YOLO head found (no DFL Softmax or class Sigmoid before the outputs)")
        region, finals = [], []
    elif not finals:
        logger.info("head policy: no weighted op feeds the outputs; nothing to keep in float in the head")
        region = []
    if region:
        result.update(_head_decisions(graph, region, finals, layout))
    for node in _attention(graph, {id(n) for n in region}):
        result.setdefault(node_key(node), FloatReason(Reason.ATTENTION))
    order = {node_key(n): i for i, n in enumerate(graph.node)}
    logger.debug("head policy: %d nodes kept in float", len(result))
    return dict(sorted(result.items(), key=lambda kv: order.get(kv[0], -1)))


def _head_decisions(
    graph: onnx.GraphProto, region: list[onnx.NodeProto], finals: list[onnx.NodeProto], layout: Any
) -> dict[str, FloatReason]:
    producers = onnxgraph.producers(graph)
    consumers = onnxgraph.consumers(graph)
    inits = {i.name: i for i in graph.initializer}
    region_ids = {id(n) for n in region}
    by_id = {id(n): n for n in region}
    output_names = {o.name for o in graph.output}
    rank4 = {o.name for o in graph.output if len(o.type.tensor_type.shape.dim) == 4}
    det = output_names - rank4

    branch_of: dict[int, Branch] = {}
    for node in finals:
        reached = _reach_forward([node], region_ids, consumers)
        branch_of[id(node)] = _classify_final(node, _out_channels(node, inits), layout, reached, by_id, rank4, det)

    # branches behind every tensor of the head (the graph is topologically sorted)
    behind: dict[str, frozenset[Branch]] = {}
    for node in finals:
        for o in node.output:
            behind[o] = frozenset({branch_of[id(node)]})
    for node in region:
        acc: set[Branch] = set()
        for i in node.input:
            acc |= behind.get(i, frozenset())
        for o in node.output:
            behind[o] = frozenset(acc)

    dfl_convs = [n for n in region if n.op_type in WEIGHTED_OPS]
    after_dfl = _reach_forward(dfl_convs, region_ids, consumers) if dfl_convs else set()
    topks = [n for n in region if n.op_type == "TopK"]
    selection = _reach_forward(topks, region_ids, consumers) | {id(n) for n in topks}
    for n in topks:  # the score reduction that ranks the candidates
        prod = producers.get(n.input[0]) if n.input else None
        if prod is not None and prod.op_type in ("ReduceMax", "ArgMax") and id(prod) in region_ids:
            selection.add(id(prod))

    result: dict[str, FloatReason] = {}
    for node in finals:
        result[node_key(node)] = FloatReason(Reason.FINAL_CONV, branch_of[id(node)])
    for node in region:
        key = node_key(node)
        branches = behind.get(node.output[0], frozenset()) if node.output else frozenset()
        if node.op_type == "Concat" and any(o in output_names for o in node.output):
            reason, branch = Reason.OUTPUT_CONCAT, None
        elif id(node) in selection:
            reason, branch = Reason.END2END_SELECT, None
        elif node.op_type == "Softmax" or node in dfl_convs:
            reason, branch = Reason.DFL, Branch.BOX
        elif branches == {Branch.PROTO}:
            reason, branch = Reason.PROTO_OUTPUT, Branch.PROTO
        elif branches == {Branch.ANGLE}:
            reason, branch = Reason.ANGLE_DECODE, Branch.ANGLE
        elif branches == {Branch.KEYPOINTS}:
            reason, branch = Reason.KEYPOINT_DECODE, Branch.KEYPOINTS
        elif branches == {Branch.CLASS} or (node.op_type == "Sigmoid" and Branch.CLASS in branches):
            reason, branch = Reason.SCORES, Branch.CLASS
        elif branches == {Branch.MASK}:
            reason, branch = Reason.MASK_COEFFICIENTS, Branch.MASK
        elif branches in ({Branch.BOX}, {Branch.BOX, Branch.ANGLE}) or (
            id(node) in after_dfl and node.op_type in _ARITHMETIC_OPS
        ):
            reason, branch = Reason.BOX_DECODE, Branch.BOX
        elif not branches:
            reason, branch = Reason.ANCHORS, None
        else:
            reason, branch = Reason.HEAD_LAYOUT, None
        result[key] = FloatReason(reason, branch)
    # Constants take the role of the node they feed (anchors and strides belong to the decode).
    for node in region:
        if node.op_type == "Constant" and node.output:
            users = [u for u in consumers.get(node.output[0], []) if node_key(u) in result and u.op_type != "Constant"]
            if users:
                result[node_key(node)] = result[node_key(users[0])]
    return result


def float_nodes(model: onnx.ModelProto, layout: Any = None) -> dict[str, str]:
    """Nodes that must stay in float: node name -> reason (a :class:`FloatReason`; see :func:`head_policy`)."""
    return dict(head_policy(model, layout))


def final_head_convs(model: onnx.ModelProto) -> list[str]:
    """Names of the head branches' last convs (the six ``cv2.*.2`` / ``cv3.*.2`` convs on YOLOv8n)."""
    return [k for k, v in head_policy(model).items() if v.code is Reason.FINAL_CONV]


def branch_summary(reasons: Mapping[str, str], op_types: Mapping[str, str]) -> list[dict[str, Any]]:
    """Per head branch and reason: how many nodes (and which op types) stayed float, with the reason text.

    Plain-string reasons (user exclusions, sensitivity) are grouped by their text.
    """
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for node, reason in reasons.items():
        code = reason_code(reason)
        branch = reason.branch.value if isinstance(reason, FloatReason) and reason.branch else "-"
        key = (branch, code.value if code else str(reason))
        row = rows.setdefault(
            key, {"branch": branch, "code": code.value if code else "other", "reason": str(reason), "nodes": 0, "ops": {}}
        )
        row["nodes"] += 1
        op = op_types.get(node, "?")
        row["ops"][op] = row["ops"].get(op, 0) + 1
    order = {b.value: i for i, b in enumerate(Branch)}
    return sorted(rows.values(), key=lambda r: (order.get(r["branch"], len(order)), r["code"]))


_PASSIVE_OPS = _LAYOUT_OPS | {"Concat", "Split", "Slice", "Sigmoid", "Cast"}


def graph_layout(model: onnx.ModelProto) -> Any:
    """The task layout told from the head's branches, for a model without ultralytics metadata.

    Output shapes alone cannot tell a pose model with 80 classes (``4 + 80 + 51`` rows) from a detector
    with 131; the graph can: per stride, the box branch feeds the DFL Softmax or the distance decode, the
    class branch only a Sigmoid, keypoints an anchor/stride decode, the angle a Cos/Sin, mask coefficients
    go to the output as they are, and the mask prototype feeds the 4-D output alone. Returns None when the
    branches cannot be told apart (e.g. an export that joins them before decoding).
    """
    from trtq.errors import TrtqError
    from trtq.tasks import parse_metadata_value, task_layout

    graph = model.graph
    region, finals = _head_region(graph)
    if not finals or not any(n.op_type == "Sigmoid" for n in region):
        return None
    consumers = onnxgraph.consumers(graph)
    producers = onnxgraph.producers(graph)
    inits = {i.name: i for i in graph.initializer}
    region_ids = {id(n) for n in region}
    topks = [n for n in region if n.op_type == "TopK"]
    selection = _reach_forward(topks, region_ids, consumers) | {id(n) for n in topks}
    for n in topks:
        prod = producers.get(n.input[0]) if n.input else None
        if prod is not None and prod.op_type in ("ReduceMax", "ArgMax"):
            selection.add(id(prod))
    allowed = region_ids - selection
    by_id = {id(n): n for n in region}
    rank4 = {o.name for o in graph.output if len(o.type.tensor_type.shape.dim) == 4}
    groups: dict[str, set[int]] = {}
    for f in finals:
        c = _out_channels(f, inits)
        reached = _reach_forward([f], allowed, consumers)
        ops = {by_id[i].op_type for i in reached}
        outs = {o for i in reached for o in by_id[i].output} | set(f.output)
        if c is None:
            return None
        if outs & rank4 and not outs & ({o.name for o in graph.output} - rank4):
            kind = "proto"
        elif "Softmax" in ops or (c == 4 and ops & {"Sub", "Add"} and not ops & {"Cos", "Sin"}):
            kind = "box"
        elif ops & {"Cos", "Sin"} and c == 1:
            kind = "angle"
        elif ops <= _PASSIVE_OPS and "Sigmoid" in ops:
            kind = "class"
        elif ops <= _PASSIVE_OPS:
            kind = "mask"
        else:
            kind = "keypoints"
        groups.setdefault(kind, set()).add(c)
    if any(len(v) != 1 for v in groups.values()) or "class" not in groups or "box" not in groups:
        return None
    one = {k: next(iter(v)) for k, v in groups.items()}
    meta: dict[str, Any] = {p.key: parse_metadata_value(p.value) for p in model.metadata_props}
    if "proto" in one:
        if one.get("mask") != one["proto"]:
            return None
        task = "segment"
    elif "angle" in one:
        task = "obb"
    elif "keypoints" in one:
        k = one["keypoints"]
        task = "pose"
        meta["kpt_shape"] = [k // 3, 3] if k % 3 == 0 else [k // 2, 2]
    else:
        task = "detect"
    names = meta.get("names")
    if not isinstance(names, dict) or len(names) != one["class"]:
        meta["names"] = {i: f"class{i}" for i in range(one["class"])}
    meta["task"] = task
    shapes = [
        tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None for d in o.type.tensor_type.shape.dim)
        for o in graph.output
    ]
    try:
        layout = task_layout(meta, shapes)
    except TrtqError:
        return None
    from dataclasses import replace

    return replace(layout, inferred=True)


def head_keep_float(model: onnx.ModelProto, *, quantize_head: bool = False) -> dict[str, str]:
    """The head nodes to keep in float: all of :func:`float_nodes`, or with ``quantize_head`` all but the last
    conv of each head branch (the DFL, decode, Sigmoid and output Concat stay float either way)."""
    nodes = float_nodes(model)
    if not quantize_head:
        return nodes
    return {k: v for k, v in nodes.items() if reason_code(v) is not Reason.FINAL_CONV}
