"""Structure checks of a Q/DQ model: what must stay float did stay float.

Used by the tests and ``make bench-models``: no graph output comes out of a QuantizeLinear /
DequantizeLinear, no node the head policy keeps float (the branches' last convs, DFL, decode, scores,
end-to-end selection, attention) reads a dequantized tensor, and no Softmax anywhere does.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx

from trtq.headpolicy import WEIGHTED_OPS, node_key

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def qdq_problems(qmodel: onnx.ModelProto, keep_float: Mapping[str, str]) -> list[str]:
    """Every violation found in ``qmodel`` (empty when the structure is right).

    ``keep_float`` is the head policy of the float model (node name -> reason); node names are unchanged
    by quantization.
    """
    graph = qmodel.graph
    qdq_out = {o for n in graph.node if n.op_type in QDQ_OPS for o in n.output}
    problems = [f"output {o.name} comes out of a Q/DQ node" for o in graph.output if o.name in qdq_out]
    for node in graph.node:
        if node.op_type in QDQ_OPS:
            continue
        quantized_in = [i for i in node.input if i in qdq_out]
        if not quantized_in:
            continue
        key = node_key(node)
        if key in keep_float:
            code = getattr(getattr(keep_float[key], "code", None), "value", "float")
            problems.append(f"{key} ({node.op_type}, {code}) reads the quantized tensor {quantized_in[0]}")
        elif node.op_type == "Softmax":
            problems.append(f"{key} (Softmax) reads the quantized tensor {quantized_in[0]}")
    return problems


def op_counts(qmodel: onnx.ModelProto) -> dict[str, Any]:
    """Weighted ops that run quantized (a dequantized input) and those that stay float, with Q/DQ counts."""
    graph = qmodel.graph
    dq_out = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    weighted = [n for n in graph.node if n.op_type in WEIGHTED_OPS]
    quantized = [n for n in weighted if any(i in dq_out for i in n.input)]
    return {
        "quantized_ops": len(quantized),
        "float_ops": len(weighted) - len(quantized),
        "quantize_linear": sum(n.op_type == "QuantizeLinear" for n in graph.node),
        "dequantize_linear": sum(n.op_type == "DequantizeLinear" for n in graph.node),
    }


def raw_outputs(model: str, batches: list[dict[str, Any]]) -> list[list[Any]]:
    """Every output of ``model`` (ONNX Runtime CPU) for every batch, as float32; inputs are cast to the
    model's input type (an FP16 model takes float16)."""
    import numpy as np

    from trtq.cpuisa import is_cpu_target
    from trtq.ort import ort_session

    sess = ort_session(Path(model), ["CPUExecutionProvider"], exact_qdq=not is_cpu_target(model))
    dtypes = {i.name: np.float16 if i.type == "tensor(float16)" else np.float32 for i in sess.get_inputs()}
    return [
        [np.asarray(o, dtype=np.float32) for o in sess.run(None, {k: v.astype(dtypes.get(k, np.float32)) for k, v in f.items()})]
        for f in batches
    ]


def output_cosines(reference: list[list[Any]], candidate: list[list[Any]]) -> list[float]:
    """Cosine similarity per output over all batches (flattened): 1.0 is identical."""
    import numpy as np

    result: list[float] = []
    for j in range(len(reference[0])):
        a = np.concatenate([b[j].ravel() for b in reference]).astype(np.float64)
        c = np.concatenate([b[j].ravel() for b in candidate]).astype(np.float64)
        denom = float(np.linalg.norm(a) * np.linalg.norm(c))
        result.append(float(a @ c / denom) if denom > 0 else float(np.array_equal(a, c)))
    return result
