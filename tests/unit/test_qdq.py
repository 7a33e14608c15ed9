"""Q/DQ placement and rewriting: structure on the tiny net and YOLOv8n, weight quantization math."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from trtq.errors import TrtqError
from trtq.headpolicy import float_nodes
from trtq.qdq import dequantize_weight, ensure_opset, insert_qdq, plan_qdq, quantize_weight, unify_amax


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def _fake_amax(plan_tensors: list[str], value: float = 4.0) -> dict[str, float]:
    return {t: value + i * 0.01 for i, t in enumerate(plan_tensors)}


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0])


def test_tiny_net_structure(tiny_conv_onnx: Path) -> None:
    model = onnx.load(str(tiny_conv_onnx))
    plan = plan_qdq(model)
    amax = _fake_amax(plan.activation_tensors)
    qmodel, used = insert_qdq(model, plan, amax)
    onnx.checker.check_model(qmodel, full_check=True)
    prod = _producers(qmodel)
    inits = {i.name: i for i in qmodel.graph.initializer}
    convs = [n for n in qmodel.graph.node if n.op_type == "Conv"]
    assert len(convs) == 3
    for conv in convs:
        data, weight = prod[conv.input[0]], prod[conv.input[1]]
        assert data.op_type == "DequantizeLinear" and prod[data.input[0]].op_type == "QuantizeLinear"
        assert weight.op_type == "DequantizeLinear"
        wq = prod[weight.input[0]]  # float weight -> QuantizeLinear (per channel) -> DequantizeLinear
        assert wq.op_type == "QuantizeLinear" and inits[wq.input[0]].data_type == TensorProto.FLOAT
        assert wq.input[1] == weight.input[1] and wq.input[2] == weight.input[2]
        assert next(a.i for a in wq.attribute if a.name == "axis") == 0
        assert next(a.i for a in weight.attribute if a.name == "axis") == 0
        assert numpy_helper.to_array(inits[weight.input[2]]).dtype == np.int8
        assert not np.any(numpy_helper.to_array(inits[weight.input[2]]))
        # no Q/DQ after a weighted op
        assert all(c.op_type != "QuantizeLinear" for c in qmodel.graph.node if conv.output[0] in c.input)
    add = next(n for n in qmodel.graph.node if n.op_type == "Add")
    kinds = sorted(prod[i].op_type for i in add.input)
    assert kinds == ["Conv", "DequantizeLinear"]  # shortcut quantized, the fused conv branch not
    assert plan.residual_adds == {"/model.1/Add": "a0"}
    # activation zero points are int8 0 and scales amax/127
    for q in (n for n in qmodel.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits):
        scale = float(numpy_helper.to_array(inits[q.input[1]]))
        assert scale == pytest.approx(used[q.input[0]] / 127, rel=1e-6)
        assert numpy_helper.to_array(inits[q.input[2]]).dtype == np.int8
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    ref, out = _run(model, x), _run(qmodel, x)
    assert out.shape == ref.shape
    assert np.corrcoef(ref.ravel(), out.ravel())[0, 1] > 0.99


def test_qdq_output_matches_numpy_fake_quant(tiny_conv_onnx: Path) -> None:
    """ORT's Q/DQ execution equals a numpy re-implementation of the quantized first conv."""
    model = onnx.load(str(tiny_conv_onnx))
    plan = plan_qdq(model)
    qmodel, used = insert_qdq(model, plan, _fake_amax(plan.activation_tensors, 0.7))
    x = np.random.default_rng(1).random((1, 3, 32, 32), dtype=np.float32)
    # expose the first conv's output of both models
    for m in (model, qmodel):
        m.graph.output.append(helper.make_tensor_value_info("c0", TensorProto.FLOAT, None))
    sess = ort.InferenceSession(qmodel.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(["c0"], {"images": x})[0]
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    s = used["images"] / 127
    xq = np.clip(np.rint(x / s), -127, 127) * s
    q, sc = quantize_weight(inits["w0"], 0)
    wq = dequantize_weight(q, sc, 0)
    ref = model_with_weights(model, {"w0": wq})
    sess2 = ort.InferenceSession(ref.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess2.run(["c0"], {"images": xq.astype(np.float32)})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def model_with_weights(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for i, init in enumerate(m.graph.initializer):
        if init.name in weights:
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(weights[init.name].astype(np.float32), init.name))
    return m


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 5),
    st.floats(0.02, 1e3),
    st.integers(0, 2**31 - 1),
    st.booleans(),
)
def test_per_channel_round_trip_error_bound(cout: int, cin: int, spread: float, seed: int, zero_channel: bool) -> None:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((cout, cin, 3, 3)) * rng.uniform(0.01, spread, (cout, 1, 1, 1))).astype(np.float32)
    if zero_channel:
        w[0] = 0.0
    q, scale = quantize_weight(w, 0)
    assert q.dtype == np.int8 and scale.shape == (cout,)
    assert np.all(scale > 0) and np.all(np.isfinite(scale))
    assert q.min() >= -127
    back = dequantize_weight(q, scale, 0)
    err = np.abs(back - w)
    bound = scale.reshape(-1, 1, 1, 1) / 2
    assert np.all(err <= bound * (1 + 1e-5) + 1e-12)
    # the largest |w| of each channel maps to +-127 exactly (the scale is max|w_c| / 127)
    amax = np.max(np.abs(w).reshape(cout, -1), axis=1)
    nz = amax > 0
    np.testing.assert_allclose(scale[nz], amax[nz] / 127, rtol=1e-6)
    assert np.all(np.max(np.abs(q.reshape(cout, -1)), axis=1)[nz] == 127)
    if zero_channel:
        assert not np.any(q[0]) and not np.any(back[0])


