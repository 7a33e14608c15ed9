"""TensorRT engine building, running and inspection.

- ``trtq.trt.compat``: the one module that handles TensorRT version differences (8.5 / 10.x / 11.x).
- ``trtq.trt.session``: a deserialized engine with its execution context, stream and buffers.
- ``trtq.trt.options``: ``BuildOptions`` (what a build is asked for, validated in one place) and the batch profile.
- ``trtq.trt.int8``: the INT8 inputs of a build (mode, calibration cache, Q/DQ ONNX, the finish-on-target message).
- ``trtq.trt.network``: the TensorRT network, builder config, calibrator and engine record.
- ``trtq.trt.builder``: ``build`` (and ``build_engine`` taking the options as keywords), the library function
  behind ``trtq build``.
- ``trtq.trt.inspect``: what an engine, a calibration cache or an ONNX is (``trtq inspect``).

TensorRT is imported lazily, on first use, so these modules import on machines without it.
"""
