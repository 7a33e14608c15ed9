"""Range algorithms against independent references.

- entropy: a literal loop-per-candidate implementation of the KL spec written here, and ONNX Runtime's
  own ``HistogramCollector.get_entropy_threshold`` (which differs in small ways: eps smoothing, first
  minimum, symmetric histogram) compared with a tolerance;
- minmax / percentile: numpy on the raw samples, and ONNX Runtime's ``compute_percentile``;
- mse: a brute-force loop over candidates.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calibrators import ranges
from calibrators.ranges import (
    ALGORITHMS,
    FALLBACK_AMAX,
    compute_amax,
    entropy_amax,
    entropy_divergences,
    minmax_amax,
    mse_amax,
    mse_errors,
    percentile_amax,
)
from trtq.errors import TrtqError

L = 128


# --------------------------------------------------------------------------------------------------
# independent references, written from the spec
# --------------------------------------------------------------------------------------------------


def brute_kl(counts: np.ndarray, candidates: list[int] | None = None) -> list[float]:
    """KL divergence D_i for i = 128 .. N (or ``candidates``), literally as ``entropy_divergences`` defines it."""
    h = [float(c) for c in counts]
    h[0] = h[1]
    n = len(h)
    out: list[float] = []
    for i in range(L, n + 1) if candidates is None else candidates:
        p = h[:i]
        p[i - 1] += sum(h[i:])
        group_total = [0.0] * L
        group_nonempty = [0] * L
        for j in range(i):
            g = j * L // i
            group_total[g] += h[j]
            group_nonempty[g] += 1 if h[j] > 0 else 0
        q = [0.0] * i
        for j in range(i):
            g = j * L // i
            if h[j] > 0:
                q[j] = group_total[g] / group_nonempty[g]
        sp, sq = sum(p), sum(q)
        if sq == 0:
            out.append(math.inf)
            continue
        d = 0.0
        for pj, qj in zip(p, q, strict=True):
            if pj > 0:
                if qj == 0:
                    d = math.inf
                    break
                d += (pj / sp) * math.log((pj / sp) / (qj / sq))
        out.append(d)
    return out


def brute_entropy_index(counts: np.ndarray) -> tuple[int, list[float]]:
    """The largest i with minimal D_i (exact comparison), and all D_i."""
    d = brute_kl(counts)
    best = min(d)
    i_star = max(k for k, v in enumerate(d) if v == best) + L
    return i_star, d


def brute_mse(counts: np.ndarray, candidates: list[int] | None = None) -> list[float]:
    """Squared error of quantising bin centres (units of w) for every candidate i = 128 .. N (or ``candidates``)."""
    h = counts.astype(np.float64)
    n = h.size
    c = np.arange(n) + 0.5
    out = []
    for i in range(L, n + 1) if candidates is None else candidates:
        s = i / 127.0
        q = np.clip(np.round(c / s), -127, 127) * s
        out.append(float(np.sum(h * (c - q) ** 2)))
    return out


def hist_of(x: np.ndarray, bins: int = 2048, top: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of |x| over [0, top] (default max |x|) as the collector makes it: int64 counts, float64 edges."""
    a = np.abs(np.asarray(x, dtype=np.float64))
    hi = float(a.max()) if top is None else top
    counts, edges = np.histogram(a, bins=bins, range=(0.0, hi))
    return counts.astype(np.int64), edges.astype(np.float64)


