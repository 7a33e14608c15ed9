"""Benchmarking: TensorRT engines timed with CUDA events and ONNX models on ONNX Runtime, side by side.

``bench(models, ...)`` runs the comparison and writes the reports; see :mod:`trtq.bench.harness`.
"""

from __future__ import annotations

from trtq.bench.harness import BenchResult, BenchRow, BenchTarget, Sample, bench, run_benchmark, write_outputs
from trtq.bench.stats import Summary, summarize

__all__ = [
    "BenchResult",
    "BenchRow",
    "BenchTarget",
    "Sample",
    "Summary",
    "bench",
    "run_benchmark",
    "summarize",
    "write_outputs",
]
