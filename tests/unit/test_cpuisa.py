"""CPU instruction sets: exact Q/DQ simulation, the 16-bit saturation rule, per-ISA weight layouts.

Nothing here depends on the CPU that runs it: saturating kernels are emulated in numpy (VPMADDUBSW adds
each adjacent pair of u8 x s8 products in saturating int16) and the exact arithmetic is checked against
onnx's ReferenceEvaluator.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import make_tiny_conv_onnx
from tests.fakes import write_images
from trtq.cpuisa import (
    FULL8_KEY,
    INT16_MAX,
    INT16_MIN,
    ISA_ARM64,
    ISA_AVX2,
    ISA_AVX512_VNNI,
    ISA_AVX_VNNI,
    ISA_KEY,
    ISA_LAYOUT,
    PAIR_LIMIT,
    TARGET_CPU,
    TARGET_KEY,
    WEIGHTS_KEY,
    WEIGHTS_S8,
    WEIGHTS_S8_DATA,
    WEIGHTS_S8_PAIR128,
    CpuIsa,
    channel_pair_sums,
    detect_isa,
    model_metadata,
    pair_sum_fits,
    quantize_fitting,
    resolve_isa,
    saturating_weights,
    saturation_warning,
    worst_pair_sum,
)
from trtq.errors import TrtqError
from trtq.ort import exact_qdq_sessions, ort_session
from trtq.quantize_options import QuantizeOptions

X_SCALE = 1 / 255
Y_SCALE, Y_ZERO = 0.25, 128
W_SCALE = 0.002


# ------------------------------------------------------------------------------------------------ helpers
def _saturating_weights(m: int = 4, c: int = 6, k: int = 3, seed: int = 0) -> np.ndarray:
    """s8 codes whose same-sign neighbours add up to far more than 128."""
    rng = np.random.default_rng(seed)
    w = rng.integers(70, 128, (m, c, k, k))
    sign = np.where(rng.random((m, 1, 1, 1)) < 0.5, -1, 1)
    return (w * sign).astype(np.int8)


def _conv_model(wq: np.ndarray, *, hw: int = 8, meta: dict[str, str] | None = None, opset: int = 13) -> onnx.ModelProto:
    """images -> Q/DQ (u8, S=1/255, Z=0) -> Conv (s8 per-channel weights) -> Q/DQ (u8): the CPU layout of one conv."""
    m, c, k, _ = wq.shape
    inits = [
        numpy_helper.from_array(wq, "w_q"),
        numpy_helper.from_array(np.full(m, W_SCALE, np.float32), "w_s"),
        numpy_helper.from_array(np.zeros(m, np.int8), "w_z"),
        numpy_helper.from_array(np.array(X_SCALE, np.float32), "x_s"),
        numpy_helper.from_array(np.array(0, np.uint8), "x_z"),
        numpy_helper.from_array(np.array(Y_SCALE, np.float32), "y_s"),
        numpy_helper.from_array(np.array(Y_ZERO, np.uint8), "y_z"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["images", "x_s", "x_z"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_s", "x_z"], ["x_d"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w_d"], axis=0),
        helper.make_node("Conv", ["x_d", "w_d"], ["y"], name="conv", pads=[k // 2] * 4),
        helper.make_node("QuantizeLinear", ["y", "y_s", "y_z"], ["y_q"]),
        helper.make_node("DequantizeLinear", ["y_q", "y_s", "y_z"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "conv", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, c, hw, hw])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, m, hw, hw])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    for key, value in (meta or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    return model


def _reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """onnx's ReferenceEvaluator (independent of ONNX Runtime; opset 19 for its Q/DQ kernels)."""
    from onnx.reference import ReferenceEvaluator

    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.opset_import[0].version = 19
    outs: Any = ReferenceEvaluator(m).run(None, {"images": x})
    return np.asarray(outs[0])


