"""Benchmark statistics against an independent reference (the standard library's statistics module)."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trtq.bench.stats import MAX_CV, MIN_ITERATIONS, Summary, summarize, throughput


def _quantile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks, written out by hand."""
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.01, max_value=1e4, allow_nan=False), min_size=2, max_size=300))
def test_summary_matches_reference(values: list[float]) -> None:
    s = summarize(values)
    assert s.count == len(values)
    assert s.mean == pytest.approx(statistics.fmean(values), rel=1e-9)
    assert s.median == pytest.approx(statistics.median(values), rel=1e-9)
    assert s.p90 == pytest.approx(_quantile(values, 0.90), rel=1e-9)
    assert s.p99 == pytest.approx(_quantile(values, 0.99), rel=1e-9)
    assert s.min == min(values) and s.max == max(values)
    assert s.std == pytest.approx(statistics.stdev(values), rel=1e-6, abs=1e-9)
    assert s.cv == pytest.approx(statistics.stdev(values) / statistics.fmean(values), rel=1e-6, abs=1e-12)
    assert s.total == pytest.approx(math.fsum(values), rel=1e-9)


def test_percentiles_match_statistics_quantiles_inclusive() -> None:
    rng = np.random.default_rng(1)
    x = list(rng.lognormal(1.0, 0.3, size=101))
    qs = statistics.quantiles(x, n=100, method="inclusive")  # qs[k-1] is the k-th percentile
    s = summarize(x)
    assert s.p90 == pytest.approx(qs[89])
    assert s.p99 == pytest.approx(qs[98])
    assert s.median == pytest.approx(qs[49])


def test_single_sample_has_zero_spread_and_a_warning() -> None:
    s = summarize([5.0])
    assert (s.mean, s.median, s.p99, s.std, s.cv) == (5.0, 5.0, 5.0, 0.0, 0.0)
    assert any("only 1 " in w for w in s.warnings)


def test_stable_long_run_has_no_warning() -> None:
    rng = np.random.default_rng(0)
    s = summarize(10.0 + rng.normal(0, 0.1, size=200))
    assert s.cv < MAX_CV
    assert s.warnings == ()


def test_noisy_run_is_flagged() -> None:
    x = [1.0, 10.0] * 50
    s = summarize(x)
    assert s.cv > MAX_CV
    assert any("noisy" in w and "coefficient of variation" in w for w in s.warnings)


def test_short_run_is_flagged() -> None:
    s = summarize([10.0] * (MIN_ITERATIONS - 1))
    assert len(s.warnings) == 1 and f"fewer than {MIN_ITERATIONS}" in s.warnings[0]
    assert summarize([10.0] * MIN_ITERATIONS).warnings == ()


def test_min_seconds_check() -> None:
    assert any("adds up to only" in w for w in summarize([1.0] * 50, min_seconds=1.0).warnings)
    assert summarize([30.0] * 50, min_seconds=1.0).warnings == ()


def test_bad_series_raise() -> None:
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        summarize([1.0, float("nan")])


def test_round_trip_dict() -> None:
    s = summarize([1.0, 2.0, 4.0])
    assert Summary.from_dict(s.to_dict()) == s


def test_throughput() -> None:
    assert throughput(8, 20.0) == pytest.approx(400.0)
    assert math.isnan(throughput(1, 0.0))