def _samples(kind: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "halfnormal":
        return np.abs(rng.normal(size=n))
    if kind == "laplace":
        return np.abs(rng.laplace(size=n))
    if kind == "relu":  # ReLU-like: half the values exactly zero, a long right tail
        return np.maximum(rng.normal(0.0, 1.0, size=n), 0.0) ** 1.5
    if kind == "silu":  # SiLU of a normal: a few negatives, many small values
        z = rng.normal(0.0, 2.0, size=n)
        return np.abs(z / (1.0 + np.exp(-z)))
    if kind == "student":
        return np.abs(rng.standard_t(4, size=n))
    raise AssertionError(kind)


# --------------------------------------------------------------------------------------------------
# entropy
# --------------------------------------------------------------------------------------------------


def _check_entropy_against_brute(counts: np.ndarray, edges: np.ndarray) -> None:
    i_ref, d_ref = brute_entropy_index(counts)
    cands, d = entropy_divergences(counts, edges)
    d_ref_arr = np.array(d_ref)
    assert cands[0] == L and cands[-1] == counts.size
    assert np.array_equal(np.isinf(d), np.isinf(d_ref_arr))
    finite = np.isfinite(d_ref_arr)
    np.testing.assert_allclose(d[finite], d_ref_arr[finite], rtol=1e-9, atol=1e-12)

    amax = entropy_amax(counts, edges)
    i_mine = int(np.argmin(np.abs(edges - amax)))
    assert edges[i_mine] == amax
    if i_mine != i_ref:  # only a float tie may move the choice
        assert abs(d_ref[i_mine - L] - d_ref[i_ref - L]) <= 1e-9, (i_mine, i_ref)


@pytest.mark.parametrize(
    ("kind", "bins", "seed"),
    [
        ("halfnormal", 256, 0),
        ("laplace", 300, 1),
        ("relu", 512, 2),
        ("silu", 400, 3),
        ("student", 1024, 4),
    ],
)
def test_entropy_matches_literal_spec(kind: str, bins: int, seed: int) -> None:
    counts, edges = hist_of(_samples(kind, 50_000, seed), bins=bins)
    _check_entropy_against_brute(counts, edges)


def test_entropy_matches_literal_spec_sparse_and_clipped_into_empty_bins() -> None:
    # Empty bins just below heavy tails: candidates whose last bin is empty but clip mass are inf.
    rng = np.random.default_rng(7)
    counts = rng.integers(0, 50, size=333)
    counts[rng.random(333) < 0.4] = 0
    counts[300:] = 0
    counts[320] = 5
    counts[332] = 1
    edges = np.linspace(0.0, 3.33, 334)
    _check_entropy_against_brute(counts, edges)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(min_value=128, max_value=220).flatmap(
        lambda n: st.lists(
            st.one_of(st.just(0), st.integers(min_value=0, max_value=10**6)), min_size=n, max_size=n
        )
    )
)
def test_entropy_matches_literal_spec_property(values: list[int]) -> None:
    counts = np.array(values, dtype=np.int64)
    if not counts[1:].any():
        return  # covered by the degenerate-input test
    edges = np.arange(counts.size + 1, dtype=np.float64) * 0.01
    _check_entropy_against_brute(counts, edges)


@pytest.mark.parametrize("bins", [2049, 3000, 4096, 5000])
def test_large_histograms_match_literal_spec_on_sampled_candidates(bins: int) -> None:
    # The collector hands over between 2049 and 4096 bins; check the search structures for such sizes
    # (and beyond) on a sample of candidates, the first and last included.
    counts, edges = hist_of(_samples("student", 300_000, bins), bins=bins)
    rng = np.random.default_rng(bins)
    picks = sorted({L, L + 1, bins - 1, bins, *rng.integers(L, bins + 1, size=25).tolist()})
    cands, d = entropy_divergences(counts, edges)
    ref = np.array(brute_kl(counts, picks))
    ours = d[np.array(picks) - L]
    assert np.array_equal(np.isinf(ours), np.isinf(ref))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(ours[finite], ref[finite], rtol=1e-9, atol=1e-12)
    cands, err = mse_errors(counts, edges)
    np.testing.assert_allclose(err[np.array(picks) - L], brute_mse(counts, picks), rtol=1e-7)
    assert cands[-1] == bins


def test_entropy_ties_resolve_to_largest_candidate() -> None:
    # Exactly flat counts: Q reproduces P for every candidate that clips nothing, so D_i == 0 for all
    # i > 300 and the spec takes the LARGEST such i (ONNX Runtime would take the first).
    counts = np.zeros(512, dtype=np.int64)
    counts[:300] = 1000
    edges = np.linspace(0.0, 5.12, 513)
    i_ref, d_ref = brute_entropy_index(counts)
    assert i_ref == 512 and d_ref[300 - L] == 0.0
    assert entropy_amax(counts, edges) == edges[-1]
    one = np.zeros(2048, dtype=np.int64)
    one[700] = 5
    assert entropy_amax(one, np.linspace(0.0, 2.048, 2049)) == 2.048


