"""Streaming statistics: checked against numpy on activations read straight from ONNX Runtime, and
against ONNX Runtime's own MinMax calibrator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calibrators.collect import (
    _Accumulator,
    calibration_tensors,
    collect_histograms,
    plan_statistics,
)
from tests.conftest import make_tiny_conv_onnx


def _batches(n: int, batch: int, hw: int = 32, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    images = rng.random((n, 3, hw, hw), dtype=np.float32)
    return [{"images": images[i : i + batch]} for i in range(0, n, batch)]


def _activations(model_path: Path, names: list[str], feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Independent reference: expose the tensors as outputs and read every value."""
    m = onnx.load(str(model_path))
    existing = {o.name for o in m.graph.output}
    for n in names:
        if n not in existing:
            m.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in feeds:
        for n, v in zip(names, sess.run(names, feed), strict=True):
            out[n].append(v.ravel())
    return {n: np.concatenate(v) for n, v in out.items()}


@pytest.fixture
def dyn_model(tmp_path: Path) -> Path:
    return make_tiny_conv_onnx(tmp_path / "dyn.onnx", batch="N")


def test_calibration_tensors_are_float_graph_tensors(dyn_model: Path) -> None:
    m = onnx.load(str(dyn_model))
    names = calibration_tensors(m)
    produced = {t for n in m.graph.node for t in n.output} | {"images"}
    assert names[0] == "images"
    assert set(names) <= produced
    assert not {i.name for i in m.graph.initializer} & set(names)
    # Every Conv input activation and every Add/Concat/MaxPool output is covered.
    for node in m.graph.node:
        if node.op_type == "Conv":
            assert node.input[0] in names
        if node.op_type in ("Add", "Concat", "MaxPool"):
            assert node.output[0] in names


def test_exact_mode_matches_numpy_histogram_and_range(dyn_model: Path) -> None:
    feeds = _batches(6, 2)
    m = onnx.load(str(dyn_model))
    names = calibration_tensors(m)
    hists = collect_histograms(dyn_model, feeds, names, max_positions=None)
    ref = _activations(dyn_model, names, feeds)
    for name in names:
        h, x = hists[name], ref[name]
        if h.derived and not h.derived.startswith("concat"):
            continue  # SiLU parts: checked in test_silu_parts_take_the_silu_output_range
        assert h.max_abs == pytest.approx(float(np.abs(x).max()), rel=1e-6)
        assert h.min_value == pytest.approx(float(x.min()), rel=1e-6, abs=1e-7)
        if h.derived:
            continue
        assert h.count == x.size
        width = h.edges[1] - h.edges[0]
        assert np.log2(width) == int(np.log2(width))  # power-of-two width
        assert 2048 < len(h.counts) <= 4096 and h.edges[-2] <= h.max_abs < h.edges[-1]
        expected, _ = np.histogram(np.abs(x).astype(np.float64), bins=h.edges)
        assert np.array_equal(h.counts, expected), name


def test_concat_output_is_derived_exactly_from_its_inputs(dyn_model: Path) -> None:
    feeds = _batches(4, 1)
    m = onnx.load(str(dyn_model))
    plan = plan_statistics(m, ["cat"], {"r1": (1, 8, 32, 32), "p1": (1, 8, 32, 32)}, None)
    assert plan.concat == {"cat": ["r1", "p1"]} and "cat" not in plan.measured
    derived = collect_histograms(dyn_model, feeds, ["cat"], max_positions=None)["cat"]
    x = _activations(dyn_model, ["cat"], feeds)["cat"]
    assert derived.derived.startswith("concat")
    assert derived.count == x.size
    assert derived.max_abs == pytest.approx(float(np.abs(x).max()), rel=1e-6)
    expected, _ = np.histogram(np.abs(x).astype(np.float64), bins=derived.edges)
    assert np.array_equal(derived.counts, expected)


def test_silu_parts_take_the_silu_output_range(dyn_model: Path) -> None:
    hists = collect_histograms(dyn_model, _batches(2, 1), ["c0", "s0", "a0"])
    assert hists["s0"].derived and hists["c0"].derived and not hists["a0"].derived
    assert hists["s0"].max_abs == 1.0
    assert hists["c0"].max_abs == hists["a0"].max_abs


