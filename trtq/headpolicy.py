"""YOLOv8 head policy: which nodes of the Detect head must stay in float.

The Detect head ends in one 1x1 Conv per stride and branch (box ``cv2.*.2``, class ``cv3.*.2``), the DFL
(softmax over the distance bins and a fixed 1x1 conv), the box decode (dist2bbox with anchors and strides),
the class Sigmoid and the output Concat that puts boxes in pixels next to scores in [0, 1]. Quantizing any of
these collapses accuracy, so explicit quantization leaves them unquantized and the TensorRT builder pins
them to a float precision in implicit mode.

The nodes are found from the graph structure, not from their names: starting at the graph outputs, the
policy walks back through every producer until it reaches the weighted ops (Conv, ConvTranspose, Gemm,
MatMul) that feed the head. Those are the head's final convs; the DFL conv (the one weighted op fed by a
Softmax) is part of the head and the walk continues through it. The result therefore holds for every
YOLOv8 size, image size and class count, and for the fused and the per-branch export layouts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import onnx

logger = logging.getLogger(__name__)

WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# Ops that only move data around: walking through them keeps a node "directly fed" by its producer.
_LAYOUT_OPS = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity"})

REASON_FINAL_CONV = "final head conv ({branch} branch): raw {what}; INT8 here costs mAP"
REASON_DFL = "DFL: softmax over the distance bins and the fixed 1x1 projection conv"
REASON_DFL_INPUT = "DFL input: box distribution reshaping"
REASON_DECODE = "box decode (dist2bbox with anchors and strides): pixel coordinates"
REASON_SIGMOID = "class Sigmoid: scores in [0, 1]"
REASON_CLASS_PATH = "class logits reshaping before the Sigmoid"
REASON_OUTPUT_CONCAT = "output Concat: boxes in pixels and scores in [0, 1] share one tensor"
REASON_OTHER = "detection head post-processing"


def node_key(node: onnx.NodeProto) -> str:
    """The name a node is known by (its name; its first output when the exporter left it unnamed)."""
    return node.name or (node.output[0] if node.output else node.op_type)


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output if out}


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    result: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                result.setdefault(name, []).append(node)
    return result


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
    """(nodes of the head region in graph order, the final weighted ops that feed it)."""
    producers = _producers(graph)
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


def _reach_backward(start: Iterable[onnx.NodeProto], allowed: set[int], producers: dict[str, Any]) -> set[int]:
    seen: set[int] = set()
    stack = list(start)
    while stack:
        node = stack.pop()
        for name in node.input:
            prev = producers.get(name)
            if prev is not None and id(prev) in allowed and id(prev) not in seen:
                seen.add(id(prev))
                stack.append(prev)
    return seen


def float_nodes(model: onnx.ModelProto) -> dict[str, str]:
    """Nodes of a YOLOv8 Detect head that must stay in float: node name -> reason.

    Returns an empty dict (and logs why) when the graph does not end in a YOLOv8-style detection head
    (no Sigmoid or DFL Softmax between the last weighted ops and the outputs).
    """
    graph = model.graph
    region, finals = _head_region(graph)
    softmaxes = [n for n in region if n.op_type == "Softmax"]
    sigmoids = [n for n in region if n.op_type == "Sigmoid"]
    if not softmaxes and not sigmoids:
        logger.info("head policy: no YOLOv8 Detect head found (no DFL Softmax or class Sigmoid before the outputs)")
        return {}
    if not finals:
        logger.info("head policy: no weighted op feeds the outputs; nothing to keep in float")
        return {}

    producers = _producers(graph)
    consumers = _consumers(graph)
    region_ids = {id(n) for n in region}
    allowed = region_ids | {id(n) for n in finals}
    output_names = {o.name for o in graph.output}

    dfl_convs = [n for n in region if n.op_type in WEIGHTED_OPS]
    decode = _reach_forward(dfl_convs, region_ids, consumers) if dfl_convs else set()
    sig_ids = {id(n) for n in sigmoids}
    before_softmax = _reach_backward(softmaxes, allowed, producers)
    before_sigmoid = _reach_backward(sigmoids, allowed, producers)

    result: dict[str, str] = {}
    for node in finals:
        to_box = id(node) in before_softmax
        to_cls = id(node) in before_sigmoid
        if to_box and not to_cls:
            branch, what = "box", "box distance distribution"
        elif to_cls and not to_box:
            branch, what = "class", "class logits"
        else:
            branch, what = "box/class", "box distribution and class logits"
        result[node_key(node)] = REASON_FINAL_CONV.format(branch=branch, what=what)
    for node in region:
        key = node_key(node)
        if any(o in output_names for o in node.output) and node.op_type == "Concat":
            reason = REASON_OUTPUT_CONCAT
        elif node.op_type == "Softmax" or node in dfl_convs:
            reason = REASON_DFL
        elif id(node) in sig_ids:
            reason = REASON_SIGMOID
        elif id(node) in decode:
            reason = REASON_DECODE
        elif id(node) in before_softmax and id(node) not in before_sigmoid:
            reason = REASON_DFL_INPUT
        elif id(node) in before_sigmoid and id(node) not in before_softmax:
            reason = REASON_CLASS_PATH
        elif id(node) in before_softmax:
            reason = REASON_DFL_INPUT
        else:
            reason = REASON_OTHER
        result[key] = reason
    # Constants take the role of the node they feed (anchors and strides belong to the decode).
    for node in region:
        if node.op_type == "Constant" and node.output:
            users = [u for u in consumers.get(node.output[0], []) if node_key(u) in result]
            if users:
                result[node_key(node)] = result[node_key(users[0])]
    logger.debug("head policy: %d final convs, %d head nodes kept in float", len(finals), len(result))
    return result


def final_head_convs(model: onnx.ModelProto) -> list[str]:
    """Names of the head's final weighted ops (the six ``cv2.*.2`` / ``cv3.*.2`` convs on YOLOv8)."""
    return [k for k, v in float_nodes(model).items() if v.startswith("final head conv")]


def head_keep_float(model: onnx.ModelProto, *, quantize_head: bool = False) -> dict[str, str]:
    """The head nodes to keep in float: all of :func:`float_nodes`, or with ``quantize_head`` all but the final
    head convs (the DFL, box decode, Sigmoid and output Concat stay float either way)."""
    nodes = float_nodes(model)
    if not quantize_head:
        return nodes
    return {k: v for k, v in nodes.items() if not v.startswith("final head conv")}
