"""``trtq deploy``: folders that DeepStream (nvinfer + DeepStream-Yolo's parser) or Triton Inference Server run as
they are.

- :mod:`trtq.deploy.nvinfer`: what Gst-nvinfer does to a frame before and after the network (scaling, padding,
  normalisation, DeepStream-Yolo's bbox parser, DeepStream's NMS clustering), ported to numpy with the sources cited.
- :mod:`trtq.deploy.layout`: the ONNX in DeepStream-Yolo's output layout (``[B, N, 6]``), by graph surgery.
- :mod:`trtq.deploy.bundle`: the shared steps (model intake, nvinfer-style calibration, staged folder writes).
- :mod:`trtq.deploy.deepstream` and :mod:`trtq.deploy.triton`: the two folder writers.
"""