def test_one_batch_of_eight_equals_eight_batches_of_one(dyn_model: Path) -> None:
    names = calibration_tensors(onnx.load(str(dyn_model)))
    for positions in (None, 64):
        a = collect_histograms(dyn_model, _batches(8, 8), names, max_positions=positions)
        b = collect_histograms(dyn_model, _batches(8, 1), names, max_positions=positions)
        for n in names:
            assert np.array_equal(a[n].counts, b[n].counts), (positions, n)
            assert np.array_equal(a[n].edges, b[n].edges)
            assert a[n].max_abs == b[n].max_abs


def test_sampling_keeps_exact_range_and_spreads_over_the_image(dyn_model: Path) -> None:
    feeds = _batches(4, 2)
    sampled = collect_histograms(dyn_model, feeds, ["a0", "r1"], max_positions=64)
    exact = collect_histograms(dyn_model, feeds, ["a0", "r1"], max_positions=None)
    for n in ("a0", "r1"):
        assert 60 <= sampled[n].positions <= 64  # of 32 x 32 (stratified; rare duplicates merged)
        assert sampled[n].count * 1024 == exact[n].count * sampled[n].positions
        assert sampled[n].max_abs == exact[n].max_abs  # the range is always exact
        # The sampled distribution tracks the full one: median and p99 within a few bins.
        for q in (0.5, 0.99):
            qs = np.searchsorted(np.cumsum(sampled[n].counts), q * sampled[n].count)
            qe = np.searchsorted(np.cumsum(exact[n].counts), q * exact[n].count)
            assert abs(int(qs) - int(qe)) <= 0.05 * len(exact[n].counts)


def test_running_max_agrees_with_onnxruntime_minmax_calibrator(dyn_model: Path, tmp_path: Path) -> None:
    from onnxruntime.quantization.calibrate import CalibrationDataReader, MinMaxCalibrater

    feeds = _batches(6, 1)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    calibrater = MinMaxCalibrater(str(dyn_model), op_types_to_calibrate=["Conv", "Add", "MaxPool", "Concat"],
                                  augmented_model_path=str(tmp_path / "aug.onnx"))
    calibrater.augment_graph()
    calibrater.create_inference_session()
    calibrater.collect_data(Reader())
    ranges = calibrater.compute_data()
    names = [n for n in ("c1", "r1", "p1", "cat", "output0") if n in ranges]
    assert names
    hists = collect_histograms(dyn_model, feeds, names)
    for n in names:
        lo, hi = (float(np.asarray(v).ravel()[0]) for v in ranges[n].range_value)
        # ORT's calibrator widens the range to include 0; ours is the exact signed range.
        assert hists[n].max_abs == pytest.approx(max(abs(lo), abs(hi)), rel=1e-6)


def test_growth_merges_bins_exactly_and_order_does_not_matter() -> None:
    from calibrators.collect import _Accumulator

    rng = np.random.default_rng(3)
    chunks = [np.abs(rng.standard_normal(5000).astype(np.float32)) * s for s in (0.01, 1.0, 300.0, 0.0)]
    a, b = _Accumulator(1), _Accumulator(1)
    for c in chunks:
        a.update(c, -float(c.max()), float(c.max()))
    for c in reversed(chunks):
        b.update(c, -float(c.max()), float(c.max()))
    ha, hb = a.finalize("t"), b.finalize("t")
    assert np.array_equal(ha.counts, hb.counts) and np.array_equal(ha.edges, hb.edges)
    allv = np.concatenate(chunks).astype(np.float64)
    expected, _ = np.histogram(allv, bins=ha.edges)
    assert np.array_equal(ha.counts, expected)


def test_all_zero_tensor_gets_a_positive_range() -> None:
    from calibrators.collect import _Accumulator
    from calibrators.ranges import compute_amax

    acc = _Accumulator(1)
    acc.update(np.zeros(100, dtype=np.float32), 0.0, 0.0)
    h = acc.finalize("z")
    assert h.counts.sum() == 100 and h.max_abs == 0.0
    for algo in ("entropy", "percentile", "mse", "minmax"):
        assert compute_amax(h.counts, h.edges, algo) > 0


