"""ONNX graph look-ups shared by calibration, Q/DQ placement and the head policy (one definition each).

- :func:`producers` / :func:`consumers`: which node writes and which nodes read each tensor (empty names,
  ONNX's "optional input not given", are left out);
- :func:`constant_names`: initializers and ``Constant`` node outputs (values fixed at export);
- :func:`default_opset`: the opset of the default (``ai.onnx``) domain.
"""

from __future__ import annotations

from typing import Any

from trtq.errors import TrtqError


def producers(graph: Any) -> dict[str, Any]:
    """Tensor name -> the node that outputs it."""
    return {out: node for node in graph.node for out in node.output if out}


def consumers(graph: Any) -> dict[str, list[Any]]:
    """Tensor name -> the nodes that read it, in graph order (a node reading it twice is listed twice)."""
    result: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                result.setdefault(name, []).append(node)
    return result


def constant_names(graph: Any) -> set[str]:
    """Names of the initializers and of the outputs of ``Constant`` nodes."""
    names = {init.name for init in graph.initializer}
    names |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    return names


def default_opset(model: Any) -> int:
    """The model's opset of the default ONNX domain; TrtqError when it declares none."""
    version = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if version is None:
        raise TrtqError("the model declares no default ONNX opset; re-export it with `trtq export`")
    return version


def topological_sort(graph: Any) -> None:
    """Order ``graph.node`` so every node comes after the producers of its inputs (in place, stable).

    Some converters (e.g. ONNX Runtime's float16 one) append nodes at the end whose outputs earlier nodes
    read; ONNX Runtime runs such graphs, onnx.checker refuses them. Nodes already in order keep it.
    """
    import heapq

    nodes = list(graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    waiting = [0] * len(nodes)
    readers: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        deps = {producer[name] for name in node.input if name in producer and producer[name] != i}
        waiting[i] = len(deps)
        for d in deps:
            readers.setdefault(d, []).append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for r in readers.get(i, []):
            waiting[r] -= 1
            if waiting[r] == 0:
                heapq.heappush(ready, r)
    if len(order) != len(nodes):
        raise TrtqError("the model's graph has a cycle; re-export it")
    if order != list(range(len(nodes))):
        del graph.node[:]
        graph.node.extend(nodes[i] for i in order)