def emulated_conv(wq: np.ndarray, x: np.ndarray, *, saturate: bool) -> np.ndarray:
    """The model of :func:`_conv_model` computed on integer codes as ONNX Runtime's x86 kernels do: u8 x s8
    products along K in channels-last order, each adjacent pair added in int16 (saturating when asked, as
    VPMADDUBSW does on CPUs without VNNI), then summed in int32."""
    m, c, k, _ = wq.shape
    xq = np.clip(np.rint(x[0] / np.float32(X_SCALE)), 0, 255).astype(np.int64)  # [C, H, W], zero point 0
    p = k // 2
    xp = np.pad(xq, ((0, 0), (p, p), (p, p)))
    h, w = xq.shape[1:]
    cols = np.stack([xp[:, i : i + h, j : j + w] for i in range(k) for j in range(k)])  # [k*k, C, H, W]
    cols = cols.reshape(k * k * c, h * w)  # K order: (kh, kw, c)
    wf = np.moveaxis(wq.astype(np.int64), 1, -1).reshape(m, -1)  # [M, (kh, kw, c)]
    prod = wf[:, :, None] * cols[None]  # [M, K, HW]
    if prod.shape[1] % 2:
        prod = np.concatenate([prod, np.zeros_like(prod[:, :1])], axis=1)
    pairs = prod[:, 0::2] + prod[:, 1::2]
    if saturate:
        pairs = np.clip(pairs, INT16_MIN, INT16_MAX)
    acc = pairs.sum(axis=1).astype(np.float64)  # [M, HW]
    y = acc * X_SCALE * W_SCALE
    yq = np.clip(np.rint(y / Y_SCALE) + Y_ZERO, 0, 255)
    return ((yq - Y_ZERO) * Y_SCALE).reshape(1, m, h, w).astype(np.float32)


def _bright(c: int, hw: int = 8, seed: int = 1) -> np.ndarray:
    """Pixels near 1 (u8 codes near 255): the largest pair sums."""
    return np.random.default_rng(seed).uniform(0.9, 1.0, (1, c, hw, hw)).astype(np.float32)


# ------------------------------------------------------------------------------- 1. exact simulation
def test_the_graph_saturates_where_pairs_add_in_16_bits() -> None:
    """Precondition of the next tests: on this graph a saturating kernel gives other numbers."""
    wq = _saturating_weights()
    x = _bright(wq.shape[1])
    exact = emulated_conv(wq, x, saturate=False)
    np.testing.assert_allclose(exact, _reference(_conv_model(wq), x), atol=Y_SCALE + 1e-6)
    assert np.max(np.abs(emulated_conv(wq, x, saturate=True) - exact)) > 10 * Y_SCALE


def test_exact_qdq_session_equals_the_reference_evaluator_on_any_cpu() -> None:
    wq = _saturating_weights()
    model = _conv_model(wq)
    for x in (_bright(wq.shape[1]), np.random.default_rng(2).random((1, wq.shape[1], 8, 8), dtype=np.float32)):
        got = ort_session(model.SerializeToString(), exact_qdq=True).run(None, {"images": x})[0]
        ref = _reference(model, x)
        # exact up to a rare one-code rounding flip of the output (float32 accumulation order)
        assert np.mean(np.abs(got - ref) > 1e-6) < 0.01
        assert np.max(np.abs(got - ref)) <= Y_SCALE + 1e-6


def test_sessions_built_by_other_libraries_are_exact_inside_the_block() -> None:
    import onnxruntime as ort

    wq = _saturating_weights(seed=3)
    model = _conv_model(wq)
    x = _bright(wq.shape[1], seed=4)
    with exact_qdq_sessions():
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"images": x})[0]
    assert ort.InferenceSession.__name__ == "InferenceSession"  # restored
    assert np.max(np.abs(got - _reference(model, x))) <= Y_SCALE + 1e-6


def test_runtime_session_simulates_a_tensorrt_qdq_model_exactly(tmp_path: Path) -> None:
    """The runtime's OnnxSession computes a TensorRT-target Q/DQ ONNX exactly (it simulates TensorRT)."""
    from trtq.runtime.sessions import OnnxSession

    wq = _saturating_weights(c=3)
    model = _conv_model(wq)  # no trtq_target: a TensorRT Q/DQ model
    path = tmp_path / "trt.onnx"
    onnx.save(model, str(path))
    x = _bright(3)
    sess = OnnxSession(path)
    sess.input_buffer(1)[...] = x
    got = sess.run(1)[0]
    assert np.max(np.abs(got - _reference(model, x))) <= Y_SCALE + 1e-6


# ------------------------------------------------------------------------------------ 2. ISA detection
@pytest.mark.parametrize(
    ("flags", "machine", "isa"),
    [
        ("fpu sse2 avx avx2 fma", "x86_64", ISA_AVX2),
        ("fpu avx2 avx512f avx512bw", "x86_64", ISA_AVX2),  # AVX512 without VNNI: VPMADDUBSW too
        ("fpu avx2 avx_vnni", "x86_64", ISA_AVX_VNNI),
        ("fpu avx2 avx512f avx512_vnni amx_int8", "x86_64", ISA_AVX512_VNNI),
        ("", "aarch64", ISA_ARM64),
        ("", "arm64", ISA_ARM64),
    ],
)
def test_isa_is_read_from_cpu_flags_and_machine(flags: str, machine: str, isa: str) -> None:
    cpuinfo = f"processor\t: 0\nflags\t\t: {flags}\n" if flags else "processor\t: 0\n"
    found = detect_isa(cpuinfo=cpuinfo, machine=machine)
    assert found.isa == isa
    assert found.reason