def test_a_failure_in_the_histogram_worker_is_raised_not_hung(dyn_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from calibrators import collect

    def boom(self: object, *args: object, **kwargs: object) -> None:
        raise ValueError("histogram update failed")

    monkeypatch.setattr(collect._Accumulator, "update", boom)
    with pytest.raises(ValueError, match="histogram update failed"):
        collect_histograms(dyn_model, _batches(8, 1), ["a0"])


@pytest.mark.parametrize("shape", [(1, 8, 160, 160), (1, 8, 320, 320), (1, 8, 80, 80), (1, 8, 48, 80), (1, 4, 8400)])
def test_sample_positions_cover_every_row_band_evenly(shape: tuple[int, ...]) -> None:
    from calibrators.collect import _sample_positions

    idx = _sample_positions(shape, 256)
    assert idx is not None and len(set(idx.tolist())) == len(idx) >= 250
    dims = shape[2:]
    assert idx.min() >= 0 and idx.max() < int(np.prod(dims))
    assert np.array_equal(idx, _sample_positions(shape, 256))  # deterministic
    if len(dims) == 2:
        rows, cols = np.divmod(idx, dims[1])
        per_row = np.bincount(rows, minlength=dims[0])
        per_col = np.bincount(cols, minlength=dims[1])
        # Stratified: rows and columns are sampled evenly (a band of H / 256 rows holds one sample).
        if dims[0] <= 256:
            assert per_row.min() >= 256 // dims[0] - 1 and per_row.max() <= -(-256 // dims[0]) + 1
        else:
            band = dims[0] // 256
            assert per_row[: band * 256].reshape(256, band).sum(axis=1).max() <= 2
        assert per_col.max() <= -(-256 // dims[1]) + 1
        # Not a regular grid: a 16 x 16 grid would use 16 distinct rows and columns.
        assert len(np.unique(cols)) > 32 and len(np.unique(rows)) > 32


def test_a_rare_outlier_row_is_represented_at_its_true_rate(tmp_path: Path) -> None:
    """A regular grid misses whole rows (e.g. where letterbox padding starts); the stratified sample
    sees each row at the same rate, so the histogram's tail matches the full data."""
    from calibrators.collect import _Accumulator, _sample_positions

    h = w = 160
    x = np.abs(np.random.default_rng(0).standard_normal((1, 16, h, w)).astype(np.float32))
    x[:, :, 20, :] += 50.0  # one row of large activations: 1/160 of the values
    idx = _sample_positions(x.shape, 256)
    assert idx is not None
    sample = x.reshape(1, 16, -1)[:, :, idx]
    frac_sample = float((sample > 25).mean())
    assert frac_sample == pytest.approx(1 / h, rel=0.5)
    grid = x[:, :, 5::10, 5::10]  # what a step-10 grid would keep: row 20 never appears
    assert float((grid > 25).mean()) == 0.0
    acc = _Accumulator(len(idx))
    acc.update(sample, -float(x.max()), float(x.max()))
    assert acc.finalize("t").max_abs == float(x.max())


def test_merging_ranges_more_than_capacity_apart_is_exact() -> None:
    """A Concat of a tiny-range and a huge-range tensor: the tiny one lands in the first bin (no crash)."""
    from calibrators.collect import _Accumulator

    small, big = _Accumulator(1), _Accumulator(1)
    s = np.full(10, 1e-6, dtype=np.float32)
    b = np.linspace(0, 1000, 50, dtype=np.float32)
    small.update(s, 0.0, float(s.max()))
    big.update(b, 0.0, float(b.max()))
    out = _Accumulator(1)
    out.merge(big)
    out.merge(small)
    h = out.finalize("cat")
    expected, _ = np.histogram(np.concatenate([s, b]).astype(np.float64), bins=h.edges)
    assert np.array_equal(h.counts, expected) and h.count == 60


def _direct_histogram(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference for the accumulator: the histogram of |x| at the width its rule prescribes.

    Width ``2**k`` with ``k`` the smallest integer such that ``max|x| < 4096 * 2**k``; bins up to the one
    holding the max. Computed in float64 from the float32 values (exact: scaling by a power of two).
    """
    a = np.abs(values.astype(np.float64))
    m = float(a.max()) if a.size else 0.0
    if m == 0.0:
        return np.array([a.size]), np.array([0.0, 1.0])
    k = 0
    while m >= 4096 * 2.0**k:
        k += 1
    while m < 4096 * 2.0 ** (k - 1):
        k -= 1
    width = 2.0**k
    n = int(np.floor(m / width)) + 1
    counts = np.bincount(np.floor(a / width).astype(np.int64), minlength=n)
    return counts, np.arange(n + 1, dtype=np.float64) * width


def _accumulate(values: np.ndarray) -> _Accumulator:
    acc = _Accumulator(1)
    acc.update(np.abs(values), float(values.min()), float(values.max()))
    return acc


def _random_values(log2_max: float, size: int, seed: int, zeros: bool) -> np.ndarray:
    if zeros:
        return np.zeros(size, dtype=np.float32)
    rng = np.random.default_rng(seed)
    x = (rng.uniform(-1.0, 1.0, size) * 2.0**log2_max).astype(np.float32)
    x[rng.integers(size)] = np.float32(2.0**log2_max)  # the max of the side, exactly
    return x


@settings(max_examples=300, deadline=None)
@given(
    st.floats(-24, 24),
    st.floats(-24, 24),
    st.integers(1, 400),
    st.integers(1, 400),
    st.integers(0, 2**31),
    st.sampled_from(["none", "left", "right"]),
)
def test_merge_of_any_two_ranges_in_either_order_is_the_histogram_of_the_union(
    log_a: float, log_b: float, size_a: int, size_b: int, seed: int, zero_side: str
) -> None:
    """Merging accumulators whose bin widths differ by any power of two (a YOLO output Concat merges box
    coordinates up to imgsz with class scores near 0) gives the direct histogram of all values."""
    xa = _random_values(log_a, size_a, seed, zero_side == "left")
    xb = _random_values(log_b, size_b, seed + 1, zero_side == "right")
    want_counts, want_edges = _direct_histogram(np.concatenate([xa, xb]))
    for first, second in ((xa, xb), (xb, xa)):
        acc = _accumulate(first)
        acc.merge(_accumulate(second))
        h = acc.finalize("t")
        assert h.count == size_a + size_b
        assert h.max_abs == float(np.abs(np.concatenate([xa, xb])).max())
        if h.max_abs == 0.0:
            assert h.counts[0] == size_a + size_b and h.counts[1:].sum() == 0
            continue
        np.testing.assert_array_equal(h.edges, want_edges)
        np.testing.assert_array_equal(h.counts, want_counts)


def test_merging_a_tiny_range_into_a_wide_one_does_not_crash() -> None:
    """max 640 then max 0.1 (bin widths 2**-3 and 2**-15): once a reshape of 4096 bins into 8192."""
    wide, tiny = np.array([640.0, -3.0], np.float32), np.array([0.1, 0.05], np.float32)
    acc = _accumulate(wide)
    acc.merge(_accumulate(tiny))
    h = acc.finalize("t")
    want_counts, _ = _direct_histogram(np.concatenate([wide, tiny]))
    np.testing.assert_array_equal(h.counts, want_counts)


def test_only_a_conv_output_takes_its_silu_range(tmp_path: Path) -> None:
    """TensorRT fuses Conv + SiLU, so a Conv's pre-activation never needs its own range. Any other
    producer's output is a real tensor: it is measured, negative tail included."""
    from onnx import TensorProto, helper, numpy_helper

    bias = numpy_helper.from_array(np.full((1, 3, 1, 1), -2.0, np.float32), "bias")
    w = numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32) * 0.1, "w")
    nodes = [
        helper.make_node("Add", ["images", "bias"], ["pre"], name="add"),
        helper.make_node("Sigmoid", ["pre"], ["sig"], name="sig"),
        helper.make_node("Mul", ["pre", "sig"], ["silu"], name="mul"),
        helper.make_node("Conv", ["silu", "w"], ["out"], name="conv"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], [bias, w],
    )
    path = tmp_path / "add_silu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    plan = plan_statistics(onnx.load(str(path)), ["pre", "silu"], {}, None)
    assert "pre" in plan.measured and "pre" not in plan.alias
    feeds = [{"images": np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)}]
    h = collect_histograms(path, feeds, ["pre", "silu"], max_positions=None)
    assert h["pre"].derived == "" and h["pre"].min_value < -1.0  # images in [0, 1) minus 2
    assert h["silu"].min_value > -0.279  # the SiLU's own range is much narrower


