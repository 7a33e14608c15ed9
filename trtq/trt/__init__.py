"""TensorRT engine building and inspection.

- ``trtq.trt.compat``: the one module that handles TensorRT version differences (8.5 / 10.x / 11.x).
- ``trtq.trt.builder``: ``build_engine``, the library function behind ``trtq build``.
- ``trtq.trt.inspect``: what an engine, a calibration cache or an ONNX is (``trtq inspect``).

TensorRT is imported lazily, on first use, so these modules import on machines without it.
"""
