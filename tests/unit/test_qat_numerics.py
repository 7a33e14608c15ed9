"""trtq.qat's fake quantization against ONNX Runtime's QuantizeLinear -> DequantizeLinear, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from trtq.qat import activation_scale, fake_quantize, weight_scale  # noqa: E402
from trtq.qdq import dequantize_weight, quantize_weight  # noqa: E402


def _ort_qdq(x: np.ndarray, scale: np.ndarray, axis: int | None = None) -> np.ndarray:
    """What the Q/DQ ONNX computes: QuantizeLinear (INT8, zero point 0) then DequantizeLinear."""
    s = numpy_helper.from_array(np.asarray(scale, np.float32), "s")
    z = numpy_helper.from_array(np.zeros(np.shape(scale), np.int8), "z")
    extra = {} if axis is None else {"axis": axis}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **extra),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **extra),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
        [s, z],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _ties(scale: np.float32, rng: np.random.Generator, n: int) -> np.ndarray:
    """Values whose x / scale is exactly k + 0.5 in float32 (checked), for k across and beyond the range."""
    k = rng.integers(-140, 140, n).astype(np.float32)
    x = ((k + np.float32(0.5)) * scale).astype(np.float32)
    exact = (x / scale).astype(np.float32) == k + np.float32(0.5)
    return x[exact]


@pytest.mark.parametrize("amax", [2.0**-3 * 127, 0.0123 * 127, 3.3, 17.25, 1e-3])
def test_activation_fake_quant_matches_onnxruntime_bit_for_bit(amax: float) -> None:
    rng = np.random.default_rng(int(amax * 1000))
    scale = activation_scale(amax)
    ties = _ties(scale, rng, 4000)
    assert ties.size > 100  # the rounding-half-to-even cases are really there
    x = np.concatenate(
        [
            (rng.standard_normal(200_000) * 60 * scale).astype(np.float32),  # ~3 % beyond each end of the range
            ties,
            np.array([0.0, -0.0, 127.5 * scale, -128.5 * scale, 1e30, -1e30], np.float32),
        ]
    ).astype(np.float32)
    ref = _ort_qdq(x, np.array(scale))
    got = fake_quantize(torch.from_numpy(x), torch.tensor(scale)).numpy()
    np.testing.assert_array_equal(got, ref)
    # the cases the test is about
    q = np.round(got / scale)
    assert q.max() == 127 and q.min() == -128  # saturation as ONNX / TensorRT explicit INT8 define it
    tq = np.round(fake_quantize(torch.from_numpy(ties), torch.tensor(scale)).numpy() / scale)
    assert np.all(tq % 2 == 0) or np.all(np.isin(tq[tq % 2 != 0], [127, -128]))  # half to even


def test_weight_fake_quant_matches_onnxruntime_and_trtq_export() -> None:
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((16, 8, 3, 3)) * rng.uniform(0.01, 2.0, (16, 1, 1, 1))).astype(np.float32)
    w[3] = 0.0  # an all-zero channel: scale 1/127, as the exporter writes it
    wt = torch.from_numpy(w)
    scale = weight_scale(wt)
    got = fake_quantize(wt, scale, -127, 127).numpy()
    q, s = quantize_weight(w, 0)  # what the Q/DQ ONNX stores
    np.testing.assert_array_equal(scale.numpy().reshape(-1), s)
    np.testing.assert_array_equal(got, dequantize_weight(q, s, 0))
    np.testing.assert_array_equal(got, _ort_qdq(w, s, axis=0))


def test_straight_through_gradient_inside_the_range_only() -> None:
    scale = torch.tensor(np.float32(0.5))
    x = torch.tensor([-70.0, -64.0, -1.3, 0.2, 63.5, 64.0, 80.0], requires_grad=True)
    fake_quantize(x, scale).sum().backward()
    assert x.grad is not None
    np.testing.assert_array_equal(x.grad.numpy(), [0, 1, 1, 1, 1, 0, 0])


def test_torch_builtin_fake_quant_differs_on_ties() -> None:
    """Why trtq does not use torch.fake_quantize_per_tensor_affine: it multiplies by 1/scale."""
    rng = np.random.default_rng(2)
    scale = activation_scale(0.0123 * 127)
    x = _ties(scale, rng, 4000)
    ref = _ort_qdq(x, np.array(scale))
    builtin = torch.fake_quantize_per_tensor_affine(torch.from_numpy(x), float(scale), 0, -128, 127).numpy()
    assert np.count_nonzero(builtin != ref) > 0
    np.testing.assert_array_equal(fake_quantize(torch.from_numpy(x), torch.tensor(scale)).numpy(), ref)