def _assert_exact_sampled_histograms(model: Path, feeds: list[dict[str, np.ndarray]], hists: dict, names: list[str], max_positions: int) -> None:
    """Independent reference: every value of the tensors from ONNX Runtime, picked at the sampled positions
    of every channel and image with numpy, binned directly at the histogram's width."""
    from calibrators.collect import _sample_positions

    m = onnx.load(str(model))
    existing = {o.name for o in m.graph.output}
    for n in names:
        if n not in existing:
            m.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    acts = {n: np.concatenate([sess.run([n], f)[0] for f in feeds]) for n in names}  # [images, C, H, W]
    for n in names:
        x = acts[n]
        pos = _sample_positions(x.shape, max_positions)
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        sample = np.abs((flat if pos is None else flat[:, :, pos]).astype(np.float64))
        h = hists[n]
        assert h.count == sample.size and h.positions == (0 if pos is None else len(pos)), n
        assert (h.min_value, h.max_value) == (float(x.min()), float(x.max())), n
        expected = np.bincount(np.floor(sample.ravel() / h.edges[1]).astype(np.int64), minlength=len(h.counts))
        expected[len(h.counts) - 1] += expected[len(h.counts) :].sum()
        np.testing.assert_array_equal(h.counts, expected[: len(h.counts)], err_msg=n)


