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
