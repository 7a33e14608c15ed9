"""Range algorithms: one ``amax`` per activation tensor from a histogram of ``|x|``.

Every function here is a pure function of ``(counts, edges)``:

- ``counts``: ``N`` non-negative bin counts (int64, or float holding whole numbers),
- ``edges``: ``N + 1`` increasing bin edges with ``edges[0] == 0`` and a uniform width ``w``,

and returns a finite ``amax > 0``. TensorRT quantises symmetrically with ``scale = amax / 127``.

Algorithms:

- ``minmax``: the largest ``|x|`` seen (the upper edge of the last non-empty bin, or ``max_abs``
  when the caller kept the exact running maximum).
- ``percentile``: the smallest bin edge ``edges[i]`` below which at least ``p`` % of the values lie.
- ``mse``: the edge ``edges[i]``, ``i = 128 .. N``, that minimises the squared error of quantising the
  bin centres, ``sum_j h_j (c_j - q(c_j))^2``.
- ``entropy``: TensorRT EntropyCalibration2-style KL divergence search over ``i = 128 .. N`` with
  ``L = 128`` levels; the largest ``i`` with the minimal divergence wins and ``amax = edges[i]``.

Both searches evaluate every candidate, vectorised (``entropy_divergences`` and ``mse_errors`` return
the whole curve): per-group sums come from cumulative sums taken at the group boundaries, so one call
costs ``O(N * L)`` array work and no Python loop over candidates. A candidate's group boundaries do not
depend on ``N``, so they are computed once per power-of-two capacity and shared by all histograms.
About 1.5 ms (entropy) and 1 ms (mse) of CPU per 2048-bin histogram.

Degenerate inputs never raise and never return NaN or inf; the rule is:

- a histogram with no counts returns ``edges[-1]`` when that is positive, else ``FALLBACK_AMAX``;
- a histogram whose width is zero (all values exactly 0, so ``max_abs == 0``) returns ``FALLBACK_AMAX``;
- ``entropy`` and ``mse`` on fewer than 128 bins (each bin already finer than an INT8 step) or on a
  histogram whose only counts are in bin 0 (nothing to search) return the ``minmax`` value.

Malformed arrays (wrong shapes, negative counts, non-finite or decreasing edges) are a programming
error of the caller and raise ``ValueError``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from trtq.errors import TrtqError

ALGORITHMS: tuple[str, ...] = ("entropy", "minmax", "percentile", "mse")

#: Number of quantisation levels on the positive side of symmetric INT8 (TensorRT's ``L``).
NUM_LEVELS = 128
#: INT8 maximum used for ``scale = amax / QMAX``.
QMAX = 127
#: Returned for a tensor whose calibration values were all exactly zero (any scale represents it).
FALLBACK_AMAX = 1.0
#: Default percentile of the ``percentile`` algorithm.
DEFAULT_PERCENTILE = 99.99
#: The algorithm trtq uses unless told otherwise (calibrate, quantize, build), chosen by measured mAP on
#: YOLOv8n (benchmarks/results/accuracy.md): entropy clips the positive tail of SiLU outputs, whose |x|
#: histogram peaks at 0.278 (the SiLU minimum), and loses several mAP points; percentile does not.
DEFAULT_ALGO = "percentile"

# Two KL divergences closer than this count as equal, so the larger threshold wins as TensorRT's does.
# Rounding in the cumulative sums is ~1e-14 in KL; real differences between candidates are far larger.
_KL_TIE_ATOL = 1e-12
_KL_TIE_RTOL = 1e-9
_TINY = 1e-300

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


# --------------------------------------------------------------------------------------------------
# validation and shared helpers
# --------------------------------------------------------------------------------------------------


def check_algorithm(algo: str, choices: Sequence[str] = ALGORITHMS) -> str:
    """``algo`` when it is one of ``choices``, else the one user error every entry point raises."""
    if algo not in choices:
        raise TrtqError(f"unknown calibration algorithm {algo!r}; choose one of {', '.join(choices)}")
    return algo


def check_percentile(percentile: Any) -> float:
    """``percentile`` as a float in (0, 100], else the one user error every entry point raises."""
    try:
        p = float(percentile)
    except (TypeError, ValueError):
        p = math.nan
    if not (math.isfinite(p) and 0.0 < p <= 100.0):
        raise TrtqError(f"percentile must be in (0, 100], got {percentile!r}; pass e.g. --percentile 99.99")
    return p


def _as_hist(counts: Any, edges: Any) -> tuple[FloatArray, FloatArray]:
    h = np.asarray(counts)
    e = np.asarray(edges, dtype=np.float64)
    if h.ndim != 1 or e.ndim != 1:
        raise ValueError(f"counts and edges must be 1-D, got shapes {h.shape} and {e.shape}")
    if h.size == 0:
        raise ValueError("counts is empty: a histogram needs at least one bin")
    if e.size != h.size + 1:
        raise ValueError(f"edges must have len(counts) + 1 = {h.size + 1} entries, got {e.size}")
    h = h.astype(np.float64, copy=False)
    if not np.all(np.isfinite(h)) or np.any(h < 0):
        raise ValueError("counts must be finite and non-negative")
    if not np.all(np.isfinite(e)):
        raise ValueError("edges must be finite")
    if np.any(np.diff(e) < 0):
        raise ValueError("edges must be non-decreasing")
    return h, e


def _width(e: FloatArray) -> float:
    return float(e[1] - e[0])


def _empty_amax(e: FloatArray) -> float:
    """amax for a histogram without counts: its upper edge when positive, else the fallback."""
    top = float(e[-1])
    return top if top > 0 else FALLBACK_AMAX


def _last_nonempty_upper_edge(h: FloatArray, e: FloatArray) -> float:
    nz = np.flatnonzero(h)
    if nz.size == 0:
        return _empty_amax(e)
    amax = float(e[nz[-1] + 1])
    return amax if amax > 0 else FALLBACK_AMAX


def _degenerate(h: FloatArray, e: FloatArray) -> float | None:
    """The fallback amax for an empty or zero-width histogram, else None."""
    if not h.any():
        return _empty_amax(e)
    if _width(e) <= 0 or float(e[-1]) <= 0:
        return FALLBACK_AMAX
    return None


def _no_search_amax(h: FloatArray, e: FloatArray) -> float | None:
    """entropy/mse: the amax when there is nothing to search (degenerate, fewer than 128 bins, or only bin 0
    holds counts), else None."""
    degenerate = _degenerate(h, e)
    if degenerate is not None:
        return degenerate
    if h.size < NUM_LEVELS or not h[1:].any():
        return _last_nonempty_upper_edge(h, e)
    return None


def _cumsum0(x: FloatArray) -> FloatArray:
    """Cumulative sum with a leading zero: ``out[k] = sum(x[:k])``."""
    out = np.empty(x.size + 1, dtype=np.float64)
    out[0] = 0.0
    np.cumsum(x, out=out[1:])
    return out


# --------------------------------------------------------------------------------------------------
# minmax and percentile
# --------------------------------------------------------------------------------------------------


def minmax_amax(counts: Any, edges: Any, *, max_abs: float | None = None) -> float:
    """The largest ``|x|``: ``max_abs`` when given (finite, > 0), else the upper edge of the last non-empty bin."""
    h, e = _as_hist(counts, edges)
    if max_abs is not None and math.isfinite(max_abs) and max_abs > 0:
        return float(max_abs)
    degenerate = _degenerate(h, e)
    if degenerate is not None:
        return degenerate
    return _last_nonempty_upper_edge(h, e)


def percentile_amax(counts: Any, edges: Any, percentile: float = DEFAULT_PERCENTILE) -> float:
    """The smallest bin edge ``edges[i]`` (``i >= 1``) with ``sum(counts[:i]) >= percentile % of the total``."""
    p = check_percentile(percentile)
    h, e = _as_hist(counts, edges)
    degenerate = _degenerate(h, e)
    if degenerate is not None:
        return degenerate
    cum = np.cumsum(h)  # cum[k] = sum(h[: k + 1]) = count below edges[k + 1]
    total = float(cum[-1])
    # p is a decimal fraction: 99.9 % of 100000 must be 99900 values, not 99900.00000000001
    target = total * p / 100.0 - total * 1e-12
    k = int(np.searchsorted(cum, target, side="left"))
    k = min(k, h.size - 1)
    return float(e[k + 1])


# --------------------------------------------------------------------------------------------------
# mse
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _mse_levels_upto(capacity: int) -> IntArray:
    """First bin of INT8 levels ``1 .. 127`` for every candidate ``i = 128 .. capacity``.

    With amax ``a = i`` and step ``s = i / 127`` (both in units of the bin width ``w``), bin ``j``
    (centre ``j + 0.5``) rounds to level ``k`` when ``k - 0.5 <= (j + 0.5) / s < k + 0.5``, i.e. from
    bin ``b_k = ceil(((2k - 1) i - 127) / 254)`` on (always within ``[1, i]``). Level 0 starts at bin 0
    and every bin from ``b_127`` to the end saturates to level 127 (value ``a``). Ties at exactly
    ``k + 0.5`` give the same squared error whichever way they round. A candidate's levels do not
    depend on the number of bins, so one table serves every histogram up to ``capacity`` bins.
    """
    cands = np.arange(NUM_LEVELS, capacity + 1, dtype=np.int64)
    k = np.arange(1, QMAX + 1, dtype=np.int64)
    num = (2 * k[None, :] - 1) * cands[:, None] - QMAX
    bounds = -((-num) // (2 * QMAX))  # ceil division
    bounds.setflags(write=False)
    return bounds


def _mse_levels(n: int) -> tuple[IntArray, IntArray]:
    """``(cands[M], bounds[M, 127])`` for the candidates ``i = 128 .. n``."""
    bounds = _mse_levels_upto(_capacity(n))
    return np.arange(NUM_LEVELS, n + 1, dtype=np.int64), bounds[: n - NUM_LEVELS + 1]


def mse_errors(counts: Any, edges: Any) -> tuple[IntArray, FloatArray]:
    """Squared error ``sum_j h_j (c_j - q_i(c_j))^2`` (in units of ``w^2``) for every candidate ``i = 128 .. N``.

    ``q_i`` quantises to the grid ``k * i / 127``, ``k = 0 .. 127``, saturating at ``i``. With prefix
    sums ``P0, P1, P2`` of ``h, h c, h c^2`` and level boundaries ``b_1 .. b_127``, summation by parts
    gives, with ``s = i / 127``:

        E_i = P2[N] - 2 i P1[N] + i^2 P0[N] + 2 s sum_m P1[b_m] + s^2 sum_m (1 - 2m) P0[b_m]
    """
    h, _ = _as_hist(counts, edges)
    n = h.size
    if n < NUM_LEVELS:
        raise ValueError(f"mse search needs at least {NUM_LEVELS} bins, got {n}")
    cands, bounds = _mse_levels(n)
    c = np.arange(n, dtype=np.float64) + 0.5  # bin centres in units of w
    p0 = _cumsum0(h)
    p1 = _cumsum0(h * c)
    p2n = float(np.dot(h, c * c))
    i = cands.astype(np.float64)
    step = i / QMAX
    weights = 1.0 - 2.0 * np.arange(1, QMAX + 1, dtype=np.float64)
    err = (
        p2n
        - 2.0 * i * p1[-1]
        + i * i * p0[-1]
        + 2.0 * step * p1[bounds].sum(axis=1)
        + step * step * np.einsum("ij,j->i", p0[bounds], weights)
    )
    return cands, np.maximum(err, 0.0)


def mse_amax(counts: Any, edges: Any) -> float:
    """The edge ``edges[i]``, ``i = 128 .. N``, minimising the squared error of quantising the bin centres."""
    h, e = _as_hist(counts, edges)
    trivial = _no_search_amax(h, e)
    if trivial is not None:
        return trivial
    cands, err = mse_errors(h, e)
    best = int(cands[int(np.argmin(err))])
    return float(e[best])


# --------------------------------------------------------------------------------------------------
# entropy
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _entropy_groups_upto(capacity: int) -> tuple[IntArray, IntArray, IntArray, IntArray]:
    """Group structure of every candidate ``i = 128 .. capacity`` (a candidate's groups do not depend on N).

    Bin ``j`` of ``i`` bins is in group ``floor(j L / i)``, so group ``g`` is the bin range
    ``[ceil(g i / L), ceil((g + 1) i / L))``. Across all candidates only ~10 N distinct ranges occur,
    so the per-group sums (and their logarithms) are computed once per distinct range. Distinct ranges
    are numbered in order of first use, so the ranges of the first ``M`` candidates are ``0 .. K-1``.
    Returns ``(starts[U], ends[U], inverse[M, L], used[M])``: ``inverse[m, g]`` is the range of group
    ``g`` of candidate ``128 + m``; ``used[m]`` the number of ranges the first ``m + 1`` candidates use.
    """
    cands = np.arange(NUM_LEVELS, capacity + 1, dtype=np.int64)
    g = np.arange(NUM_LEVELS + 1, dtype=np.int64)
    bounds = (g[None, :] * cands[:, None] + NUM_LEVELS - 1) // NUM_LEVELS
    keys = (bounds[:, :-1] * (capacity + 1) + bounds[:, 1:]).ravel()
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    starts = uniq[order] // (capacity + 1)
    ends = uniq[order] % (capacity + 1)
    inverse = rank[inverse.ravel()].reshape(cands.size, NUM_LEVELS).astype(np.intp)
    used = np.maximum.accumulate(inverse.max(axis=1)) + 1
    for arr in (starts, ends, inverse, used):
        arr.setflags(write=False)
    return starts, ends, inverse, used


def _capacity(n: int) -> int:
    """Size of the cached candidate structures serving histograms of ``n`` bins (a power of two >= 2048)."""
    return max(2048, 1 << (n - 1).bit_length())


def _entropy_groups(n: int) -> tuple[IntArray, IntArray, IntArray, IntArray]:
    """``(cands[M], starts[K], ends[K], inverse[M, L])`` for the candidates ``i = 128 .. n``."""
    starts, ends, inverse, used = _entropy_groups_upto(_capacity(n))
    m = n - NUM_LEVELS + 1
    k = int(used[m - 1])
    return np.arange(NUM_LEVELS, n + 1, dtype=np.int64), starts[:k], ends[:k], inverse[:m]


def _xlogx(x: FloatArray) -> FloatArray:
    out = np.zeros_like(x)
    pos = x > 0
    out[pos] = x[pos] * np.log(x[pos])
    return out


def entropy_divergences(counts: Any, edges: Any) -> tuple[IntArray, FloatArray]:
    """KL divergence ``D_i`` for every candidate ``i = 128 .. N`` (``inf`` where P has mass Q lacks).

    For candidate ``i``: ``P = h[:i]`` with the clipped mass ``sum(h[i:])`` added to ``P[i - 1]``;
    the ``i`` bins form ``L = 128`` groups; ``Q`` spreads each group's total of ``h`` evenly over the
    group's non-empty bins of ``h``. ``h[0]`` is first replaced by ``h[1]``. With ``T`` the total,
    ``S = sum(h[:i])``, ``r_g = T_g / n_g`` the value Q gives a non-empty bin of group ``g``:

        T * D_i = sum_g (sum_{j in g} h_j log h_j - T_g log r_g)      (all bins j < i)
                  - h_{i-1} (log h_{i-1} - log r_last)                 (bin i-1 handled below)
                  + (S - h_{i-1}) log(S / T)
                  + P_{i-1} (log P_{i-1} - log r_last + log(S / T))

    Only bin ``i - 1`` can have ``p > 0`` and ``q = 0`` (when ``h[i-1] == 0`` but mass was clipped).
    Requires at least 128 bins and a non-zero total after the zero-spike suppression.
    """
    h, _ = _as_hist(counts, edges)
    h = h.copy()
    if h.size >= 2:
        h[0] = h[1]
    n = h.size
    if n < NUM_LEVELS:
        raise ValueError(f"entropy search needs at least {NUM_LEVELS} bins, got {n}")
    total = float(h.sum())
    if total <= 0:
        raise ValueError("entropy search needs a histogram with counts outside bin 0")
    cands, starts, ends, inverse = _entropy_groups(n)

    c_h = _cumsum0(h)
    c_nz = np.zeros(n + 1, dtype=np.intp)
    np.cumsum(h > 0, out=c_nz[1:])
    c_hl = _cumsum0(_xlogx(h))

    # per distinct group range: total of h, non-empty bins, sum of h log h
    t_g = c_h[ends] - c_h[starts]
    n_g = c_nz[ends] - c_nz[starts]
    hl_g = c_hl[ends] - c_hl[starts]
    log_int = np.log(np.maximum(np.arange(int(n_g.max()) + 1, dtype=np.float64), 1.0))
    # log of the value Q gives each non-empty bin of a group; finite (and unused) for empty groups,
    # whose contribution hl_g - t_g * log_r_g is then exactly 0 - 0
    log_r_g = np.log(np.maximum(t_g, _TINY)) - log_int[n_g]
    contrib = hl_g - t_g * log_r_g
    groups = contrib[inverse].sum(axis=1)
    log_r_last = log_r_g[inverse[:, -1]]

    s = c_h[cands]  # mass inside the first i bins
    last = h[cands - 1]  # h[i - 1]
    clipped = total - s
    p_last = last + clipped
    with np.errstate(divide="ignore", invalid="ignore"):
        log_s_t = np.log(np.where(s > 0, s, 1.0)) - math.log(total)
        safe_last = np.where(last > 0, last, 1.0)
        safe_p_last = np.where(p_last > 0, p_last, 1.0)
        kl = (
            groups
            - np.where(last > 0, last * (np.log(safe_last) - log_r_last), 0.0)
            + (s - last) * log_s_t
            + np.where(p_last > 0, p_last * (np.log(safe_p_last) - log_r_last + log_s_t), 0.0)
        ) / total
    kl = np.where((last <= 0) & (clipped > 0), np.inf, kl)
    # Exact KL is >= 0; clamp rounding noise so ties among perfect candidates stay ties.
    kl = np.maximum(kl, 0.0)
    return cands, kl


def entropy_amax(counts: Any, edges: Any) -> float:
    """TensorRT EntropyCalibration2-style threshold: the largest ``i`` with minimal KL, ``amax = edges[i]``."""
    h, e = _as_hist(counts, edges)
    trivial = _no_search_amax(h, e)
    if trivial is not None:
        return trivial
    cands, kl = entropy_divergences(h, e)
    best_kl = float(kl.min())  # finite: i = N clips nothing
    tie = kl <= best_kl + _KL_TIE_ATOL + _KL_TIE_RTOL * best_kl
    best = int(cands[np.flatnonzero(tie)[-1]])
    return float(e[best])


# --------------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------------


def compute_amax(
    counts: Any,
    edges: Any,
    algo: str,
    *,
    percentile: float = DEFAULT_PERCENTILE,
    max_abs: float | None = None,
) -> float:
    """amax of one tensor with algorithm ``algo`` (one of ``ALGORITHMS``).

    ``percentile`` is used by ``percentile`` only; ``max_abs`` (the exact running max |x|, optional)
    by ``minmax`` only.
    """
    if algo == "entropy":
        return entropy_amax(counts, edges)
    if algo == "minmax":
        return minmax_amax(counts, edges, max_abs=max_abs)
    if algo == "percentile":
        return percentile_amax(counts, edges, percentile)
    if algo == "mse":
        return mse_amax(counts, edges)
    check_algorithm(algo)
    raise AssertionError(f"unhandled algorithm {algo!r}")  # pragma: no cover - ALGORITHMS are all handled