@pytest.mark.parametrize("hw", [32, 96])  # 32x32: gathered channels-last; 96x96: channels-first
def test_sampled_histogram_is_exactly_that_of_the_sampled_positions(tmp_path: Path, hw: int) -> None:
    """Whatever layout the statistics graph gathers in, the histogram holds exactly the values at the
    sampled positions of every channel of every image, and the range is that of every value."""
    from calibrators.collect import CHANNELS_LAST_MAX_SPATIAL

    assert (hw * hw <= CHANNELS_LAST_MAX_SPATIAL) == (hw == 32)
    model = make_tiny_conv_onnx(tmp_path / f"m{hw}.onnx", hw=hw, batch="N")
    feeds = _batches(4, 2, hw=hw, seed=5)
    names = ["a0", "r1", "p1"]
    _assert_exact_sampled_histograms(model, feeds, collect_histograms(model, feeds, names, max_positions=64), names, 64)


def _split_model(path: Path, hw: int, opset: int = 17) -> Path:
    """Conv -> SiLU -> Split into channels [2, 6] (sizes from a Constant node), then an equal Split (no
    sizes) of the second part into [3, 3], as in a C2f block; the parts meet again in a Concat."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    w = numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.4).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["images", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c"], ["s"], name="sig"),
        helper.make_node("Mul", ["c", "s"], ["a"], name="mul"),
        helper.make_node("Constant", [], ["sizes"], name="sizes", value=numpy_helper.from_array(np.array([2, 6], np.int64))),
        helper.make_node("Split", ["a", "sizes"], ["a0", "a1"], name="split", axis=1),
        helper.make_node("Split", ["a1"], ["b0", "b1"], name="split_even", axis=1,
                         **({"num_outputs": 2} if opset >= 18 else {})),
        helper.make_node("Concat", ["a0", "b0", "b1"], ["out"], name="cat", axis=1),
    ]
    graph = helper.make_graph(nodes, "split", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, hw, hw])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 8, hw, hw])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    "hw,opset", [(8, 17), (32, 17), (96, 17), (32, 18)]  # returned whole, gathered channels-last, channels-first
)
def test_split_outputs_take_their_channels_of_the_measured_input(tmp_path: Path, hw: int, opset: int) -> None:
    from calibrators.collect import plan_statistics

    model = _split_model(tmp_path / "split.onnx", hw, opset)
    shapes = {t: (1, c, hw, hw) for t, c in (("a", 8), ("a0", 2), ("a1", 6), ("b0", 3), ("b1", 3))}
    plan = plan_statistics(onnx.load(str(model)), ["a", "a0", "a1", "b0", "b1"], shapes, 64)
    # a1 is itself derived, so the parts of its own Split are measured
    assert plan.measured == ["a", "b0", "b1"] and plan.split == {"a0": ("a", 0, 2), "a1": ("a", 2, 8)}
    feeds = _batches(3, 1, hw=hw, seed=9)
    names = ["a", "a0", "a1", "b0", "b1"]
    hists = collect_histograms(model, feeds, names, max_positions=64)
    assert hists["a0"].derived.startswith("channels 0:2 of a") and not hists["a"].derived
    _assert_exact_sampled_histograms(model, feeds, hists, names, 64)


def test_result_does_not_depend_on_how_many_images_run_at_once(dyn_model: Path) -> None:
    feeds = _batches(7, 1, seed=4)
    runs = [collect_histograms(dyn_model, feeds, max_positions=64, parallel=k) for k in (1, 2, 3)]
    for other in runs[1:]:
        assert other.keys() == runs[0].keys()
        for n, h in runs[0].items():
            o = other[n]
            assert (o.count, o.min_value, o.max_value, o.positions) == (h.count, h.min_value, h.max_value, h.positions)
            np.testing.assert_array_equal(o.counts, h.counts)
            np.testing.assert_array_equal(o.edges, h.edges)


def test_images_run_side_by_side_only_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from calibrators import collect

    assert collect._parallelism(["CUDAExecutionProvider", "CPUExecutionProvider"]) == (1, None)
    for cores, expected in ((1, (1, 1)), (2, (2, 1)), (16, (2, 8))):
        monkeypatch.setattr(collect, "_usable_cores", lambda cores=cores: cores)
        assert collect._parallelism(["CPUExecutionProvider"]) == expected


def _batches_with_nonfinite(n: int, batch: int, hw: int = 32) -> list[dict[str, np.ndarray]]:
    """Images in [-2, 3) with a NaN in one and +inf / -inf pixels in another."""
    rng = np.random.default_rng(5)
    images = (rng.random((n, 3, hw, hw), dtype=np.float32) * 5.0 - 2.0).astype(np.float32)
    images[1, 0, 4, 7] = np.nan
    images[3, 2, 20, 9] = np.inf
    images[3, 1, 30, 30] = -np.inf
    return [{"images": images[i : i + batch]} for i in range(0, n, batch)]


def test_nan_and_inf_are_left_out_and_counted_not_wiping_the_signed_range(
    dyn_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Exact mode against numpy over the finite values ONNX Runtime produced for every tensor."""
    feeds = _batches_with_nonfinite(6, 2)
    names = calibration_tensors(onnx.load(str(dyn_model)))
    with caplog.at_level("WARNING", logger="calibrators.collect"):
        hists = collect_histograms(dyn_model, feeds, names, max_positions=None)
    ref = _activations(dyn_model, names, feeds)
    assert not np.isfinite(ref["images"]).all()
    checked = 0
    for name in names:
        h, x = hists[name], ref[name]
        finite = x[np.isfinite(x)]
        if h.derived:
            continue  # concat / SiLU parts: derived from the measured tensors checked here
        assert h.min_value == pytest.approx(float(finite.min()), rel=1e-6, abs=1e-7), name
        assert h.max_value == pytest.approx(float(finite.max()), rel=1e-6, abs=1e-7), name
        assert h.count == finite.size and h.nonfinite == x.size - finite.size, name
        expected, _ = np.histogram(np.abs(finite).astype(np.float64), bins=h.edges)
        assert np.array_equal(h.counts, expected), name
        checked += h.nonfinite > 0
    assert hists["images"].min_value == pytest.approx(float(np.nanmin(np.where(np.isinf(ref["images"]), np.nan,
                                                                               ref["images"]))))
    assert hists["images"].min_value < -1.9  # the signed minimum survives (no longer -max|x|)
    assert checked >= 2
    warnings = [r.getMessage() for r in caplog.records if "NaN/inf" in r.getMessage()]
    assert len(warnings) == len({w.split(":")[0] for w in warnings}), warnings  # one per tensor
    images_warning = next(w for w in warnings if w.startswith("tensor images:"))
    assert f"({hists['images'].nonfinite} of the" in images_warning and hists["images"].nonfinite == 3


