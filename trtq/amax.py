"""Activation ranges for the Q/DQ writers: statistics over the calibration images, then amax per tensor.

The statistics are streamed by :mod:`calibrators.collect`, the range math is :mod:`calibrators.ranges`;
this adds the choices the Q/DQ writers share (:mod:`trtq.quantize`, :mod:`trtq.cpu_target`,
:mod:`trtq.sensitivity`): graph inputs keep their exact max, and ``auto`` picks per tensor the candidate
with the smallest expected squared error.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from calibrators.ranges import ALGORITHMS, DEFAULT_ALGO, DEFAULT_PERCENTILE, QMAX
from trtq.errors import TrtqError

__all__ = ["AUTO_CANDIDATES", "DEFAULT_ALGO", "QUANTIZE_ALGOS", "activation_amax", "collect_statistics", "histogram_mse"]

QUANTIZE_ALGOS = (*ALGORITHMS, "auto")
# auto: the candidates compared per tensor
AUTO_CANDIDATES = ("percentile", "mse", "entropy", "minmax")


def activation_amax(
    histograms: Mapping[str, Any],
    tensors: Iterable[str],
    algo: str,
    *,
    percentile: float = DEFAULT_PERCENTILE,
    graph_inputs: Iterable[str] = (),
) -> tuple[dict[str, float], dict[str, str]]:
    """amax per tensor and the algorithm that produced it.

    Graph inputs (the image) always use their exact max: the image range is known ([0, 1]) and clipping
    bright pixels only loses information. ``algo="auto"`` picks, per tensor, the candidate range with the
    smallest expected squared quantization error on that tensor's histogram, among the four algorithms.
    """
    from calibrators.calibrate import amax_table

    inputs = set(graph_inputs)
    names = list(tensors)
    missing = [t for t in names if histograms.get(t) is None]
    if missing:
        raise TrtqError(f"no calibration statistics for tensor {missing[0]!r}; recalibrate")
    if algo != "auto":
        amax = amax_table({t: histograms[t] for t in names}, algo, percentile=percentile, graph_inputs=inputs)
        return amax, {t: "minmax" if t in inputs or algo == "minmax" else algo for t in names}
    amax: dict[str, float] = {}
    chosen: dict[str, str] = {}
    for t in names:
        h = histograms[t]
        a, how = (float(h.max_abs), "minmax") if t in inputs else _auto_amax(h, percentile)
        if not np.isfinite(a) or a <= 0:
            a = float(h.max_abs) if h.max_abs > 0 else 1.0
        amax[t] = a
        chosen[t] = how
    return amax, chosen


def histogram_mse(counts: np.ndarray, edges: np.ndarray, amax: float) -> float:
    """Expected squared error of symmetric INT8 quantization with ``amax`` over a |x| histogram."""
    c = (edges[:-1] + edges[1:]) / 2
    scale = amax / QMAX
    q = np.minimum(np.rint(c / scale), QMAX) * scale
    total = float(np.sum(counts))
    return float(np.sum(counts * (c - q) ** 2) / max(total, 1.0))


def _auto_amax(h: Any, percentile: float) -> tuple[float, str]:
    from calibrators.ranges import compute_amax

    best: tuple[float, float, str] | None = None
    for algo in AUTO_CANDIDATES:
        a = float(h.max_abs) if algo == "minmax" else float(compute_amax(h.counts, h.edges, algo, percentile=percentile))
        if a <= 0:
            continue
        err = histogram_mse(h.counts, h.edges, a)
        if best is None or err < best[0]:
            best = (err, a, algo)
    if best is None:
        return 1.0, "fallback"
    return best[1], best[2]


def collect_statistics(
    model_path: Path,
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    tensors: Sequence[str],
    *,
    num_images: int | None = None,
    batch: int = 1,
    seed: int = 0,
    progress: bool = True,
    fused_silu: bool = True,
) -> tuple[dict[str, Any], Any]:
    """Histograms of ``tensors`` over the calibration images, and the batcher that produced them."""
    from calibrators.collect import collect_histograms

    batcher = calibration_batcher(model_path, source, num_images=num_images, batch=batch, seed=seed)
    hists = collect_histograms(
        model_path, batcher, list(tensors), progress=progress, total=len(batcher.selected), fused_silu=fused_silu
    )
    return hists, batcher


def calibration_batcher(
    model_path: Path,
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    num_images: int | None = None,
    batch: int = 1,
    seed: int = 0,
) -> Any:
    """The calibration images of ``source`` as batches for ``model_path`` (re-iterable, the same each time)."""
    from trtq.images import ImageBatcher
    from trtq.modelinfo import check_model, read_model_info

    info = read_model_info(model_path)
    check_model(info)
    # padded as ultralytics' predictor pads this model: a dynamic-size Q/DQ ONNX keeps its dynamic input
    return ImageBatcher.from_model(source, info, batch=batch, num_images=num_images, seed=seed, predictor_padding=True)


def calibration_record(source: Any, batcher: Any, seed: int) -> dict[str, Any]:
    """What a set of ranges was calibrated from, as quantization reports record it."""
    return {
        "source": str(source),
        "num_images": batcher.num_used,
        "images_sha256": batcher.images_sha256(),
        "preprocessing": batcher.preprocessing(),
        "seed": seed,
    }


def channel_maxima(
    model_path: Path,
    batches: Iterable[dict[str, np.ndarray]],
    tensors: Sequence[str],
) -> dict[str, np.ndarray]:
    """The largest value of every channel (axis 1) of ``tensors`` over ``batches``: one pass of the float
    model extended with a per-channel ``ReduceMax`` (over batch and spatial axes) of each tensor.

    What the CPU layout needs to bound the u8 codes a conv's input channel can carry (``s8-data`` weights)."""
    import onnx
    from onnx import TensorProto, helper

    from calibrators.collect import make_session
    from trtq import onnxgraph
    from trtq.precision import as_float32

    model = as_float32(onnx.load(str(model_path)))
    opset = onnxgraph.default_opset(model)
    g = model.graph
    names = list(dict.fromkeys(tensors))
    outputs: list[str] = []
    for i, t in enumerate(names):
        out = f"trtq_chmax_{i}"
        axes = [0, 2, 3]  # NCHW: every axis but the channels'
        if opset >= 18:  # axes became an input
            g.initializer.append(helper.make_tensor(f"{out}_axes", TensorProto.INT64, [len(axes)], axes))
            g.node.append(helper.make_node("ReduceMax", [t, f"{out}_axes"], [out], name=out, keepdims=0))
        else:
            g.node.append(helper.make_node("ReduceMax", [t], [out], name=out, keepdims=0, axes=axes))
        g.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
        outputs.append(out)
    session = make_session(model.SerializeToString(), ["CPUExecutionProvider"])
    result: dict[str, np.ndarray] = {}
    for feed in batches:
        for t, v in zip(names, session.run(outputs, feed), strict=True):
            v = np.where(np.isfinite(v), v, -np.inf).astype(np.float32)
            result[t] = v if t not in result else np.maximum(result[t], v)
    if not result:
        raise TrtqError("calibration received no batches")
    return result
