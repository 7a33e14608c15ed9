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
from trtq.ort import ort_session
from trtq.qdq import dequantize_weight, ensure_opset, insert_qdq, plan_qdq, quantize_weight, unify_amax


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def _fake_amax(plan_tensors: list[str], value: float = 4.0) -> dict[str, float]:
    return {t: value + i * 0.01 for i, t in enumerate(plan_tensors)}


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The model on ONNX Runtime as trtq simulates TensorRT: Q/DQ computed exactly (no fused kernels)."""
    sess = ort_session(model.SerializeToString(), exact_qdq=True)
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


def _model(
    nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], x_shape: list[int], y: str, y_shape: list[int]
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, y_shape)], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_a_weight_shared_by_two_nodes_is_quantized_for_both() -> None:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((3, 3, 3, 3)) * 0.3).astype(np.float32)
    model = _model(
        [
            helper.make_node("Conv", ["x", "w"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
            helper.make_node("Conv", ["c0", "w"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        ],
        [numpy_helper.from_array(w, "w")], [1, 3, 8, 8], "c1", [1, 3, 8, 8],
    )
    plan = plan_qdq(model)
    assert plan.weight_readers == {"w": ["conv0", "conv1"]}
    qmodel, _ = insert_qdq(model, plan, {"x": 1.0, "c0": 4.0})
    onnx.checker.check_model(qmodel, full_check=True)
    prod = _producers(qmodel)
    for conv in (n for n in qmodel.graph.node if n.op_type == "Conv"):
        assert prod[conv.input[1]].op_type == "DequantizeLinear", conv.name  # no float weight is left
    # numerically: both convs use the fake-quantized weight
    x = rng.random((1, 3, 8, 8), dtype=np.float32)
    q, s = quantize_weight(w, 0)
    wq = dequantize_weight(q, s, 0)

    def fq(t: np.ndarray, amax: float) -> np.ndarray:
        scale = np.float32(amax / 127)
        return np.clip(np.rint(t / scale), -127, 127).astype(np.float32) * scale

    from onnx.reference import ReferenceEvaluator

    ref = ReferenceEvaluator(
        helper.make_model(helper.make_graph(
            [helper.make_node("Conv", ["a", "k"], ["b"], pads=[1, 1, 1, 1])], "c",
            [helper.make_tensor_value_info("a", TensorProto.FLOAT, None), helper.make_tensor_value_info("k", TensorProto.FLOAT, None)],
            [helper.make_tensor_value_info("b", TensorProto.FLOAT, None)]), opset_imports=[helper.make_opsetid("", 17)])
    )
    c0 = np.asarray(ref.run(None, {"a": fq(x, 1.0), "k": wq})[0])
    c1 = np.asarray(ref.run(None, {"a": fq(c0, 4.0), "k": wq})[0])
    np.testing.assert_allclose(_run(qmodel, x), c1, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("w_shape,x_shape,axis", [((3, 4), [4, 5], 0), ((2, 3, 4), [2, 4, 5], 1)])
def test_matmul_with_a_constant_left_operand_is_quantized_per_output_row(
    w_shape: tuple[int, ...], x_shape: list[int], axis: int
) -> None:
    """Y = W @ X: the output channels are W's rows (M), not its columns (K)."""
    rng = np.random.default_rng(1)
    w = (rng.standard_normal(w_shape) * np.logspace(-2, 1, w_shape[-2])[:, None]).astype(np.float32)
    y_shape = list(np.matmul(w, np.zeros(x_shape, np.float32)).shape)
    model = _model([helper.make_node("MatMul", ["w", "x"], ["y"], name="mm")], [numpy_helper.from_array(w, "w")], x_shape, "y", y_shape)
    plan = plan_qdq(model)
    assert plan.weights["w"] == ("mm", axis) and "x" in plan.activations
    qmodel, _ = insert_qdq(model, plan, {"x": 10.0})
    x = rng.uniform(-5, 5, x_shape).astype(np.float32)
    # brute force: every row m of W (over all batches) has its own scale max|W[.., m, :]| / 127
    amax = np.abs(w).max(axis=tuple(i for i in range(w.ndim) if i != axis), keepdims=True)
    wq = np.clip(np.rint(w / (amax / 127)), -127, 127) * (amax / 127)
    xs = np.float32(10.0 / 127)
    xq = np.clip(np.rint(x / xs), -127, 127) * xs
    np.testing.assert_allclose(_run(qmodel, x), np.matmul(wq, xq), rtol=1e-4, atol=1e-4)


def test_matmul_with_a_constant_right_operand_keeps_the_last_axis() -> None:
    w = np.ones((4, 6), np.float32)
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [numpy_helper.from_array(w, "w")], [2, 4], "y", [2, 6])
    assert plan_qdq(model).weights["w"] == ("mm", 1)


def test_a_weight_shared_along_two_channel_axes_keeps_the_second_reader_float() -> None:
    """x @ W reads W per column, W @ y per row: one Q/DQ cannot be both, so the second node stays float."""
    w = np.arange(16, dtype=np.float32).reshape(4, 4) / 16
    model = _model(
        [helper.make_node("MatMul", ["x", "w"], ["y1"], name="right"), helper.make_node("MatMul", ["w", "y1"], ["y2"], name="left")],
        [numpy_helper.from_array(w, "w")], [4, 4], "y2", [4, 4],
    )
    plan = plan_qdq(model)
    assert plan.weights["w"] == ("right", 1) and plan.weight_readers["w"] == ["right"]
    assert "another channel axis" in plan.float_nodes["left"] and "y1" not in plan.activations
    qmodel, _ = insert_qdq(model, plan, {"x": 1.0})
    left = next(n for n in qmodel.graph.node if n.name == "left")
    assert left.input[0] == "w"  # the float weight, still there for the float node
    x = np.eye(4, dtype=np.float32)
    assert np.isfinite(_run(qmodel, x)).all()