def test_auto_names_this_cpu_and_unknown_isas_are_refused() -> None:
    assert resolve_isa("auto").reason.startswith("auto: this CPU")
    assert resolve_isa(None).isa == detect_isa().isa
    assert resolve_isa("arm64") == CpuIsa(ISA_ARM64, "asked for (--cpu-isa)")
    with pytest.raises(TrtqError, match="unknown CPU ISA"):
        resolve_isa("sse2")


# ------------------------------------------------------------------------------- 3. the saturation rule
def test_pair_limit_is_the_largest_sum_that_fits_int16() -> None:
    assert 255 * PAIR_LIMIT <= INT16_MAX < 255 * (PAIR_LIMIT + 1)
    assert -255 * PAIR_LIMIT >= INT16_MIN


@pytest.mark.parametrize(("c", "k"), [(3, 3), (16, 1), (32, 3)])
def test_fitting_weights_never_saturate_and_lose_less_than_7_bits(c: int, k: int) -> None:
    rng = np.random.default_rng(c + k)
    w = (rng.standard_normal((16, c, k, k)) * rng.uniform(0.01, 1.0, (16, 1, 1, 1))).astype(np.float32)
    w[:, :, k // 2, k // 2] *= 4  # a heavy centre tap, as trained convs have: large same-sign neighbours
    q, scale = quantize_fitting(w)
    assert q.dtype == np.int8 and scale.shape == (16,)
    assert pair_sum_fits(q)
    amax = np.abs(w.reshape(16, -1)).max(axis=1)
    bshape = (16, 1, 1, 1)

    def sq_err(codes: np.ndarray, s: np.ndarray) -> np.ndarray:
        return (((codes * s.reshape(bshape)) - w) ** 2).reshape(16, -1).sum(axis=1)

    s7 = amax / 63
    err7 = sq_err(np.clip(np.rint(w / s7.reshape(bshape)), -63, 63), s7)
    s8 = amax / 127
    q8 = np.clip(np.rint(w / s8.reshape(bshape)), -127, 127).astype(np.int8)
    err = sq_err(q.astype(np.float64), scale)
    # a channel that fits at 8 bits keeps its plain 8-bit codes; the others get a grid finer than 7 bits
    fits8 = np.array([pair_sum_fits(q8[i : i + 1]) for i in range(16)])
    np.testing.assert_array_equal(q[fits8], q8[fits8])
    np.testing.assert_allclose(scale[fits8], s8[fits8], rtol=1e-6)
    assert np.all(scale <= s7 * (63 / 64) * (1 + 1e-6))
    assert not fits8.all() and np.mean(err) < np.mean(err7)
    # the finest: one step finer and some pair of the channel would not fit
    for i in np.flatnonzero(~fits8):
        qmax = round(float(amax[i] / scale[i]))
        finer = np.clip(np.rint(w[i : i + 1] / (amax[i] / (qmax + 1))), -127, 127)
        assert channel_pair_sums(finer)[0] > PAIR_LIMIT
    x = _bright(c, seed=9)
    np.testing.assert_array_equal(emulated_conv(q, x, saturate=True), emulated_conv(q, x, saturate=False))


def test_worst_pair_sum_is_reached_by_an_input() -> None:
    """The bound is tight: the input with code 255 where a weight is positive reaches it."""
    wq = np.zeros((1, 4, 1, 1), np.int8)
    wq[0, :, 0, 0] = [100, 60, -90, -50]
    assert worst_pair_sum(wq) == (255 * 160, -255 * 140)
    assert not pair_sum_fits(wq)
    codes = np.array([255, 255, 0, 0])  # where the weights are positive
    assert int(codes[:2] @ wq[0, :2, 0, 0].astype(int)) == 255 * 160 > INT16_MAX
    assert pair_sum_fits(wq, act_max=204)  # codes up to 204: 204 * 160 = 32640 fits


@pytest.mark.parametrize("isa", [ISA_AVX2, ISA_AVX_VNNI, ISA_AVX512_VNNI, ISA_ARM64])
def test_quantized_tiny_model_records_its_isa_and_the_avx2_layout_fits_int16(
    isa: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trtq.headpolicy
    from trtq.cpu_target import quantize_cpu

    monkeypatch.setattr(trtq.headpolicy, "float_nodes", lambda model: {"/model.4/Conv": "final head conv (test)"})
    model = make_tiny_conv_onnx(tmp_path / "tiny.onnx", hw=32)
    images = write_images(tmp_path / "im", 4, size=(32, 32))
    r = quantize_cpu(model, images, QuantizeOptions(target="cpu", cpu_isa=isa, progress=False),
                     output=tmp_path / f"{isa}.onnx")
    q = onnx.load(str(r.path))
    meta = {p.key: p.value for p in q.metadata_props}
    layout = WEIGHTS_S8_PAIR128 if isa == ISA_AVX2 else WEIGHTS_S8
    assert meta[ISA_KEY] == isa and meta[WEIGHTS_KEY] == layout and meta[TARGET_KEY] == TARGET_CPU
    assert r.report["options"]["cpu_isa"] == isa and r.report["options"]["weights"] == layout
    assert f"CPU ISA {isa}" in r.summary()
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    weights = [inits[w] for w in ("w0_quantized", "w1_quantized")]
    if isa == ISA_AVX2:
        for w in weights:
            hi, lo = worst_pair_sum(w)
            assert hi <= INT16_MAX and lo >= INT16_MIN, (hi, lo)
        assert saturating_weights(q) == []
    else:
        assert max(int(np.abs(w.astype(int)).max()) for w in weights) == 127


def test_reduce_range_wins_over_the_isa_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trtq.headpolicy
    from trtq.cpu_target import quantize_cpu

    monkeypatch.setattr(trtq.headpolicy, "float_nodes", lambda model: {"/model.4/Conv": "final head conv (test)"})
    model = make_tiny_conv_onnx(tmp_path / "tiny.onnx", hw=32)
    images = write_images(tmp_path / "im", 4, size=(32, 32))
    options = QuantizeOptions(target="cpu", cpu_isa=ISA_AVX512_VNNI, reduce_range=True, progress=False)
    r = quantize_cpu(model, images, options, output=tmp_path / "r.onnx")
    meta = {p.key: p.value for p in onnx.load(str(r.path)).metadata_props}
    assert meta[WEIGHTS_KEY] == "s7" and r.report["options"]["weight_bits"] == 7


@pytest.mark.slow
def test_shared_yolov8n_avx2_layout_fits_int16_and_the_vnni_one_does_not(yolo_onnx: Path, calib_dir: Path, tmp_path: Path) -> None:
    from trtq.cpu_target import quantize_cpu

    worst = {}
    for isa in (ISA_AVX2, ISA_AVX512_VNNI):
        r = quantize_cpu(yolo_onnx, calib_dir, QuantizeOptions(target="cpu", num_images=2, cpu_isa=isa, progress=False),
                         output=tmp_path / f"{isa}.onnx")
        q = onnx.load(str(r.path))
        worst[isa] = saturating_weights(q)
        if isa == ISA_AVX2:
            for init in q.graph.initializer:
                if init.name.endswith("_quantized") and init.data_type == TensorProto.INT8:
                    hi, lo = worst_pair_sum(numpy_helper.to_array(init))
                    assert hi <= INT16_MAX and lo >= INT16_MIN, init.name
    assert worst[ISA_AVX2] == []
    assert len(worst[ISA_AVX512_VNNI]) > 0  # the rule bites on the real model: full 8 bits can saturate


# ------------------------------------------------------------------------------------------ warnings
def _cpu_model(tmp_path: Path, wq: np.ndarray, isa: str, layout: str) -> Path:
    path = tmp_path / f"cpu-{isa}.onnx"
    onnx.save(_conv_model(wq, meta={TARGET_KEY: TARGET_CPU, ISA_KEY: isa, WEIGHTS_KEY: layout}), str(path))
    return path


def test_a_vnni_model_on_a_cpu_without_vnni_gets_one_warning_line(tmp_path: Path) -> None:
    wq = _saturating_weights(c=3)
    vnni = model_metadata(_cpu_model(tmp_path, wq, ISA_AVX512_VNNI, WEIGHTS_S8))
    avx2 = model_metadata(_cpu_model(tmp_path, quantize_fitting(wq.astype(np.float32))[0], ISA_AVX2, WEIGHTS_S8_PAIR128))
    host = CpuIsa(ISA_AVX2, "test")
    msg = saturation_warning(vnni, "m.onnx", host=host)
    assert msg is not None and "\n" not in msg and "--cpu-isa avx2" in msg and "avx512-vnni" in msg
    for other in (ISA_AVX_VNNI, ISA_AVX512_VNNI, ISA_ARM64):
        assert saturation_warning(vnni, "m.onnx", host=CpuIsa(other, "test")) is None
    assert saturation_warning(avx2, "m.onnx", host=host) is None
    assert saturation_warning({**vnni, WEIGHTS_KEY: "s7"}, "m.onnx", host=host) is None
    legacy = {TARGET_KEY: TARGET_CPU}  # made before layouts were recorded: full 8-bit weights
    assert saturation_warning(legacy, "m.onnx", host=host) is not None
    assert saturation_warning({}, "m.onnx", host=host) is None  # not a CPU-target model
    # the metadata tells the truth about the weights: the rule on the weights themselves agrees
    assert saturating_weights(onnx.load(str(tmp_path / f"cpu-{ISA_AVX512_VNNI}.onnx"))) == ["w_q"]
    assert saturating_weights(onnx.load(str(tmp_path / f"cpu-{ISA_AVX2}.onnx"))) == []


def test_detector_session_warns_once_on_a_saturating_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    import trtq.cpuisa
    from trtq.runtime.sessions import OnnxSession

    monkeypatch.setattr(trtq.cpuisa, "detect_isa", lambda **_: CpuIsa(ISA_AVX2, "emulated"))
    monkeypatch.setattr(trtq.cpuisa, "_warned", set())
    path = _cpu_model(tmp_path, _saturating_weights(c=3), ISA_AVX512_VNNI, WEIGHTS_S8)
    with caplog.at_level(logging.WARNING):
        OnnxSession(path)
        OnnxSession(path)
    lines = [r.getMessage() for r in caplog.records if "saturating 16 bits" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]


def test_evaluate_and_bench_share_the_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """eval and bench call the one helper (on CPU-target ONNX only)."""
    import trtq.cpuisa
    import trtq.evaluate

    monkeypatch.setattr(trtq.cpuisa, "detect_isa", lambda **_: CpuIsa(ISA_AVX2, "emulated"))
    monkeypatch.setattr(trtq.cpuisa, "_warned", set())
    calls: list[str] = []
    monkeypatch.setattr(trtq.evaluate, "warn_if_saturating", lambda meta, name, log=None: calls.append(name))
    path = _cpu_model(tmp_path, _saturating_weights(c=3), ISA_AVX512_VNNI, WEIGHTS_S8)
    assert trtq.evaluate._exact_arithmetic(path, None) is False and calls == [path.name]
    assert trtq.evaluate._exact_arithmetic(path, True) is True
    trt = tmp_path / "trt.onnx"
    onnx.save(_conv_model(_saturating_weights(c=3)), str(trt))
    assert trtq.evaluate._exact_arithmetic(trt, None) is True and len(calls) == 1


def test_clipped_int32_biases_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    from trtq.cpu_target import QParams, insert_cpu_qdq, plan_cpu

    w = np.full((2, 3, 1, 1), 1e-3, np.float32)
    b = np.array([1e9, 0.5], np.float32)  # 1e9 / (S_x * S_w) is far beyond int32
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="c0"), helper.make_node("Relu", ["y"], ["z"], name="r")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    plan = plan_cpu(model)
    clipped: list[str] = []
    params = {t: QParams(1 / 255, 0, 0.0, 1.0, "u8") for t in plan.range_tensors}
    insert_cpu_qdq(model, plan, params, clipped_biases=clipped)
    assert clipped == ["c0"]


# ------------------------------------------------------------------------------- reference and verify
def test_cpu_model_reference_is_the_intended_arithmetic_and_verify_catches_saturation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reference outputs of a CPU-target model are exact (as every CPU with int32 accumulation computes
    them, whatever CPU wrote them); a run that saturates, emulated here, fails verify, an exact run passes."""
    import trtq.verify
    from trtq.reference import load_inputs, load_outputs, write_reference

    wq = _saturating_weights(m=8, c=3, k=3, seed=7)
    path = _cpu_model(tmp_path, wq, ISA_AVX512_VNNI, WEIGHTS_S8)
    # bright images: u8 codes near 255, where 16-bit pair sums overflow
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    rng = np.random.default_rng(8)
    for i in range(4):
        Image.fromarray(rng.integers(235, 256, (8, 8, 3), dtype=np.uint8)).save(images / f"{i}.png")
    ref = write_reference(path, images, num_images=4)
    feeds = load_inputs(ref.inputs_path)
    expected, _ = load_outputs(ref.outputs_path)
    for feed, out in zip(feeds, expected, strict=True):
        assert np.max(np.abs(out["out"] - _reference(_conv_model(wq), feed["images"]))) <= Y_SCALE + 1e-6

    def emulated(saturate: bool):  # noqa: ANN202
        return lambda p, fs: [{"out": emulated_conv(wq, f["images"], saturate=saturate)} for f in fs]

    monkeypatch.setattr(trtq.verify, "_run_onnx", emulated(True))
    assert not trtq.verify.verify(path).passed
    monkeypatch.setattr(trtq.verify, "_run_onnx", emulated(False))
    assert trtq.verify.verify(path).passed


def test_quantize_warns_when_it_clips_a_bias(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    import trtq.headpolicy
    from trtq.cpu_target import quantize_cpu

    monkeypatch.setattr(trtq.headpolicy, "float_nodes", lambda model: {"/model.4/Conv": "final head conv (test)"})
    model = make_tiny_conv_onnx(tmp_path / "tiny.onnx", hw=32)
    m = onnx.load(str(model))
    for init in m.graph.initializer:
        if init.name == "b1":
            init.CopyFrom(numpy_helper.from_array(np.full(8, 1e12, np.float32), "b1"))
    onnx.save(m, str(model))
    images = write_images(tmp_path / "im", 4, size=(32, 32))
    with caplog.at_level(logging.WARNING, logger="trtq.cpu_target"):
        r = quantize_cpu(model, images, QuantizeOptions(target="cpu", cpu_isa=ISA_ARM64, progress=False),
                         output=tmp_path / "q.onnx")
    lines = [rec.getMessage() for rec in caplog.records if "do not fit int32" in rec.getMessage()]
    assert len(lines) == 1 and "/model.1/conv/Conv" in lines[0]
    assert r.report["options"]["clipped_biases"] == ["/model.1/conv/Conv"]


# ------------------------------------------------------------------------ s8-data: calibrated input codes
def _conv_attr(node: onnx.NodeProto, name: str, default: list[int]) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == name), default)


def _emulated_pair_extremes(qmodel: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> dict[str, tuple[int, int]]:
    """Per quantized Conv of a CPU-target model, the (largest, smallest) sum of two adjacent u8 x s8 products
    that a pairwise 16-bit adder (VPMADDUBSW) meets on ``feeds``: the u8 codes of each conv input come from
    running the model exactly (``session.disable_quant_qdq``), padded with the zero point, laid out along K
    channels last (kh, kw, c) and, where c is not a multiple of 4, with every position's channels padded to 4."""
    import onnxruntime as ort

    graph = qmodel.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    prod = {o: n for n in graph.node for o in n.output}
    convs = []
    for n in (n for n in graph.node if n.op_type == "Conv"):
        dq_x, dq_w = prod.get(n.input[0]), prod.get(n.input[1])
        if dq_x is not None and dq_x.op_type == "DequantizeLinear" and dq_w is not None \
                and dq_w.op_type == "DequantizeLinear" and dq_w.input[0] in inits:
            convs.append((n, dq_x.input[0], int(inits[dq_x.input[2]]), inits[dq_w.input[0]].astype(np.int64)))
    m = onnx.ModelProto()
    m.CopyFrom(qmodel)
    codes_names = list(dict.fromkeys(c[1] for c in convs))
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.UINT8, None) for t in codes_names if t not in have)
    so = ort.SessionOptions()
    so.add_session_config_entry("session.disable_quant_qdq", "1")
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    result: dict[str, tuple[int, int]] = {}
    for feed in feeds:
        got = dict(zip(codes_names, sess.run(codes_names, feed), strict=True))
        for node, tname, zero, wq in convs:
            k = wq.shape[2:]
            pads = _conv_attr(node, "pads", [0] * 4)
            strides = _conv_attr(node, "strides", [1, 1])
            for x in np.asarray(got[tname]).astype(np.int64):  # [C, H, W] per image
                xp = np.pad(x, ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])), constant_values=zero)
                ho = (xp.shape[1] - k[0]) // strides[0] + 1
                wo = (xp.shape[2] - k[1]) // strides[1] + 1
                cols = np.stack([xp[:, i : i + ho * strides[0] : strides[0], j : j + wo * strides[1] : strides[1]]
                                 for i in range(k[0]) for j in range(k[1])])  # [kk, C, ho, wo]
                c = cols.shape[1]
                w = np.moveaxis(wq, 1, -1).reshape(wq.shape[0], k[0] * k[1], c)  # [M, kk, C]
                for pad4 in sorted({0, -c % 4}):
                    a = np.concatenate([cols, np.zeros((cols.shape[0], pad4, ho, wo), np.int64)], axis=1)
                    ww = np.concatenate([w, np.zeros((w.shape[0], w.shape[1], pad4), np.int64)], axis=2)
                    a = a.reshape(-1, ho * wo)  # K order (kh, kw, c)
                    ww = ww.reshape(ww.shape[0], -1)
                    if a.shape[0] % 2:
                        a, ww = np.pad(a, ((0, 1), (0, 0))), np.pad(ww, ((0, 0), (0, 1)))
                    hi, lo = result.get(node.name, (0, 0))
                    for o in range(ww.shape[0]):  # one output channel at a time: bounded memory
                        pairs = ww[o, 0::2, None] * a[0::2] + ww[o, 1::2, None] * a[1::2]
                        hi, lo = max(hi, int(pairs.max())), min(lo, int(pairs.min()))
                    result[node.name] = (hi, lo)
    return result