def test_accumulator_keeps_each_finite_bound() -> None:
    acc = _Accumulator(1)
    acc.update(np.array([-1.5, np.nan, 2.0, np.inf, 0.25], dtype=np.float32), -1.5, float("nan"))
    assert (acc.min_value, acc.max_value, acc.count, acc.nonfinite, acc.nonfinite_batches) == (-1.5, 2.0, 3, 2, 1)
    acc.update(np.array([0.5, 1.0], dtype=np.float32), 0.5, 1.0)  # a clean batch changes no count
    assert (acc.nonfinite, acc.nonfinite_batches) == (2, 1)
    acc.update(np.array([-4.0, 3.0], dtype=np.float32), -0.5, 0.5, partial=True)  # part of the range was NaN
    assert (acc.min_value, acc.max_value, acc.nonfinite_batches) == (-4.0, 3.0, 2)
    h = acc.finalize("t")
    assert h.nonfinite == 2 and h.count == 7 and h.min_value == -4.0


def test_a_tensor_of_only_nan_is_one_clear_error() -> None:
    from trtq.errors import TrtqError

    acc = _Accumulator(1)
    acc.update(np.full(4, np.nan, dtype=np.float32), float("nan"), float("nan"))
    with pytest.raises(TrtqError, match="every value of tensor 't' was NaN or inf"):
        acc.finalize("t")
