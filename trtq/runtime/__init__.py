"""Light runtime for applications: YOLO results from a TensorRT engine or an ONNX model, for every task.

``Detector`` gives the same API for a TensorRT engine (``.engine``/``.plan`` with its ``.json`` sidecar or an
ultralytics header) and for an FP32 or Q/DQ INT8 ONNX on ONNX Runtime, so an application developed on a
laptop runs unchanged on a Jetson::

    from trtq.runtime import Detector

    with Detector("yolov8n.int8.engine", conf=0.25) as det:
        for d in det.detect(frame):           # frame: BGR uint8 HxWx3 (OpenCV)
            for (x1, y1, x2, y2), score, name in zip(d.boxes, d.scores, d.names):
                ...

Every task ultralytics exports is decoded, in both head forms (grid outputs with NMS, YOLO26's end-to-end
outputs without): ``d.masks`` (segment, at image resolution), ``d.keypoints`` (pose: x, y, visibility),
``d.xywhr`` and ``d.corners`` (OBB, with ultralytics' rotated NMS). What the outputs mean comes from the
model's metadata (:func:`trtq.tasks.task_layout`).

Layout: :mod:`.sessions` (ONNX Runtime) and :mod:`trtq.trt.session` (TensorRT) run models, :mod:`.decode` maps
decoded rows onto images, :mod:`.detector` holds :class:`Detector`, :mod:`.predict` the ``trtq predict``
file I/O. Video: :mod:`.sources` (files, cameras, URLs, GStreamer through OpenCV), :mod:`.stream` (the
threaded pipeline behind ``Detector.stream``), :mod:`.overlap` (TensorRT copies on their own stream),
:mod:`.video` (atomic video writing) and :mod:`.video_predict` (``trtq predict --source VIDEO``).

Importing this package needs numpy only. OpenCV is imported when a ``Detector`` is made (letterbox),
ONNX Runtime when an ONNX model is loaded, TensorRT and the CUDA bindings (pycuda or cuda-python) when an
engine is loaded. torch, ultralytics and click are never imported.

Thread safety: a ``Detector`` owns one set of pre-allocated buffers (and, for engines, one execution
context and CUDA stream), so calls on one instance are serialized by an internal lock: sharing one
instance between threads is safe but runs one batch at a time. For parallel inference make one
``Detector`` per thread. With pycuda, a CUDA context belongs to the thread that made it: create, use
and close an engine ``Detector`` in the same thread.
"""

from __future__ import annotations

from trtq.modelinfo import ENGINE_SUFFIXES, ONNX_SUFFIXES, model_kind
from trtq.runtime.decode import Detections
from trtq.runtime.detector import Detector
from trtq.runtime.predict import Prediction, predict
from trtq.runtime.sessions import OnnxSession, Session, open_session
from trtq.trt.session import EngineTensor, TensorRTSession

__all__ = [
    "ENGINE_SUFFIXES",
    "ONNX_SUFFIXES",
    "Detections",
    "Detector",
    "EngineTensor",
    "OnnxSession",
    "Prediction",
    "Session",
    "TensorRTSession",
    "model_kind",
    "open_session",
    "predict",
]