def _input_codes(qmodel: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per quantized conv weight (initializer name), the largest u8 code of each input channel on ``feeds``
    (at least the zero point, which padding inserts), computed from the model run exactly."""
    import onnxruntime as ort

    graph = qmodel.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    prod = {o: n for n in graph.node for o in n.output}
    pairs = [(prod[n.input[1]].input[0], prod[n.input[0]]) for n in graph.node
             if n.op_type == "Conv" and n.input[1] in prod and n.input[0] in prod
             and prod[n.input[0]].op_type == "DequantizeLinear"]
    m = onnx.ModelProto()
    m.CopyFrom(qmodel)
    names = list(dict.fromkeys(dq.input[0] for _, dq in pairs))
    m.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.UINT8, None) for t in names)
    so = ort.SessionOptions()
    so.add_session_config_entry("session.disable_quant_qdq", "1")
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    top: dict[str, np.ndarray] = {}
    for feed in feeds:
        for t, v in zip(names, sess.run(names, feed), strict=True):
            mx = np.asarray(v).astype(np.int64).max(axis=(0, 2, 3))
            top[t] = mx if t not in top else np.maximum(top[t], mx)
    return {w: np.maximum(top[dq.input[0]], int(inits[dq.input[2]])) for w, dq in pairs}


@pytest.mark.parametrize(("c", "k"), [(3, 3), (16, 1), (32, 3)])
def test_data_fitted_weights_keep_8_bits_where_input_codes_allow_and_never_saturate(c: int, k: int) -> None:
    from trtq.cpuisa import fit_grid

    rng = np.random.default_rng(c + k)
    w = (rng.standard_normal((16, c, k, k)) * rng.uniform(0.01, 1.0, (16, 1, 1, 1))).astype(np.float32)
    w[:, :, k // 2, k // 2] *= 4
    codes = rng.integers(60, 256, c)
    codes[0] = 255
    q, scale, qmax = fit_grid(w, codes=codes)
    assert pair_sum_fits(q, codes=codes)  # analytic: every pair times its channels' largest codes fits int16
    # the same through the emulated kernel: every input channel at its largest code
    x = np.broadcast_to((codes / 255.0).astype(np.float32)[None, :, None, None], (1, c, 8, 8)).copy()
    np.testing.assert_array_equal(emulated_conv(q, x, saturate=True), emulated_conv(q, x, saturate=False))
    # it keeps more of the 8-bit grid than the data-free rule, which must assume code 255 everywhere
    assert (qmax == 127).sum() > (fit_grid(w)[2] == 127).sum() or (fit_grid(w)[2] == 127).all()
    assert np.all(qmax >= fit_grid(w)[2])
    # the finest: one step finer and some pair would saturate with those codes
    amax = np.abs(w.reshape(16, -1)).max(axis=1)
    for i in np.flatnonzero(qmax < 127):
        finer = np.clip(np.rint(w[i : i + 1] / (amax[i] / (qmax[i] + 1))), -127, 127)
        assert channel_pair_sums(finer, codes)[0] > INT16_MAX
    # inputs that never pass code 128 cannot saturate any 8-bit pair: every channel keeps 127
    assert (fit_grid(w, codes=np.minimum(codes, 128))[2] == 127).all()
    np.testing.assert_allclose(fit_grid(w, codes=np.minimum(codes, 128))[1], amax / 127, rtol=1e-6)


def test_emulated_kernel_finds_the_saturation_of_full_8_bit_weights() -> None:
    """The emulator of the next tests can fail: full 8-bit weights on bright inputs saturate in it."""
    wq = _saturating_weights(m=4, c=6, k=3)
    model = _conv_model(wq)
    hi, lo = next(iter(_emulated_pair_extremes(model, [{"images": _bright(6)}]).values()))
    assert hi > INT16_MAX or lo < INT16_MIN
    fitted = quantize_fitting(wq.astype(np.float32))[0]
    hi, lo = next(iter(_emulated_pair_extremes(_conv_model(fitted), [{"images": _bright(6)}]).values()))
    assert INT16_MIN <= lo and hi <= INT16_MAX


def test_s8_data_layout_bounds_pairs_by_the_calibrated_input_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trtq.headpolicy
    from trtq.amax import calibration_batcher
    from trtq.cpu_target import quantize_cpu

    monkeypatch.setattr(trtq.headpolicy, "float_nodes", lambda model: {})
    monkeypatch.setitem(ISA_LAYOUT, ISA_AVX2, WEIGHTS_S8_DATA)
    model = make_tiny_conv_onnx(tmp_path / "tiny.onnx", hw=32, seed=3)
    images = write_images(tmp_path / "im", 4, size=(32, 32))
    r = quantize_cpu(model, images, QuantizeOptions(target="cpu", cpu_isa=ISA_AVX2, progress=False),
                     output=tmp_path / "avx2.onnx")
    q = onnx.load(str(r.path))
    meta = model_metadata(q)
    assert meta[WEIGHTS_KEY] == WEIGHTS_S8_DATA == r.report["options"]["weights"]
    full8, total = (int(v) for v in meta[FULL8_KEY].split(" of "))
    assert total == 8 + 8 and 0 <= full8 <= total  # the last conv writes a graph output: float and r.report["options"]["weights_8bit_channels"] == meta[FULL8_KEY]
    feeds = list(calibration_batcher(model, images))
    codes = _input_codes(q, feeds)
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    for w, c in codes.items():
        assert pair_sum_fits(inits[w], codes=c), w  # the analytic rule with the calibrated maxima
    for conv, (hi, lo) in _emulated_pair_extremes(q, feeds).items():
        assert INT16_MIN <= lo and hi <= INT16_MAX, (conv, hi, lo)


@pytest.mark.slow
def test_shared_yolov8n_s8_data_layout_fits_int16_on_its_calibration_inputs(
    yolo_onnx: Path, calib_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trtq.amax import calibration_batcher
    from trtq.cpu_target import quantize_cpu

    monkeypatch.setitem(ISA_LAYOUT, ISA_AVX2, WEIGHTS_S8_DATA)
    feeds = list(calibration_batcher(yolo_onnx, calib_dir, num_images=2))
    r = quantize_cpu(yolo_onnx, calib_dir, QuantizeOptions(target="cpu", num_images=2, cpu_isa=ISA_AVX2, progress=False),
                     output=tmp_path / "data.onnx")
    q = onnx.load(str(r.path))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    for w, codes in _input_codes(q, feeds).items():
        hi, lo = worst_pair_sum(inits[w], codes=codes)
        assert hi <= INT16_MAX and lo >= INT16_MIN, w
    full8, total = (int(v) for v in model_metadata(q)[FULL8_KEY].split(" of "))
    assert 0 < len(saturating_weights(q)) and full8 < total  # 8-bit pairs that only the data keeps safe
    extremes = _emulated_pair_extremes(q, feeds[:1])
    assert len(extremes) == 57 and all(INT16_MIN <= lo and hi <= INT16_MAX for hi, lo in extremes.values())
    # the emulator sees the saturation of full 8-bit weights on the same image
    r8 = quantize_cpu(yolo_onnx, calib_dir,
                      QuantizeOptions(target="cpu", num_images=2, cpu_isa=ISA_AVX512_VNNI, progress=False),
                      output=tmp_path / "s8.onnx")
    full = _emulated_pair_extremes(onnx.load(str(r8.path)), feeds[:1])
    assert any(hi > INT16_MAX or lo < INT16_MIN for hi, lo in full.values())


def test_s8_data_without_images_falls_back_to_the_data_free_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import trtq.headpolicy
    from trtq.amax import collect_statistics
    from trtq.cpu_target import plan_cpu, quantize_cpu

    monkeypatch.setattr(trtq.headpolicy, "float_nodes", lambda model: {})
    monkeypatch.setitem(ISA_LAYOUT, ISA_AVX2, WEIGHTS_S8_DATA)
    model = make_tiny_conv_onnx(tmp_path / "tiny.onnx", hw=32)
    images = write_images(tmp_path / "im", 2, size=(32, 32))
    tensors = plan_cpu(onnx.load(str(model))).range_tensors
    hists, _ = collect_statistics(model, images, tensors, progress=False, fused_silu=False)
    with caplog.at_level(logging.WARNING):
        r = quantize_cpu(model, None, QuantizeOptions(target="cpu", cpu_isa=ISA_AVX2, progress=False),
                         output=tmp_path / "q.onnx", histograms=hists)
    assert model_metadata(r.path)[WEIGHTS_KEY] == WEIGHTS_S8_PAIR128 == r.report["options"]["weights"]
    assert any("no calibration images to bound" in m for m in caplog.messages)
    assert saturating_weights(onnx.load(str(r.path))) == []
