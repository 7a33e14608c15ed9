"""Streaming activation statistics through ONNX Runtime.

For every tensor that will be quantized, keep a histogram of |x| whose memory does not depend on the
number of images, plus the exact running max |x|:

- The model is extended *in the graph* with, per tensor, a ``ReduceMax`` and a ``ReduceMin`` (the exact
  signed range, computed by ONNX Runtime and returned as scalars, or per channel for a tensor that a
  Split divides) and, for large tensors, a ``Gather`` of a fixed stratified subset of spatial positions
  (every channel at each; at most ``max_positions`` per image; see :func:`_sample_positions`). Small
  tensors are returned whole. So the costly part, copying tens of millions of activations out of ONNX
  Runtime, is avoided, and each image contributes the same sample whatever the batch size (1 batch of
  8 == 8 batches of 1, bit for bit).
- On the CPU, images run side by side, one per core (see :func:`_parallelism`), each binned into its
  own accumulators, which merge exactly at the end: the result does not depend on that either.
- The returned values' |x| go into a linear histogram whose bin width is a power of two, 2**k, with k
  the smallest integer such that max |x| < 4096 * 2**k: between 2048 and 4096 bins span the data. When
  a later batch raises the max, adjacent bins merge in pairs, which is exact (never a re-binning that
  splits counts), so the result depends only on the values seen, not on batching or order.
- The ``(counts, edges)`` handed to :mod:`calibrators.ranges` are those bins up to the one holding the max.
- Tensors that need no measurement of their own are derived exactly: a Concat output's histogram is the
  sum of its inputs' (same sampling density), a Split output is its channels of the Split input (same
  sample, exact range from the per-channel one), a SiLU's Sigmoid output has range [0, 1], and a Conv
  output consumed only by its SiLU (fused into one layer by TensorRT) takes the SiLU output's range.

``max_positions=None`` histograms every value (exact mode, slower).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trtq import onnxgraph
from trtq.errors import TrtqError
from trtq.machine import usable_cpus as _usable_cores

logger = logging.getLogger(__name__)

DEFAULT_MAX_POSITIONS = 256  # spatial positions sampled per tensor and image (every channel at each)
CAPACITY = 4096  # histogram bins: the data spans between CAPACITY/2 and CAPACITY of them
# Sampled tensors with at most this many spatial positions are gathered channels-last (see build_stats_graph):
# below it a transpose costs less than ONNX Runtime's per-value Gather; above it (160x160 and up) more.
CHANNELS_LAST_MAX_SPATIAL = 8192

# Ops whose float inputs/outputs TensorRT may run in INT8 (all of them get a range in the cache).
QUANTIZABLE_OPS = frozenset(
    {"Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Concat", "MaxPool", "Resize", "Sigmoid", "Mul", "Split"}
)


@dataclass(frozen=True)
class TensorHistogram:
    """|x| statistics of one tensor over the calibration set."""

    name: str
    counts: np.ndarray  # int64[n], CAPACITY/2 < n <= CAPACITY
    edges: np.ndarray  # float64[n + 1], edges[0] == 0, uniform power-of-two width, edges[-1] > max_abs
    max_abs: float  # exact max |x| over every value (not only the sample)
    min_value: float  # exact signed min
    max_value: float  # exact signed max
    count: int  # number of values histogrammed
    positions: int  # spatial positions sampled per image (every channel at each); 0 = every value
    derived: str = ""  # how it was derived from measured tensors ("" = measured)
    known_amax: float | None = None  # a range fixed by the graph (a SiLU's sigmoid: 1.0), whatever the algorithm
    nonfinite: int = 0  # NaN / inf values seen in the sample, left out of the histogram and the range
    nonfinite_batches: int = 0  # batches whose range had NaN / inf (then taken from the finite sampled values)


_LOCAL = threading.local()


def _scratch(n: int) -> tuple[np.ndarray, np.ndarray]:
    """This thread's reusable float32 and int32 work buffers of length ``n``."""
    f32: np.ndarray | None = getattr(_LOCAL, "f32", None)
    if f32 is None or f32.size < n:
        _LOCAL.f32 = np.empty(n, np.float32)
        _LOCAL.i32 = np.empty(n, np.int32)
    return _LOCAL.f32[:n], _LOCAL.i32[:n]