def test_entropy_outlier_stays_near_bulk() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(0.0, 1.0, size=100_000), [10.0]])
    counts, edges = hist_of(x)
    assert edges[-1] == 10.0
    assert entropy_amax(counts, edges) < 1.1
    assert percentile_amax(counts, edges, 99.99) < 1.1


def test_outlier_ignored_by_all_clipping_algorithms_with_realistic_mass() -> None:
    # uniform(0, 1) mass of a few million values (one image of one YOLO tensor is ~10^5..10^6) plus one
    # outlier at 10. mse weighs the outlier's squared error (81) against the rounding error of the bulk,
    # which only dominates with realistic counts (about 1.6 M values or more for amax < 1.1 here).
    # Poisson counts as sampling gives them: an exactly flat histogram is a degenerate case for the KL
    # search (Q reproduces it without loss at every candidate, so the largest candidate wins).
    edges = np.linspace(0.0, 10.0, 2049)
    counts = np.zeros(2048, dtype=np.int64)
    counts[: int(2048 / 10)] = np.random.default_rng(0).poisson(20_000, size=int(2048 / 10))
    counts[-1] = 1
    for algo in ("entropy", "percentile"):
        assert compute_amax(counts, edges, algo) < 1.1, algo
    # mse quantises bin centres, so a step of exactly 2 bins (amax 1.24 here) aliases to a slightly
    # lower error than amax 1.0; it still ignores the outlier.
    assert 1.0 <= compute_amax(counts, edges, "mse") < 1.3
    assert compute_amax(counts, edges, "minmax") == 10.0


@pytest.mark.parametrize("algo", ["entropy", "mse", "minmax"])
def test_no_outliers_amax_close_to_max(algo: str) -> None:
    rng = np.random.default_rng(3)
    x = rng.uniform(0.0, 1.0, size=200_000)
    counts, edges = hist_of(x)
    amax = compute_amax(counts, edges, algo)
    assert 0.95 * x.max() <= amax <= x.max() + 1e-12


def test_entropy_clips_heavy_tail() -> None:
    counts, edges = hist_of(_samples("laplace", 200_000, 5))
    amax = entropy_amax(counts, edges)
    assert 0.5 * edges[-1] < amax < 0.99 * edges[-1]


def test_entropy_zero_spike_suppressed() -> None:
    # A ReLU output: 90 % exact zeros. Without h0 <- h1 the zero spike would dominate the divergence;
    # with it, the result equals that of the same histogram without the extra zeros.
    x = _samples("halfnormal", 100_000, 11)
    counts, edges = hist_of(x)
    spiked = counts.copy()
    spiked[0] += 900_000
    assert entropy_amax(spiked, edges) == entropy_amax(counts, edges)


def _ort_entropy_amax(counts: np.ndarray, edges: np.ndarray) -> float:
    """ONNX Runtime's entropy threshold for the symmetric signed histogram whose |x| histogram is ``counts``.

    ORT works on a signed histogram over [-t, t] with 255 quantized bins (~ 128 levels a side). Its
    variant differs from TensorRT's: eps smoothing, the first minimum, integer bin merging with the
    remainder in the last quantized bin, windows of 2i + 1 bins.
    """
    from onnxruntime.quantization.calibrate import HistogramCollector

    half = counts // 2
    top = float(edges[-1])
    signed = np.concatenate([half[::-1], half])
    signed_edges = np.linspace(-top, top, 2 * counts.size + 1).astype(np.float32)
    col = HistogramCollector("entropy", True, signed.size, 255, 99.99, "same")
    t = np.float32(top)
    _, hi = col.get_entropy_threshold((signed, signed_edges, -t, t, t), 255)
    return float(hi)


