"""``trtq calibrate``: compute INT8 ranges on the CPU and write a TensorRT calibration cache + sidecar."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calibrators.collect import (
    DEFAULT_MAX_POSITIONS,
    TensorHistogram,
    calibration_tensors,
    collect_histograms,
)
from calibrators.ranges import (
    DEFAULT_ALGO,
    DEFAULT_PERCENTILE,
    check_algorithm,
    check_percentile,
    compute_amax,
)
from calibrators.table import DEFAULT_TRT_VERSION, CalibrationTable, table_sidecar_path, trt_version_code
from trtq.errors import TrtqError
from trtq.fileio import default_output
from trtq.images import ImageBatcher
from trtq.modelinfo import check_model, read_model_info

logger = logging.getLogger(__name__)


@dataclass
class CalibrationResult:
    table: CalibrationTable
    cache_path: Path | None
    histograms: dict[str, TensorHistogram]
    seconds: float
    batcher: ImageBatcher

    @property
    def table_sidecar_path(self) -> Path | None:
        return table_sidecar_path(self.cache_path) if self.cache_path is not None else None

    def summary(self) -> str:
        skipped = len(self.batcher.skipped)
        where = f" -> {self.cache_path} (+ .json)" if self.cache_path else ""
        return (
            f"calibrated {len(self.table.amax)} tensors on {self.table.num_images} images"
            f"{f' ({skipped} unreadable skipped)' if skipped else ''} in {self.seconds:.1f} s "
            f"[{self.table.algorithm}, TensorRT {self.table.tensorrt_version} header]{where}"
        )


def amax_table(
    histograms: Mapping[str, TensorHistogram],
    algo: str,
    *,
    percentile: float = DEFAULT_PERCENTILE,
    graph_inputs: Iterable[str] = (),
) -> dict[str, float]:
    """Apply a range algorithm to every histogram: the one place where ranges are chosen.

    minmax uses the exact running max, not the bins. Graph inputs (the image) always keep their exact
    max: the image range is known ([0, 1]) and clipping bright pixels only loses information. A range
    fixed by the graph (``known_amax``) is used as it is. Bin-based ranges never exceed the data's max.
    """
    check_algorithm(algo)
    inputs = set(graph_inputs)
    out: dict[str, float] = {}
    done: dict[bytes, float] = {}  # derived tensors share their source's histogram: compute each once
    for name, h in histograms.items():
        if h.known_amax is not None:
            out[name] = h.known_amax
            continue
        if name in inputs and h.max_abs > 0:
            out[name] = float(h.max_abs)
            continue
        key = h.counts.tobytes() + h.edges[-1:].tobytes() + np.float64(h.max_abs).tobytes()
        if key in done:
            out[name] = done[key]
            continue
        amax = compute_amax(h.counts, h.edges, algo, percentile=percentile, max_abs=h.max_abs)
        if h.max_abs > 0:
            amax = min(amax, h.max_abs)  # bin-based ranges are bin edges: never wider than the data
        out[name] = done[key] = float(amax)
    return out


def calibrate(
    model: str | Path,
    source: str | Path,
    *,
    algo: str = DEFAULT_ALGO,
    percentile: float = DEFAULT_PERCENTILE,
    num_images: int | None = None,
    batch: int = 1,
    seed: int = 0,
    trt_version: str = DEFAULT_TRT_VERSION,
    output: str | Path | None = None,
    write: bool = True,
    tensor_names: Sequence[str] | None = None,
    max_positions: int | None = DEFAULT_MAX_POSITIONS,
    progress: bool = True,
    providers: Sequence[str] | None = None,
) -> CalibrationResult:
    """Calibrate an FP32 ONNX on images from ``source`` and (unless ``write=False``) write the cache.

    The cache goes to ``output`` (default ``<model>.<algo>.cache`` next to the model) with a JSON
    sidecar ``<cache>.json`` recording what it was made from. Both are written atomically.
    """
    # validate early: a typo should not cost a calibration run
    check_algorithm(algo)
    if algo == "percentile":
        check_percentile(percentile)
    trt_version_code(trt_version)
    model = Path(model)
    if model.suffix.lower() != ".onnx":
        raise TrtqError(f"{model}: calibrate takes an ONNX model (run `trtq export {model}` first)")
    info = read_model_info(model)
    check_model(info)
    import onnx

    graph = onnx.load(str(model), load_external_data=False)
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.graph.node):
        raise TrtqError(f"{model} already contains Q/DQ nodes; calibrate the FP32 ONNX it was made from")
    names = list(tensor_names) if tensor_names is not None else calibration_tensors(graph)
    del graph
    batcher = ImageBatcher.from_model(source, info, batch=batch, num_images=num_images, seed=seed)
    t0 = time.perf_counter()
    histograms = collect_histograms(
        model,
        batcher,
        names,
        max_positions=max_positions,
        progress=progress,
        providers=providers,
        total=len(batcher.selected),
    )
    table = table_from_histograms(histograms, batcher, info, source=source, algo=algo, percentile=percentile,
                                  trt_version=trt_version, max_positions=max_positions)
    seconds = time.perf_counter() - t0
    cache_path: Path | None = None
    if write:
        cache_path = Path(output) if output is not None else default_output(model, f".{algo}.cache")
        table.save(cache_path)
    result = CalibrationResult(table, cache_path, histograms, seconds, batcher)
    logger.debug(result.summary())
    return result


def table_from_histograms(
    histograms: Mapping[str, Any],
    batcher: Any,
    info: Any,
    *,
    source: Any,
    algo: str,
    percentile: float,
    trt_version: str,
    max_positions: int | None,
) -> CalibrationTable:
    """The calibration table of ``histograms`` collected from ``batcher``'s images for the model ``info``
    describes: ranges by ``algo``, and what they were made from (model and image hashes, preprocessing)."""
    if batcher.num_used == 0:
        raise TrtqError(
            f"no usable calibration images in {source} ({len(batcher.skipped)} unreadable); pass --calib DIR with readable images"
        )
    return CalibrationTable(
        amax=amax_table(histograms, algo, percentile=percentile, graph_inputs=[i.name for i in info.inputs]),
        algorithm=algo,
        percentile=percentile if algo == "percentile" else None,
        model_sha256=info.sha256,
        num_images=batcher.num_used,
        images_sha256=batcher.images_sha256(),
        preprocessing=batcher.preprocessing(),
        tensorrt_version=trt_version,
        statistics={
            "max_positions": max_positions,
            "sampled_positions": {n: h.positions for n, h in histograms.items() if h.positions and not h.derived},
            "derived": {n: h.derived for n, h in histograms.items() if h.derived},
        },
    )
