"""trtq: accurate TensorRT INT8/FP16 engines for Ultralytics YOLOv8 detectors.

Importing this package is light: no torch, no ultralytics, no click, no tensorrt, no pycuda.
Heavy and GPU-only dependencies are imported on first use inside the functions that need them.
"""

__version__ = "0.1.0"