class _Accumulator:
    """Exact streaming histogram of |x| on linear bins of width 2**k, plus the exact signed range.

    ``k`` is the smallest integer with ``max|x| < CAPACITY * 2**k``, so between CAPACITY/2 and CAPACITY
    bins span the data. When a batch raises the max past the last bin, adjacent bins are merged in pairs
    (exact: the edges of the coarser grid are edges of the finer one). The final histogram therefore
    depends only on the multiset of values, not on how they were batched, and is exact at its width.
    """

    def __init__(self, positions: int) -> None:
        self.counts = np.zeros(CAPACITY, dtype=np.int64)
        self.k: int | None = None  # bin width 2**k; None while every value seen is 0
        self.zeros = 0  # values seen while k is None (all exactly 0)
        self.min_value = np.inf
        self.max_value = -np.inf
        self.count = 0
        self.positions = positions
        self.derived = ""
        self.known_amax: float | None = None
        self.nonfinite = 0  # NaN / inf values in the samples, left out
        self.nonfinite_batches = 0  # batches whose exact range was not finite

    @property
    def max_abs(self) -> float:
        return max(abs(self.min_value), abs(self.max_value)) if self.count else 0.0

    def _grow_to(self, max_abs: float) -> None:
        if max_abs <= 0.0:
            return
        mant, exp = np.frexp(max_abs / CAPACITY)  # max_abs / CAPACITY = mant * 2**exp, 0.5 <= mant < 1
        k_needed = int(exp)  # smallest k with max_abs < CAPACITY * 2**k
        if self.k is None:
            self.k = k_needed
            self.counts[0] += self.zeros
            self.zeros = 0
        elif k_needed > self.k:
            factor = 1 << min(k_needed - self.k, 62)
            if factor >= CAPACITY:
                merged = np.zeros(CAPACITY, dtype=np.int64)
                merged[0] = self.counts.sum()
            else:
                merged = np.zeros(CAPACITY, dtype=np.int64)
                merged[: CAPACITY // factor] = self.counts.reshape(-1, factor).sum(axis=1)
            self.counts = merged
            self.k = k_needed

    def update(self, values: np.ndarray, vmin: float, vmax: float, *, partial: bool = False) -> None:
        """Add one batch: ``values`` are (a sample of) the signed x, ``vmin``/``vmax`` the exact signed range of x.

        NaN and inf are left out of the histogram and the range, and counted. A range that is not finite (a
        reduction over values with a NaN or inf), or ``partial`` (finite, but some of its parts were not), is
        completed by the finite sampled values: each bound keeps its own finite value, so one NaN no longer
        costs a tensor its signed minimum.
        """
        v = values.reshape(-1)
        if v.dtype != np.float32:
            v = v.astype(np.float32)
        vmin, vmax = float(vmin), float(vmax)
        bad = 0
        with np.errstate(invalid="ignore", over="ignore"):
            total = v.sum()
        if not np.isfinite(total):  # one pass; a NaN or inf (or a float32 overflow) sends it to the exact count
            keep = np.isfinite(v)
            bad = int(v.size - np.count_nonzero(keep))
            if bad:
                v = v[keep]
        self.nonfinite += bad
        exact = np.isfinite(vmin) and np.isfinite(vmax) and not partial
        if not exact:
            self.nonfinite_batches += 1
        if bad or not exact:
            lo, hi = (float(v.min()), float(v.max())) if v.size else (np.inf, -np.inf)
            vmin = min(vmin, lo) if np.isfinite(vmin) else lo
            vmax = max(vmax, hi) if np.isfinite(vmax) else hi
        self.min_value = min(self.min_value, vmin)
        self.max_value = max(self.max_value, vmax)
        if v.size == 0:
            return
        self._grow_to(max(abs(self.min_value), abs(self.max_value)))  # the exact range covers every value
        self.count += v.size
        if self.k is None:
            self.zeros += v.size
            return
        # Scaling by a power of two is exact; the cast truncates towards 0: key = |trunc(x / 2**k)| = floor(|x| / 2**k).
        scratch = _scratch(v.size)
        np.multiply(v, np.float32(2.0**-self.k), out=scratch[0])
        np.copyto(scratch[1], scratch[0], casting="unsafe")
        np.abs(scratch[1], out=scratch[1])
        hist = np.bincount(scratch[1], minlength=CAPACITY)
        if hist.size > CAPACITY:  # only if a caller's values exceed the range it reported
            hist[CAPACITY - 1] += hist[CAPACITY:].sum()
        self.counts += hist[:CAPACITY]

    def add_point(self, value: float, count: int) -> None:
        """``count`` values all equal to ``value`` (>= 0)."""
        self.min_value = min(self.min_value, value)
        self.max_value = max(self.max_value, value)
        self._grow_to(value)
        self.count += count
        if self.k is None:
            self.zeros += count
        else:
            self.counts[min(int(np.ldexp(value, -self.k)), CAPACITY - 1)] += count

    def merge(self, other: _Accumulator) -> None:
        self.min_value = min(self.min_value, other.min_value)
        self.max_value = max(self.max_value, other.max_value)
        self.count += other.count
        self.nonfinite += other.nonfinite
        self.nonfinite_batches += other.nonfinite_batches
        if other.k is None:
            self._add_zeros(other.zeros)
            return
        assert other.k is not None
        self._grow_to(max(self.max_abs, CAPACITY * 2.0**other.k * 0.5))
        assert self.k is not None
        shift = self.k - other.k
        if shift >= CAPACITY.bit_length() - 1:  # other's whole span, CAPACITY * 2**other.k, fits in bin 0
            self.counts[0] += other.counts.sum()
            return
        factor = 1 << shift
        counts = other.counts.reshape(-1, factor).sum(axis=1) if factor > 1 else other.counts
        self.counts[: counts.size] += counts

    def _add_zeros(self, n: int) -> None:
        if self.k is None:
            self.zeros += n
        else:
            self.counts[0] += n

    def finalize(self, name: str, min_bins: int = 0) -> TensorHistogram:
        if self.count == 0:
            if self.nonfinite:
                raise TrtqError(f"every value of tensor {name!r} was NaN or inf on the calibration images: "
                                "check the model (an FP16 overflow?) and the images")
            raise TrtqError(f"no statistics were collected for tensor {name!r}")
        max_abs = self.max_abs
        if self.k is None:  # every value was exactly 0: any range represents it; use [0, 1]
            counts = np.zeros(CAPACITY // 2 + 1, dtype=np.int64)
            counts[0] = self.zeros
            edges = np.linspace(0.0, 1.0, counts.size + 1)
        else:
            width = 2.0**self.k
            n = min(max(int(np.floor(max_abs / width)) + 1, min_bins), CAPACITY)
            counts = self.counts[:n].copy()
            counts[-1] += self.counts[n:].sum()
            edges = np.arange(n + 1, dtype=np.float64) * width
        return TensorHistogram(
            name, counts, edges, max_abs, self.min_value, self.max_value, self.count, self.positions, self.derived,
            self.known_amax, self.nonfinite, self.nonfinite_batches,
        )

    def warn_nonfinite(self, name: str) -> None:
        """One warning for a tensor that had NaN / inf values (what was left out, and where its range comes from)."""
        if not (self.nonfinite or self.nonfinite_batches):
            return
        logger.warning(
            "tensor %s: NaN/inf activations in %d batch(es) (%d of the %d sampled values) were left out of its "
            "histogram and range; its range [%.6g, %.6g] is that of the finite values",
            name, self.nonfinite_batches, self.nonfinite, self.count + self.nonfinite, self.min_value, self.max_value,
        )


def _float_types(model: Any) -> dict[str, int]:
    """ONNX element type of every tensor whose type shape inference can tell."""
    from onnx import shape_inference

    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shape inference is best effort
        inferred = model
    types: dict[str, int] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        types[vi.name] = vi.type.tensor_type.elem_type
    return types


def calibration_tensors(model: Any) -> list[str]:
    """Float tensors TensorRT may run in INT8, in graph order: the graph input, and the inputs and
    outputs of Conv / ConvTranspose / MatMul / Gemm, Add, Concat, MaxPool, Resize, Sigmoid, Mul, Split.
    Initializers and constants are excluded (weights are quantized per channel without calibration)."""
    from onnx import TensorProto

    types = _float_types(model)
    constants = onnxgraph.constant_names(model.graph)
    names: list[str] = []
    seen: set[str] = set()

    def add(t: str) -> None:
        if t and t not in seen and t not in constants and types.get(t) in (TensorProto.FLOAT, TensorProto.FLOAT16):
            seen.add(t)
            names.append(t)

    for inp in model.graph.input:
        add(inp.name)
    for node in model.graph.node:
        if node.op_type in QUANTIZABLE_OPS:
            for t in [*node.input, *node.output]:
                add(t)
    return names


def _shapes(model: Any, input_shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Static shapes of every tensor for the given input shapes (empty where unknown)."""
    import onnx
    from onnx import shape_inference

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for inp in m.graph.input:
        if inp.name in input_shapes:
            dims = inp.type.tensor_type.shape.dim
            for d, v in zip(dims, input_shapes[inp.name], strict=False):
                d.Clear()
                d.dim_value = int(v)
    del m.graph.value_info[:]
    try:
        m = shape_inference.infer_shapes(m, data_prop=True)
    except Exception:  # noqa: BLE001
        return {}
    out: dict[str, tuple[int, ...]] = {}
    for vi in [*m.graph.value_info, *m.graph.input, *m.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            out[vi.name] = tuple(int(d.dim_value) for d in dims)
    return out


def _sample_positions(shape: tuple[int, ...], max_positions: int | None) -> np.ndarray | None:
    """The spatial positions (flat indices over the axes after the channel axis) sampled in every image,
    or ``None`` for all of them.

    A stratified (Latin hypercube) pseudo-random set: position i lies in the i-th of ``max_positions``
    row strata and in a permuted column stratum, so every row and every column band is sampled at the
    same rate. A regular grid would alias with image structure (e.g. the rows where letterbox padding
    starts, which hold rare, large activations) and plain random sampling leaves whole rows out. The set
    depends on the spatial shape only, so it is the same for every image and for every tensor of that
    size (the inputs of one Concat are sampled alike).
    """
    if max_positions is None or len(shape) < 3:
        return None
    dims = shape[2:]
    spatial = int(np.prod(dims))
    if spatial <= max_positions:
        return None
    p = max_positions
    rng = np.random.default_rng(spatial)  # deterministic
    if len(dims) == 1:
        idx = ((np.arange(p) + rng.random(p)) * dims[0] / p).astype(np.int64)
    elif len(dims) == 2:
        h, w = dims
        rows = ((np.arange(p) + rng.random(p)) * h / p).astype(np.int64)
        cols = ((rng.permutation(p) + rng.random(p)) * w / p).astype(np.int64)
        idx = rows * w + cols
    else:
        idx = rng.choice(spatial, size=p, replace=False)
    return np.unique(idx).astype(np.int64)


def _density(shape: tuple[int, ...] | None, max_positions: int | None) -> tuple[int, ...] | str | None:
    """What decides a tensor's sampling: its spatial size when sampled, else "all" (None: unknown)."""
    if shape is None:
        return None
    return "all" if _sample_positions(shape, max_positions) is None else tuple(shape[2:])


@dataclass
class StatsPlan:
    """Which tensors are measured and which are derived exactly (or by a stated rule) from measured ones."""

    measured: list[str]
    # Concat output -> its inputs: histogram and range are the sum / union of the inputs' (exact).
    concat: dict[str, list[str]]
    # tensor -> (source, rule): "silu_preact" (a Conv output consumed only by its SiLU: fused away by
    # TensorRT; takes the SiLU output's range) or "sigmoid" (a SiLU's Sigmoid: range [0, 1]).
    alias: dict[str, tuple[str, str]]
    # Split output -> (measured input, first channel, end channel): the same sample and the exact range of
    # those channels of the input, whose range is therefore measured per channel.
    split: dict[str, tuple[str, int, int]] = field(default_factory=dict)


def _constant_value(model: Any, name: str) -> np.ndarray | None:
    """The value of an initializer or of a ``Constant`` node's output, else None."""
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] == name:
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    return None


def _split_channels(model: Any, node: Any, shapes: dict[str, tuple[int, ...]]) -> list[tuple[int, int]] | None:
    """``[(first, end), ...]`` channel ranges of a Split along the channel axis, one per output; None for any
    other Split or one whose sizes are not static."""
    shape = shapes.get(node.input[0]) if node.input else None
    if not shape or len(shape) < 2:
        return None
    axis = next((int(a.i) for a in node.attribute if a.name == "axis"), 0)
    if axis % len(shape) != 1:
        return None
    channels = shape[1]
    sizes: list[int] | None = None
    if len(node.input) > 1 and node.input[1]:
        value = _constant_value(model, node.input[1])
        sizes = None if value is None else [int(v) for v in value.reshape(-1)]
    elif any(a.name == "split" for a in node.attribute):  # opset < 13
        sizes = [int(v) for a in node.attribute if a.name == "split" for v in a.ints]
    elif any(a.name == "num_outputs" for a in node.attribute):  # opset >= 18: ceil(C / n) each, the rest last
        n = next(int(a.i) for a in node.attribute if a.name == "num_outputs")
        size = -(-channels // n) if n > 0 else 0
        sizes = [size] * (n - 1) + [channels - size * (n - 1)]
    elif node.output and channels % len(node.output) == 0:
        sizes = [channels // len(node.output)] * len(node.output)
    if sizes is None or len(sizes) != len(node.output) or sum(sizes) != channels or min(sizes) <= 0:
        return None
    ends = np.cumsum(sizes).tolist()
    return [(int(e - n), int(e)) for n, e in zip(sizes, ends, strict=True)]


def plan_statistics(
    model: Any,
    tensor_names: Sequence[str],
    shapes: dict[str, tuple[int, ...]],
    max_positions: int | None,
    *,
    fused_silu: bool = True,
) -> StatsPlan:
    consumers = onnxgraph.consumers(model.graph)
    producer = onnxgraph.producers(model.graph)
    graph_outputs = {o.name for o in model.graph.output}
    constants = onnxgraph.constant_names(model.graph)

    def silu_of(t: str) -> tuple[str, str] | None:
        """For a Conv output x used only by Sigmoid(x) and Mul(x, Sigmoid(x)): (mul_output, sigmoid_output)."""
        users = consumers.get(t, [])
        if t in graph_outputs or len(users) != 2:
            return None
        sig = next((u for u in users if u.op_type == "Sigmoid"), None)
        mul = next((u for u in users if u.op_type == "Mul"), None)
        if sig is None or mul is None or set(mul.input) != {t, sig.output[0]}:
            return None
        if consumers.get(sig.output[0], []) != [mul] or sig.output[0] in graph_outputs:
            return None
        return mul.output[0], sig.output[0]

    measured: list[str] = []
    concat: dict[str, list[str]] = {}
    alias: dict[str, tuple[str, str]] = {}
    split: dict[str, tuple[str, int, int]] = {}
    seen: set[str] = set()

    def want(t: str) -> None:
        if t in seen:
            return
        seen.add(t)
        node = producer.get(t)
        if node is not None and node.op_type == "Sigmoid":
            src = node.input[0]
            pair = silu_of(src)
            if pair is not None and pair[1] == t:
                alias[t] = (pair[0], "sigmoid")
                want(pair[0])
                return
        pair = silu_of(t) if fused_silu else None
        if pair is not None and node is not None and node.op_type == "Conv":  # TensorRT fuses Conv + SiLU only
            alias[t] = (pair[0], "silu_preact")
            want(pair[0])
            return
        if node is not None and node.op_type == "Concat":
            ins = [i for i in node.input if i]
            densities = {_density(shapes.get(i), max_positions) for i in ins}
            if ins and not any(i in constants for i in ins) and None not in densities and len(densities) == 1:
                concat[t] = ins
                for i in ins:
                    want(i)
                return
        if node is not None and node.op_type == "Split" and node.input[0] not in constants:
            ranges = _split_channels(model, node, shapes)
            src = node.input[0]
            if ranges is not None:
                want(src)
                if src in measured:  # not itself derived: its sample holds every channel
                    for out, (first, end) in zip(node.output, ranges, strict=True):
                        if out == t:
                            split[t] = (src, first, end)
                            return
        measured.append(t)

    for t in tensor_names:
        want(t)
    return StatsPlan(measured, concat, alias, split)


@dataclass
class StatsGraph:
    model_bytes: bytes
    # tensor -> (sample output, min output, max output, sampled positions per image (0 = all))
    outputs: dict[str, tuple[str, str, str, int]]
    # tensor -> the axis of its sample output that holds the channels
    channel_axis: dict[str, int] = field(default_factory=dict)


def build_stats_graph(
    model: Any,
    measured: Sequence[str],
    shapes: dict[str, tuple[int, ...]],
    max_positions: int | None,
    *,
    per_channel: Collection[str] = (),
) -> StatsGraph:
    """Extend ``model`` with exact range reductions and spatial sampling outputs for ``measured`` tensors.

    The min and max outputs are scalars, or one per channel for the tensors in ``per_channel``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    opset = onnxgraph.default_opset(m)  # opset 11-12 models are calibrated as they are (axes attributes)
    outputs: dict[str, tuple[str, str, str, int]] = {}
    channel_axis: dict[str, int] = {}
    for i, name in enumerate(measured):
        tag = f"trtq_stats_{i}"
        mn, mx = f"{tag}_min", f"{tag}_max"
        if name in per_channel:  # over every axis but the channels'
            axes = [a for a in range(len(shapes[name])) if a != 1]
            if opset >= 18:  # axes became an input
                g.initializer.append(helper.make_tensor(f"{tag}_axes", TensorProto.INT64, [len(axes)], axes))
            for op, out in (("ReduceMin", mn), ("ReduceMax", mx)):
                if opset >= 18:
                    g.node.append(helper.make_node(op, [name, f"{tag}_axes"], [out], name=f"{tag}_{op}", keepdims=0))
                else:
                    g.node.append(helper.make_node(op, [name], [out], name=f"{tag}_{op}", keepdims=0, axes=axes))
        else:
            # No axes: reduce over every axis (valid before and after opset 18, where axes became an input).
            g.node.append(helper.make_node("ReduceMin", [name], [mn], name=f"{tag}_ReduceMin", keepdims=0))
            g.node.append(helper.make_node("ReduceMax", [name], [mx], name=f"{tag}_ReduceMax", keepdims=0))
        positions = _sample_positions(shapes.get(name, ()), max_positions)
        src = name
        channel_axis[name] = 1
        if positions is not None:
            shape = shapes[name]
            axis = 2
            if len(shape) > 3 and int(np.prod(shape[2:])) <= CHANNELS_LAST_MAX_SPATIAL:
                # NCHW -> N, H*W, C: each sampled position is then one contiguous block of C values. Same
                # values as gathering from N, C, H*W (the histogram does not depend on their order), but
                # ONNX Runtime's Gather copies a block per index instead of one value per index and channel.
                perm = [0, *range(2, len(shape)), 1]
                g.node.append(helper.make_node("Transpose", [name], [f"{tag}_nhwc"], name=f"{tag}_Transpose", perm=perm))
                g.initializer.append(helper.make_tensor(f"{tag}_shape", TensorProto.INT64, [3], [0, -1, shape[1]]))
                g.node.append(helper.make_node("Reshape", [f"{tag}_nhwc", f"{tag}_shape"], [f"{tag}_flat"], name=f"{tag}_Reshape"))
                src, axis = f"{tag}_flat", 1
                channel_axis[name] = 2
            elif len(shape) > 3:  # NCHW -> N, C, H*W
                g.initializer.append(helper.make_tensor(f"{tag}_shape", TensorProto.INT64, [3], [0, 0, -1]))
                g.node.append(helper.make_node("Reshape", [name, f"{tag}_shape"], [f"{tag}_flat"], name=f"{tag}_Reshape"))
                src = f"{tag}_flat"
            g.initializer.append(numpy_helper.from_array(positions, f"{tag}_positions"))
            g.node.append(helper.make_node("Gather", [src, f"{tag}_positions"], [f"{tag}_gather"], name=f"{tag}_Gather", axis=axis))
            src = f"{tag}_gather"
        if src == name:  # returned whole, under a name of its own (the tensor may be a graph output already)
            g.node.append(helper.make_node("Identity", [name], [f"{tag}_all"], name=f"{tag}_Identity"))
            src = f"{tag}_all"
        sample = src  # signed values: |x| is taken while binning them (one ONNX Runtime node less per tensor)
        g.output.append(helper.make_tensor_value_info(sample, TensorProto.FLOAT, None))
        g.output.append(helper.make_tensor_value_info(mn, TensorProto.FLOAT, None))
        g.output.append(helper.make_tensor_value_info(mx, TensorProto.FLOAT, None))
        outputs[name] = (sample, mn, mx, 0 if positions is None else len(positions))
    return StatsGraph(m.SerializeToString(), outputs, channel_axis)


#: Images calibrated at once on the CPU (see :func:`_parallelism`); each one in flight adds about 250 MB
#: (YOLOv8n at 640), so two keep the peak near 750 MB.
MAX_PARALLEL_IMAGES = 2


def _parallelism(providers: Sequence[str]) -> tuple[int, int | None]:
    """(images run at once, ONNX Runtime intra-op threads per run; None = its default).

    On the CPU, images run side by side, each on its own core(s): a small network like YOLOv8n keeps
    one core busy far better than it keeps several busy with one image (ONNX Runtime's threads wait for
    each other at every layer), and it leaves no core idle while the statistics of an image are binned.
    The histograms do not depend on which image ran where (the accumulators merge exactly). Other
    providers (CUDA) run one image at a time with their defaults.
    """
    if any(p != "CPUExecutionProvider" for p in providers):
        return 1, None
    cores = _usable_cores()
    streams = max(1, min(cores, MAX_PARALLEL_IMAGES))
    return streams, max(1, cores // streams)


def make_session(
    model: bytes | str | Path, providers: Sequence[str] | None = None, *, threads: int | None = None
) -> Any:
    """An ONNX Runtime session for calibration: the CUDA provider where present, else the CPU.

    ``threads``: intra-op threads of the session (None: ONNX Runtime's default, one per core)."""
    from trtq.ort import ort_session

    if providers is None:
        providers = _default_providers()
    return ort_session(model if isinstance(model, bytes) else Path(model), providers, threads=threads)


def _default_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def collect_histograms(
    model_path: str | Path,
    batches: Iterable[dict[str, np.ndarray]],
    tensor_names: Sequence[str] | None = None,
    *,
    max_positions: int | None = DEFAULT_MAX_POSITIONS,
    progress: bool = False,
    providers: Sequence[str] | None = None,
    total: int | None = None,
    fused_silu: bool = True,
    parallel: int | None = None,
) -> dict[str, TensorHistogram]:
    """Stream ``batches`` through the model and return one |x| histogram per requested tensor.

    ``tensor_names`` defaults to :func:`calibration_tensors`. Memory is O(tensors x 32768) per image in
    flight, whatever the number of batches. ``max_positions`` caps the spatial positions histogrammed per
    tensor and image (the exact range is always computed over every value); ``None`` histograms every
    value. ``fused_silu=False`` measures a Conv output that feeds only its SiLU instead of giving it the
    SiLU output's range (for targets that do not fuse SiLU into the Conv). ``parallel`` overrides the
    number of batches run at once (default: see :func:`_parallelism`); the result does not depend on it.
    """
    import onnx

    try:
        model = onnx.load(str(model_path))
    except Exception as exc:
        raise TrtqError(f"{model_path} is not a readable ONNX model ({type(exc).__name__})") from None
    from trtq.precision import as_float32

    model = as_float32(model)  # statistics of an FP16 model in float32 (same tensor names)
    names = list(tensor_names) if tensor_names is not None else calibration_tensors(model)
    if not names:
        raise TrtqError(f"{model_path}: no tensors to calibrate were found")
    known = {t for n in model.graph.node for t in [*n.input, *n.output]} | {i.name for i in model.graph.input}
    missing = [t for t in names if t not in known]
    if missing:
        raise TrtqError(f"tensors not in {model_path}: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")

    feeds = iter(batches)
    first = next(feeds, None)
    if first is None:
        raise TrtqError("calibration received no batches")
    first_shapes = {k: tuple(v.shape) for k, v in first.items()}
    tensor_shapes = _shapes(model, first_shapes)
    plan = plan_statistics(model, names, tensor_shapes, max_positions, fused_silu=fused_silu)
    sources = {src for src, _, _ in plan.split.values()}
    graph = build_stats_graph(model, plan.measured, tensor_shapes, max_positions, per_channel=sources)
    chosen = list(providers) if providers is not None else _default_providers()
    streams, threads = _parallelism(chosen)
    if parallel is not None:
        streams = max(1, int(parallel))
    session = make_session(graph.model_bytes, chosen, threads=threads)
    output_names = list(dict.fromkeys(x for n in plan.measured for x in graph.outputs[n][:3]))

    def new_accumulators() -> dict[str, _Accumulator]:
        assert graph is not None
        accs = {n: _Accumulator(graph.outputs[n][3]) for n in plan.measured}
        for n, (src, _, _) in plan.split.items():
            accs[n] = _Accumulator(graph.outputs[src][3])
        return accs

    def add(accs: dict[str, _Accumulator], results: dict[str, np.ndarray]) -> None:
        for n in plan.measured:
            sample, mn, mx, _ = graph.outputs[n]
            lo, hi, partial = _finite_range(results[mn], results[mx])
            accs[n].update(results[sample], lo, hi, partial=partial)
        for n, (src, first_channel, end_channel) in plan.split.items():
            sample, mn, mx, _ = graph.outputs[src]
            part = results[sample][(slice(None),) * graph.channel_axis[src] + (slice(first_channel, end_channel),)]
            lo, hi, partial = _finite_range(results[mn][first_channel:end_channel], results[mx][first_channel:end_channel])
            accs[n].update(part, lo, hi, partial=partial)

    # Each worker takes the next batch (decoding it while the others run), runs it on one core and bins
    # its statistics into its own accumulators; they are merged at the end (exactly).
    lock = threading.Lock()
    pending: list[dict[str, np.ndarray]] = [first]
    failures: list[BaseException] = []
    per_worker: list[dict[str, _Accumulator]] = [new_accumulators() for _ in range(streams)]
    bar = None
    if progress:
        from tqdm import tqdm

        # disable=None: no bar when stderr is not a terminal (logs, CI, pipes)
        bar = tqdm(total=total, unit="img", desc="calibrating", leave=False, dynamic_ncols=True, disable=None)

    def next_feed() -> dict[str, np.ndarray] | None:
        with lock:
            if failures:
                return None
            feed = pending.pop() if pending else next(feeds, None)
        if feed is not None and any(tuple(v.shape)[1:] != first_shapes[k][1:] for k, v in feed.items()):
            raise TrtqError("calibration batches changed image size mid-stream")
        return feed

    def work(accs: dict[str, _Accumulator]) -> None:
        try:
            while (feed := next_feed()) is not None:
                results = dict(zip(output_names, session.run(output_names, feed), strict=True))
                add(accs, results)
                if bar is not None:
                    with lock:
                        bar.update(next(iter(feed.values())).shape[0])
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            with lock:
                failures.append(exc)

    workers = [threading.Thread(target=work, args=(accs,), name=f"trtq-calibrate-{i}", daemon=True)
               for i, accs in enumerate(per_worker)]
    try:
        for t in workers:
            t.start()
        for t in workers:
            while t.is_alive():
                t.join(0.2)
    except BaseException:  # Ctrl-C: let the workers stop at their next batch, then leave
        with lock:
            failures.append(KeyboardInterrupt())
        for t in workers:  # a thread still inside ONNX Runtime at interpreter exit aborts the process
            t.join()
        raise
    finally:
        if bar is not None:
            bar.close()
    if failures:
        raise failures[0]
    accs = per_worker[0]
    for other in per_worker[1:]:
        for n, acc in accs.items():
            acc.merge(other[n])
    for n, (src, first_channel, end_channel) in plan.split.items():
        accs[n].derived = f"channels {first_channel}:{end_channel} of {src} (Split): its sample and exact range"
    for n, acc in accs.items():  # measured tensors only: one warning each, none repeated for derived ones
        acc.warn_nonfinite(n)
    return {n: _resolve(n, plan, accs).finalize(n) for n in names}


def _finite_range(mins: np.ndarray, maxs: np.ndarray) -> tuple[float, float, bool]:
    """``(min, max, partial)`` of per-batch (or per-channel) reduced bounds, over their finite entries only.

    A bound with no finite entry is NaN; ``partial`` says some entry was NaN / inf (the range then misses
    those values and is completed from the sample, see :meth:`_Accumulator.update`).
    """
    lo_ok, hi_ok = np.isfinite(mins), np.isfinite(maxs)
    lo = float(mins[lo_ok].min()) if lo_ok.any() else float("nan")
    hi = float(maxs[hi_ok].max()) if hi_ok.any() else float("nan")
    return lo, hi, not (bool(lo_ok.all()) and bool(hi_ok.all()))


def _resolve(name: str, plan: StatsPlan, accs: dict[str, _Accumulator]) -> _Accumulator:
    """The accumulator of a measured tensor, or one derived from measured ones."""
    if name in accs:
        return accs[name]
    if name in plan.concat:
        parts = [_resolve(i, plan, accs) for i in plan.concat[name]]
        out = _Accumulator(parts[0].positions)
        for p in parts:
            out.merge(p)
        out.derived = "concat of " + ", ".join(plan.concat[name])
        return out
    source, rule = plan.alias[name]
    src = _resolve(source, plan, accs)
    out = _Accumulator(src.positions)
    if rule == "sigmoid":
        # A point mass at 1: every range algorithm then gives amax 1, the sigmoid's full range.
        out.add_point(1.0, src.count)
        out.min_value = 0.0
        out.known_amax = 1.0
        out.derived = f"sigmoid inside the SiLU of {source}: range [0, 1]"
    else:
        out.merge(src)
        out.derived = f"pre-activation fused into the SiLU by TensorRT: range of {source}"
    return out
