"""Calibration: streaming activation statistics, range algorithms, TensorRT calibration caches and
TensorRT calibrator classes.

Stages, one module each:
- ``calibrators.collect``: stream batches through ONNX Runtime and accumulate per-tensor |x| histograms.
- ``calibrators.ranges``: pure range algorithms on ``(counts, edges)``: entropy, minmax, percentile, mse.
- ``calibrators.table``: the hand-off type (tensor name -> amax, plus what it was made from), the TensorRT
  calibration cache format and its JSON sidecar.
- ``calibrators.calibrate``: the library function behind ``trtq calibrate``.
- ``calibrators.trt``: TensorRT calibrator classes (TensorRT and pycuda are imported lazily).
"""