def _analytic_hist(kind: str, total: float, top: float, bins: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Expected |x| counts of a distribution (no sampling noise), even counts so both halves are equal."""
    edges = np.linspace(0.0, top, bins + 1)
    if kind == "laplace":
        survival = np.exp(-edges)
    elif kind == "halfnormal":
        survival = np.array([math.erfc(v / math.sqrt(2.0)) for v in edges])
    elif kind == "student3":
        survival = np.array(
            [1 - 2 / math.pi * (math.atan(v / math.sqrt(3)) + math.sqrt(3) * v / (3 + v * v)) for v in edges]
        )
    else:
        raise AssertionError(kind)
    half = np.round(total / 2 * (survival[:-1] - survival[1:])).astype(np.int64)
    return 2 * half, edges


@pytest.mark.parametrize(
    ("kind", "total", "top"),
    [("laplace", 1e7, 16.0), ("laplace", 1e6, 16.0), ("student3", 1e7, 60.0)],
)
def test_entropy_close_to_onnxruntime(kind: str, total: float, top: float) -> None:
    counts, edges = _analytic_hist(kind, total, top)
    ort = _ort_entropy_amax(counts, edges)
    ours = entropy_amax(counts, edges)
    assert ort < 0.99 * top and ours < 0.99 * top  # both clip: a real comparison, not both at max
    # Measured ratios 0.77 .. 0.92: ORT's coarser merging favours wider windows.
    assert 0.7 <= ours / ort <= 1.1


# --------------------------------------------------------------------------------------------------
# minmax and percentile
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["halfnormal", "relu", "student"])
def test_minmax_against_numpy(kind: str) -> None:
    x = _samples(kind, 30_000, 8)
    top = float(np.abs(x).max()) * 1.37  # a grown histogram: max is inside a bin
    counts, edges = hist_of(x, top=top)
    w = edges[1] - edges[0]
    amax = minmax_amax(counts, edges)
    assert np.abs(x).max() <= amax <= np.abs(x).max() + w
    assert minmax_amax(counts, edges, max_abs=float(np.abs(x).max())) == float(np.abs(x).max())
    assert compute_amax(counts, edges, "minmax", max_abs=float(np.abs(x).max())) == float(np.abs(x).max())
    assert compute_amax(counts, edges, "minmax", max_abs=0.0) == amax  # no usable max: the bins decide
    counts2, edges2 = hist_of(x)
    assert minmax_amax(counts2, edges2) == float(np.abs(x).max())


@pytest.mark.parametrize("p", [50.0, 90.0, 99.0, 99.9, 99.99, 100.0])
@pytest.mark.parametrize("kind", ["halfnormal", "laplace", "relu"])
def test_percentile_against_numpy(kind: str, p: float) -> None:
    x = _samples(kind, 100_000, 9)
    counts, edges = hist_of(x)
    w = edges[1] - edges[0]
    amax = percentile_amax(counts, edges, p)
    ref = float(np.percentile(np.abs(x), p))
    assert amax - w - 1e-9 <= ref <= amax + 1e-9
    # the rule itself: smallest edge with at least p % of the values below it
    i = int(np.argmin(np.abs(edges - amax)))
    target = Fraction(str(p)) / 100 * int(counts.sum())  # exact decimal arithmetic
    assert int(counts[:i].sum()) >= target
    assert int(counts[: i - 1].sum()) < target


@pytest.mark.parametrize("p", [99.0, 99.9, 99.99])
def test_percentile_against_onnxruntime(p: float) -> None:
    from onnxruntime.quantization.calibrate import HistogramCollector

    x = np.random.default_rng(4).laplace(size=200_000).astype(np.float32)
    col = HistogramCollector("percentile", True, 2048, 128, p, "same")
    col.histogram_dict = {}
    col.collect({"x": x})
    hist, hist_edges, _, _ = col.histogram_dict["x"]
    ort = float(col.compute_percentile()["x"][1])
    edges = hist_edges.astype(np.float64)
    ours = percentile_amax(hist.astype(np.int64), edges, p)
    # ORT returns the lower edge of the bin where the cdf crosses p; the spec's rule the upper one.
    w = float(edges[1] - edges[0])
    assert (ours - ort) / w == pytest.approx(1.0, abs=1e-3)


# --------------------------------------------------------------------------------------------------
# mse
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "bins"), [("halfnormal", 2048), ("laplace", 1000), ("relu", 512), ("student", 2048)]
)
def test_mse_against_brute_force(kind: str, bins: int) -> None:
    counts, edges = hist_of(_samples(kind, 100_000, 12), bins=bins)
    ref = np.array(brute_mse(counts))
    cands, err = mse_errors(counts, edges)
    assert cands[0] == L and cands[-1] == bins
    np.testing.assert_allclose(err, ref, rtol=1e-7)
    amax = mse_amax(counts, edges)
    i_mine = int(np.argmin(np.abs(edges - amax)))
    i_ref = int(np.argmin(ref)) + L
    assert ref[i_mine - L] <= ref[i_ref - L] * (1 + 1e-9), (i_mine, i_ref)
    assert 0.3 * edges[-1] < amax <= edges[-1]


# --------------------------------------------------------------------------------------------------
# degenerate inputs, determinism, properties, errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_degenerate_inputs_have_defined_results(algo: str) -> None:
    edges = np.linspace(0.0, 2.048, 2049)
    zeros = np.zeros(2048, dtype=np.int64)
    # no counts at all: the histogram's upper edge
    assert compute_amax(zeros, edges, algo) == 2.048
    # every value exactly 0 and max |x| == 0: zero-width edges -> the fallback
    only_zero = zeros.copy()
    only_zero[0] = 1000
    assert compute_amax(only_zero, np.zeros(2049), algo) == FALLBACK_AMAX
    # one non-empty bin
    one = zeros.copy()
    one[700] = 5
    a = compute_amax(one, edges, algo)
    assert math.isfinite(a) and 0 < a <= 2.048
    if algo in ("minmax", "percentile"):
        assert a == pytest.approx(edges[701])
    # only exact zeros (bin 0) with a positive range
    assert compute_amax(only_zero, edges, algo) == pytest.approx(edges[1])
    # fewer bins than INT8 levels
    few = np.array([3, 0, 7, 1, 0, 2], dtype=np.int64)
    few_edges = np.linspace(0.0, 0.6, 7)
    a = compute_amax(few, few_edges, algo)
    assert 0 < a <= 0.6
    if algo != "percentile":
        assert a == pytest.approx(0.6)
    # a single bin
    assert compute_amax(np.array([4]), np.array([0.0, 0.5]), algo) == 0.5


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_deterministic_and_dtype_independent(algo: str) -> None:
    counts, edges = hist_of(_samples("silu", 50_000, 13))
    first = compute_amax(counts, edges, algo)
    assert compute_amax(counts.copy(), edges.copy(), algo) == first
    assert compute_amax(counts.astype(np.float64), edges, algo) == first
    assert compute_amax(list(counts), list(edges), algo) == first
    assert isinstance(first, float)


@settings(max_examples=150, deadline=None)
@given(
    counts=st.lists(st.integers(min_value=0, max_value=2**40), min_size=1, max_size=300),
    width=st.floats(min_value=1e-6, max_value=1e3, allow_nan=False, allow_infinity=False),
    p=st.floats(min_value=0.001, max_value=100.0),
)
def test_amax_in_range_property(counts: list[int], width: float, p: float) -> None:
    c = np.array(counts, dtype=np.int64)
    edges = np.arange(c.size + 1, dtype=np.float64) * width
    for algo in ALGORITHMS:
        a = compute_amax(c, edges, algo, percentile=p)
        assert math.isfinite(a) and 0 < a <= edges[-1], (algo, a)


def test_errors() -> None:
    counts, edges = hist_of(_samples("halfnormal", 1000, 0))
    with pytest.raises(TrtqError, match="unknown calibration algorithm"):
        compute_amax(counts, edges, "kl")
    for bad in (0.0, -1.0, 100.5, float("nan")):
        with pytest.raises(TrtqError, match="percentile"):
            percentile_amax(counts, edges, bad)
    with pytest.raises(ValueError, match=r"len\(counts\) \+ 1"):
        compute_amax(counts, edges[:-1], "entropy")
    with pytest.raises(ValueError, match="non-negative"):
        compute_amax(-counts, edges, "minmax")
    with pytest.raises(ValueError, match="finite"):
        compute_amax(counts, np.full(edges.shape, np.inf), "mse")


def test_algorithms_constant() -> None:
    assert ranges.ALGORITHMS == ("entropy", "minmax", "percentile", "mse")