def test_weight_dq_in_model_matches_numpy(tiny_conv_onnx: Path) -> None:
    """The INT8 weights + DequantizeLinear written into the model dequantize (in ORT) within scale/2."""
    model = onnx.load(str(tiny_conv_onnx))
    plan = plan_qdq(model)
    qmodel, _ = insert_qdq(model, plan, _fake_amax(plan.activation_tensors), int8_weights=True)
    orig = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    inits = {i.name: i for i in qmodel.graph.initializer}
    weight_dqs = [n for n in qmodel.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert len(weight_dqs) == 3 and all(inits[n.input[0]].data_type == TensorProto.INT8 for n in weight_dqs)
    assert not {"w0", "w1", "w2"} & set(inits)  # the float weights are gone
    for node in weight_dqs:
        w_name = node.input[0].removesuffix("_quantized")
        sub = helper.make_graph(
            [node],
            "dq",
            [],
            [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)],
            [inits[n] for n in node.input],
        )
        m = helper.make_model(sub, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        got = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})[0]
        scale = numpy_helper.to_array(inits[node.input[1]])
        assert np.all(np.abs(got - orig[w_name]) <= scale.reshape(-1, 1, 1, 1) / 2 + 1e-7)


def test_per_tensor_weights_option(tiny_conv_onnx: Path) -> None:
    model = onnx.load(str(tiny_conv_onnx))
    plan = plan_qdq(model)
    qmodel, _ = insert_qdq(model, plan, _fake_amax(plan.activation_tensors), per_channel=False)
    inits = {i.name: numpy_helper.to_array(i) for i in qmodel.graph.initializer}
    weight_qs = [n for n in qmodel.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in inits]
    assert len(weight_qs) == 3
    for n in weight_qs:
        assert inits[n.input[1]].ndim == 0
        assert not any(a.name == "axis" for a in n.attribute)


