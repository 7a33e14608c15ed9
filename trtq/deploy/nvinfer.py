"""What DeepStream's Gst-nvinfer does around the network, ported to numpy from its sources.

Sources (DeepStream 6.2 SDK sources as published in github.com/hiennguyen9874/deepstream-sources, commit
f9948312d37804f03a7b48864a293316e11d5956; the same files ship in ``/opt/nvidia/deepstream/deepstream/sources``):

- ``sources/gst-plugins/gst-nvinfer/gstnvinfer.cpp``, ``get_converted_buffer`` (around line 1115): with
  ``maintain-aspect-ratio=1`` the frame (width and height rounded *down* to even, ``GST_ROUND_DOWN_2``) is scaled
  to ``net_w x int(net_w * h / w)`` when that fits, else ``int(net_h * w / h) x net_h`` (a ``double`` stored in a
  ``guint``: truncation); with ``symmetric-padding=1`` it is placed at ``offset = (net - dest) / 2`` (integer
  division) and the border is set to 0 with ``cudaMemset2DAsync`` ("Pad the scaled image with black color"), not
  ultralytics' 114.
- The same file, line 414: the scaler's default filter is ``NvBufSurfTransformInter_Default``, which
  ``sources/includes/nvbufsurftransform.h`` (line 88) documents as "GPU-Nearest, VIC-Nearest". The config key
  ``scaling-filter`` (``gstnvinfer_property_parser.cpp`` line 455) selects ``NvBufSurfTransformInter_Bilinear``
  (1) instead, which is what trtq writes, so frames are scaled bilinearly like ultralytics' ``cv2.INTER_LINEAR``.
  NVIDIA's GPU bilinear kernel is closed source: it is modelled here by OpenCV's ``INTER_LINEAR`` (half-pixel
  centres, as NPP's linear resize), which could not be checked against a GPU.
- Gst-nvinfer documentation ("The pre-processing function is: y = net scale factor*(x-mean)"), with
  ``offsets`` unset (mean 0) and ``model-color-format=0`` (RGB): ``y = float32(net-scale-factor) * x``.
- ``sources/gst-plugins/gst-nvinfer/gstnvinfer_meta_utils.cpp`` lines 60-63: boxes go back to the frame as
  ``(left - offset_left) / scale_ratio_x``, ``width / scale_ratio_x`` (likewise for y), with
  ``scale_ratio = dest / src`` from ``get_converted_buffer``.
- ``sources/libs/nvdsinfer/nvdsinfer_context_impl_output_parsing.cpp``: ``preClusteringThreshold`` (line 155),
  ``nonMaximumSuppression`` and ``clusterAndFillDetectionOutputNMS`` (lines 190-300, ``cluster-mode=2``: per
  class, stable sort by confidence, greedy NMS keeping a box while IoU <= ``nms-iou-threshold``, then
  ``post-cluster-threshold`` and per-class ``topk``), ``fillUnclusteredOutput`` (``cluster-mode=4``: per-class
  ``topk`` only).

The bbox parser is DeepStream-Yolo's ``NvDsInferParseYolo`` (github.com/marcoslucianops/DeepStream-Yolo, commit
2ccf52987ce1a18fc18ca5b3ba559a599259ade2, ``nvdsinfer_custom_impl_Yolo/nvdsparsebbox_Yolo.cpp`` lines 34-95 and
``utils.cpp`` ``clamp``).

Frames reach nvinfer from ``nvstreammux``, which first scales every source to its own ``width x height``; the
functions here start from the frame nvinfer receives.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from trtq.images import ImageBatcher, ImageReadError, load_image

NET_SCALE_FACTOR = 0.0039215697906911373  # DeepStream-Yolo's config_infer_primary_yoloV8.txt: float32(1/255)
SCALING_FILTER_NEAREST = 0  # NvBufSurfTransformInter_Nearest
SCALING_FILTER_BILINEAR = 1  # NvBufSurfTransformInter_Bilinear
SCALING_FILTER_DEFAULT = 6  # NvBufSurfTransformInter_Default: GPU-Nearest, VIC-Nearest
PAD_VALUE = 0  # cudaMemset2DAsync(..., 0, ...): black
_CV_FILTERS = {SCALING_FILTER_NEAREST: cv2.INTER_NEAREST, SCALING_FILTER_BILINEAR: cv2.INTER_LINEAR,
               SCALING_FILTER_DEFAULT: cv2.INTER_NEAREST}


@dataclass(frozen=True)
class Converted:
    """A frame as nvinfer hands it to the network, and the geometry to map boxes back."""

    image: np.ndarray  # HxWx3 uint8, same channel order as the input frame
    ratio_x: float
    ratio_y: float
    offset_left: int
    offset_top: int


def convert_frame(frame: np.ndarray, net_hw: tuple[int, int], *, scaling_filter: int = SCALING_FILTER_BILINEAR,
                  symmetric_padding: bool = True) -> Converted:
    """``get_converted_buffer`` with ``maintain-aspect-ratio=1`` for a full frame (``process-mode=1``)."""
    net_h, net_w = net_hw
    src_w = frame.shape[1] // 2 * 2  # GST_ROUND_DOWN_2
    src_h = frame.shape[0] // 2 * 2
    hdest = net_w * src_h / float(src_w)
    wdest = net_h * src_w / float(src_h)
    if hdest <= net_h:
        dest_w, dest_h = net_w, int(hdest)
    else:
        dest_w, dest_h = int(wdest), net_h
    dest_w, dest_h = max(dest_w, 1), max(dest_h, 1)
    left = (net_w - dest_w) // 2 if symmetric_padding else 0
    top = (net_h - dest_h) // 2 if symmetric_padding else 0
    src = frame[:src_h, :src_w]
    scaled = src if (dest_w, dest_h) == (src_w, src_h) else cv2.resize(
        src, (dest_w, dest_h), interpolation=_CV_FILTERS[scaling_filter])
    out = np.full((net_h, net_w, 3), PAD_VALUE, dtype=np.uint8)
    out[top : top + dest_h, left : left + dest_w] = scaled
    return Converted(out, dest_w / src_w, dest_h / src_h, left, top)


def to_network_input(images_rgb: Sequence[np.ndarray], scale: float = NET_SCALE_FACTOR) -> np.ndarray:
    """``y = net-scale-factor * (x - 0)`` in float32, HWC RGB uint8 -> NCHW float32."""
    batch = np.stack([im.transpose(2, 0, 1) for im in images_rgb]).astype(np.float32)
    batch *= np.float32(scale)
    return np.ascontiguousarray(batch)


def preprocess_frames(frames_bgr: Sequence[np.ndarray], net_hw: tuple[int, int], *,
                      scaling_filter: int = SCALING_FILTER_BILINEAR) -> tuple[np.ndarray, list[Converted]]:
    """BGR frames (OpenCV) -> the network input nvinfer makes with ``model-color-format=0`` (RGB)."""
    conv = [convert_frame(f, net_hw, scaling_filter=scaling_filter) for f in frames_bgr]
    return to_network_input([c.image[..., ::-1] for c in conv]), conv


# ---------------------------------------------------------------------------------------------------------------
# DeepStream-Yolo's NvDsInferParseYolo and DeepStream's clustering
# ---------------------------------------------------------------------------------------------------------------
def parse_yolo(output: np.ndarray, net_w: int, net_h: int, pre_cluster_threshold: Sequence[float] | float,
               num_classes: int) -> np.ndarray:
    """``decodeTensorYolo`` + ``convertBBox`` + ``addBBoxProposal``, then nvinfer's ``preClusteringThreshold``.

    ``output`` is one image's ``[N, 6]``. Returns rows ``left, top, width, height, confidence, class`` (float32,
    network pixels) in the parser's order.
    """
    out = np.asarray(output, dtype=np.float32).reshape(-1, 6)
    thr = np.broadcast_to(np.asarray(pre_cluster_threshold, dtype=np.float32), (num_classes,))
    prob = out[:, 4]
    cls = out[:, 5].astype(np.int64)  # (int) output[b * 6 + 5]: truncation toward zero
    valid = (cls >= 0) & (cls < num_classes)  # preClusteringThreshold drops classId >= numClassesConfigured
    keep = valid & ~(prob < thr[np.clip(cls, 0, num_classes - 1)])
    x1 = np.clip(out[:, 0], 0, net_w)
    y1 = np.clip(out[:, 1], 0, net_h)
    x2 = np.clip(out[:, 2], 0, net_w)
    y2 = np.clip(out[:, 3], 0, net_h)
    w = np.clip(x2 - x1, 0, net_w)
    h = np.clip(y2 - y1, 0, net_h)
    keep &= ~((w < 1) | (h < 1))
    rows = np.stack([x1, y1, w, h, prob, cls.astype(np.float32)], axis=1)[keep]
    return rows.astype(np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """``computeIoU`` with ``overlap1D`` exactly as written (float32 arithmetic)."""

    def overlap(x1min: np.float32, x1max: np.float32, x2min: np.float32, x2max: np.float32) -> np.float32:
        if x1min > x2min:
            x1min, x2min = x2min, x1min
            x1max, x2max = x2max, x1max
        return np.float32(0) if x1max < x2min else np.float32(min(x1max, x2max) - x2min)

    ox = overlap(a[0], a[0] + a[2], b[0], b[0] + b[2])
    oy = overlap(a[1], a[1] + a[3], b[1], b[1] + b[3])
    inter = np.float32(ox * oy)
    union = np.float32(a[2] * a[3] + b[2] * b[3] - inter)
    return 0.0 if union == 0 else float(inter / union)


def cluster_nms(objects: np.ndarray, num_classes: int, nms_iou: float, topk: int,
                post_cluster_threshold: float = 0.0) -> np.ndarray:
    """``clusterAndFillDetectionOutputNMS`` (``cluster-mode=2``): classes in order, per class greedy NMS."""
    kept: list[np.ndarray] = []
    for c in range(num_classes):
        objs = objects[objects[:, 5] == c]
        if not len(objs):
            continue
        order = np.argsort(-objs[:, 4], kind="stable")
        indices: list[int] = []
        for idx in order:
            if all(_iou(objs[idx], objs[k]) <= nms_iou for k in indices):
                indices.append(int(idx))
        post = objs[[i for i in indices if objs[i, 4] > post_cluster_threshold]]
        kept.append(_topk(post, topk))
    return np.concatenate(kept) if kept else np.zeros((0, 6), np.float32)


def cluster_none(objects: np.ndarray, num_classes: int, topk: int) -> np.ndarray:
    """``fillUnclusteredOutput`` (``cluster-mode=4``): per class, the ``topk`` most confident."""
    kept = [_topk(objects[objects[:, 5] == c], topk) for c in range(num_classes)]
    kept = [k for k in kept if len(k)]
    return np.concatenate(kept) if kept else np.zeros((0, 6), np.float32)


def _topk(objs: np.ndarray, topk: int) -> np.ndarray:
    """``filterTopKOutputs``: stable sort by confidence, keep ``topk`` (all when negative)."""
    if topk < 0:
        return objs
    return objs[np.argsort(-objs[:, 4], kind="stable")][:topk]


def to_frame(objects: np.ndarray, conv: Converted) -> np.ndarray:
    """Network-pixel ``left, top, width, height`` -> frame-pixel ``x1, y1, x2, y2, conf, class``."""
    out = objects.astype(np.float64).copy()
    left = (out[:, 0] - conv.offset_left) / conv.ratio_x
    top = (out[:, 1] - conv.offset_top) / conv.ratio_y
    out[:, 0], out[:, 1] = left, top
    out[:, 2] = left + out[:, 2] / conv.ratio_x
    out[:, 3] = top + out[:, 3] / conv.ratio_y
    return out


def detections(output: np.ndarray, conv: Converted, net_hw: tuple[int, int], *, num_classes: int,
               pre_cluster_threshold: float, nms_iou: float, topk: int, cluster_mode: int) -> np.ndarray:
    """Parser + clustering + mapping back: what nvinfer attaches as object metadata for one frame."""
    objs = parse_yolo(output, net_hw[1], net_hw[0], pre_cluster_threshold, num_classes)
    if cluster_mode == 2:
        objs = cluster_nms(objs, num_classes, nms_iou, topk)
    elif cluster_mode == 4:
        objs = cluster_none(objs, num_classes, topk)
    else:
        raise ValueError(f"cluster-mode {cluster_mode} is not modelled (2 = NMS, 4 = none)")
    return to_frame(objs, conv)


# ---------------------------------------------------------------------------------------------------------------
# calibration images, preprocessed as nvinfer will preprocess frames
# ---------------------------------------------------------------------------------------------------------------
class NvinferBatcher(ImageBatcher):
    """:class:`trtq.images.ImageBatcher` with nvinfer's preprocessing instead of ultralytics' letterbox."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str], *,
                 scaling_filter: int = SCALING_FILTER_BILINEAR, **kwargs: Any) -> None:
        super().__init__(paths, **kwargs)
        self.scaling_filter = int(scaling_filter)

    def _nvinfer_images(self) -> Iterator[np.ndarray]:
        for path in self.selected:
            try:
                img = load_image(path)
            except ImageReadError as exc:
                self.skipped.append((Path(path), str(exc)))
                continue
            yield convert_frame(img, self.imgsz, scaling_filter=self.scaling_filter).image[..., ::-1]

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.skipped = []
        self.num_used = 0
        pending: list[np.ndarray] = []
        for img in self._nvinfer_images():
            pending.append(img)
            if len(pending) == self.batch:
                self.num_used += len(pending)
                yield {self.input_name: to_network_input(pending)}
                pending = []
        if pending and not self.drop_last:
            self.num_used += len(pending)
            yield {self.input_name: to_network_input(pending)}

    def preprocessing(self) -> dict[str, Any]:
        return {
            "imgsz": [self.imgsz[0], self.imgsz[1]],
            "preprocessor": "nvinfer",
            "maintain_aspect_ratio": 1,
            "symmetric_padding": 1,
            "pad_value": PAD_VALUE,
            "scaling_filter": self.scaling_filter,
            "interpolation": "INTER_LINEAR" if self.scaling_filter == SCALING_FILTER_BILINEAR else "INTER_NEAREST",
            "color": "RGB",
            "scale": NET_SCALE_FACTOR,
            "layout": "NCHW",
            "batch": self.batch,
        }
