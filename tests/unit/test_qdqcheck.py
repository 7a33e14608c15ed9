"""The Q/DQ structure check finds quantized head nodes, Softmax inputs and outputs."""

from __future__ import annotations

from pathlib import Path

import onnx

from trtq.headpolicy import Reason, head_policy
from trtq.qdq import insert_qdq, plan_qdq
from trtq.qdqcheck import op_counts, qdq_problems


def _quantized(model: onnx.ModelProto, keep: dict[str, str]) -> onnx.ModelProto:
    plan = plan_qdq(model, keep_float=keep)
    qmodel, _ = insert_qdq(model, plan, dict.fromkeys(plan.activations, 1.0))
    return qmodel


def test_head_policy_model_passes_and_all_int8_model_fails(yolo_onnx: Path) -> None:
    model = onnx.load(str(yolo_onnx))
    policy = head_policy(model)
    assert qdq_problems(_quantized(model, dict(policy)), policy) == []
    counts = op_counts(_quantized(model, dict(policy)))
    assert counts["float_ops"] == 7 and counts["quantized_ops"] == 57  # six branch last convs + the DFL conv float
    problems = qdq_problems(_quantized(model, {}), policy)  # everything quantized, the DFL conv included
    finals = [k for k, r in policy.items() if r.code is Reason.FINAL_CONV]
    assert all(any(p.startswith(f"{k} ") for p in problems) for k in finals)
    assert any("dfl" in p for p in problems)


def test_output_from_a_dequantize_is_reported(tiny_conv_onnx: Path) -> None:
    model = onnx.load(str(tiny_conv_onnx))
    qmodel = _quantized(model, {})
    dq = onnx.helper.make_node("DequantizeLinear", ["q_out", "s", "z"], ["output0_dq"], name="dq")
    qmodel.graph.node.append(dq)
    qmodel.graph.output[0].name = "output0_dq"
    assert qdq_problems(qmodel, {}) == ["output output0_dq comes out of a Q/DQ node"]