def test_float_and_int8_weight_forms_give_identical_outputs(tiny_conv_onnx: Path) -> None:
    model = onnx.load(str(tiny_conv_onnx))
    plan = plan_qdq(model)
    amax = _fake_amax(plan.activation_tensors)
    a, _ = insert_qdq(model, plan, amax)
    b, _ = insert_qdq(model, plan, amax, int8_weights=True)
    x = np.random.default_rng(3).random((1, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(_run(a, x), _run(b, x), rtol=1e-5, atol=1e-5)


def test_opset_is_upgraded_to_13(tiny_conv_onnx: Path) -> None:
    model = onnx.load(str(tiny_conv_onnx))  # its ops mean the same at opset 11
    model.opset_import[0].version = 11
    model.ir_version = 6
    assert model.opset_import[0].version == 11
    plan = plan_qdq(model)
    qmodel, _ = insert_qdq(model, plan, _fake_amax(plan.activation_tensors))
    assert next(o.version for o in qmodel.opset_import if o.domain in ("", "ai.onnx")) >= 13
    onnx.checker.check_model(qmodel)
    assert ensure_opset(onnx.load(str(tiny_conv_onnx))).opset_import[0].version == 17


def test_missing_amax_and_unknown_exclude_are_user_errors(tiny_conv_onnx: Path) -> None:
    model = onnx.load(str(tiny_conv_onnx))
    plan = plan_qdq(model)
    with pytest.raises(TrtqError, match="no calibration range"):
        insert_qdq(model, plan, {})
    with pytest.raises(TrtqError, match="matches no node"):
        plan_qdq(model, exclude=["/nope/*"])
    excluded = plan_qdq(model, exclude=["/model.4/*"])
    assert "/model.4/Conv" in excluded.float_nodes
    assert "cat" not in excluded.activations


def test_unify_amax_takes_group_max() -> None:
    out = unify_amax({"a": 1.0, "b": 3.0, "c": 2.0, "d": 5.0}, [["a", "b", "c"]])
    assert out == {"a": 3.0, "b": 3.0, "c": 3.0, "d": 5.0}


def test_yolov8n_structure(yolo_onnx: Path) -> None:
    model = onnx.load(str(yolo_onnx))
    keep = float_nodes(model)
    plan = plan_qdq(model, keep_float=keep)
    qmodel, used = insert_qdq(model, plan, _fake_amax(plan.activation_tensors, 3.0))
    onnx.checker.check_model(qmodel)
    prod = _producers(qmodel)
    convs = [n for n in qmodel.graph.node if n.op_type == "Conv"]
    quantized = [c for c in convs if prod.get(c.input[0]) is not None and prod[c.input[0]].op_type == "DequantizeLinear"]
    floats = [c for c in convs if c.name in keep]
    assert len(convs) == 64 and len(floats) == 7  # six final head convs + the DFL conv
    assert len(quantized) == 57
    for c in convs:
        is_dq = c.input[0] == "images" or (c.input[0] in prod and prod[c.input[0]].op_type == "DequantizeLinear")
        w_dq = c.input[1] in prod and prod[c.input[1]].op_type == "DequantizeLinear"
        if c.name in keep:
            assert not is_dq and not w_dq, c.name
        else:
            assert is_dq and w_dq, c.name
    # the output Concat, decode and Sigmoid read no Q/DQ, and output0 is produced in float by the Concat
    out_concat = prod["output0"]
    assert out_concat.op_type == "Concat"
    for node in (n for n in qmodel.graph.node if n.name in keep):
        assert all(i not in prod or prod[i].op_type != "DequantizeLinear" for i in node.input), node.name
    assert all(n.op_type not in ("QuantizeLinear", "DequantizeLinear") for n in qmodel.graph.node if "output0" in n.output)
    # every residual Add of the C2f bottlenecks gets exactly one quantized input
    adds = [n for n in qmodel.graph.node if n.op_type == "Add" and n.name not in keep]
    assert len(adds) == 6
    for add in adds:
        assert sorted(prod[i].op_type == "DequantizeLinear" for i in add.input) == [False, True]
    # concat groups share one amax
    assert plan.concat_groups
    for group in plan.concat_groups:
        assert len({used[t] for t in group}) == 1
    x = np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)
    assert _run(qmodel, x).shape == (1, 84, 8400)
