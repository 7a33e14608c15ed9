"""YOLOv8 detection post-processing in numpy: decode, confidence filter, class-aware NMS, box mapping.

It reproduces ``ultralytics.utils.nms.non_max_suppression`` (single label per box, ``agnostic=False``)
and ``ultralytics.utils.ops.scale_boxes`` so that trtq's runtime returns the same detections as
``YOLO(model).predict`` without torch:

- the raw head output is ``(N, 4 + nc, A)``: ``cx, cy, w, h`` in input pixels, then one score per class;
- a candidate needs its best class score strictly above ``conf``;
- NMS is greedy, per class (boxes are offset by ``class_id * 7680`` pixels, in float32, as ultralytics
  does), and drops a box whose IoU with a kept one is strictly above ``iou`` (torchvision semantics);
- at most ``max_nms`` candidates (highest scores) enter NMS and ``max_det`` leave it, best first.

Only numpy is imported here.
"""

from __future__ import annotations

import numpy as np

MAX_WH = 7680  # per-class coordinate offset for class-aware NMS (ultralytics' max_wh)
MAX_NMS = 30000  # most candidates given to NMS


def xywh2xyxy(xywh: np.ndarray) -> np.ndarray:
    """``(n, 4)`` centre/size boxes to corner boxes, same dtype (computed as ultralytics does)."""
    out = np.empty_like(xywh)
    xy = xywh[..., :2]
    half = xywh[..., 2:4] / 2
    out[..., :2] = xy - half
    out[..., 2:4] = xy + half
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS: indices of kept boxes, highest score first (``torchvision.ops.nms`` semantics).

    ``boxes`` is ``(n, 4)`` xyxy; a box is dropped when its IoU with an already kept box is > ``iou_threshold``.
    Arithmetic stays in the boxes' dtype (float32 for model outputs), as torchvision's kernel does.
    """
    n = int(boxes.shape[0])
    if n == 0:
        return np.zeros((0,), dtype=np.int64)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    zero = boxes.dtype.type(0)
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        if not rest.size:
            break
        w = np.maximum(zero, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(zero, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[~(iou > iou_threshold)]  # NaN IoU (degenerate boxes) keeps the box, as torchvision
    return np.asarray(keep, dtype=np.int64)


def decode(
    prediction: np.ndarray,
    *,
    conf: float = 0.25,
    iou: float = 0.7,
    max_det: int = 300,
    max_nms: int = MAX_NMS,
    agnostic: bool = False,
) -> list[np.ndarray]:
    """Decode raw YOLOv8 outputs ``(N, 4 + nc, A)`` into per-image ``(k, 6)`` arrays.

    Each row is ``x1, y1, x2, y2, score, class_id`` in the model input's pixel coordinates (letterboxed
    image), sorted by descending score after NMS. The dtype follows the prediction (float32 for FP32 and
    FP16 engines, which are upcast).
    """
    if prediction.ndim != 3 or prediction.shape[1] < 5:
        raise ValueError(f"expected a (N, 4 + classes, anchors) YOLOv8 output, got shape {prediction.shape}")
    pred = (
        prediction
        if prediction.dtype.kind == "f" and prediction.dtype.itemsize >= 4
        else prediction.astype(np.float32)
    )
    nc = pred.shape[1] - 4
    out: list[np.ndarray] = []
    for p in pred:  # (4 + nc, A)
        cls_scores = p[4 : 4 + nc]
        best = cls_scores.max(axis=0)
        keep = best > conf
        if not np.any(keep):
            out.append(np.zeros((0, 6), dtype=pred.dtype))
            continue
        x = p[:, keep].T  # (k, 4 + nc)
        box = xywh2xyxy(x[:, :4])
        cls_id = x[:, 4:].argmax(axis=1)
        score = best[keep]
        det = np.concatenate([box, score[:, None], cls_id[:, None].astype(pred.dtype)], axis=1)
        if det.shape[0] > max_nms:
            det = det[np.argsort(-det[:, 4], kind="stable")[:max_nms]]
        offset = det[:, 5:6] * pred.dtype.type(0 if agnostic else MAX_WH)
        kept = nms(det[:, :4] + offset, det[:, 4], iou)[:max_det]
        out.append(det[kept])
    return out


def scale_boxes(boxes: np.ndarray, from_shape: tuple[int, int], to_shape: tuple[int, int]) -> np.ndarray:
    """Map xyxy boxes from a letterboxed ``from_shape`` (h, w) image back to the original ``to_shape`` (h, w).

    Same arithmetic as ``ultralytics.utils.ops.scale_boxes`` with ``ratio_pad=None``: the gain and the
    padding are recomputed from the two shapes (centred letterbox), then boxes are clipped to the image.
    Works in place on ``boxes`` and returns it.
    """
    h1, w1 = from_shape
    h0, w0 = to_shape
    gain = min(h1 / h0, w1 / w0)
    new_h, new_w = max(round(h0 * gain), 1), max(round(w0 * gain), 1)
    gain_y, gain_x = new_h / h0, new_w / w0
    pad_x, pad_y = round((w1 - new_w) / 2 - 0.1), round((h1 - new_h) / 2 - 0.1)
    boxes[..., [0, 2]] -= pad_x
    boxes[..., [1, 3]] -= pad_y
    boxes[..., [0, 2]] /= gain_x
    boxes[..., [1, 3]] /= gain_y
    return clip_boxes(boxes, to_shape)


def clip_boxes(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Clip xyxy boxes in place to an image of ``shape`` (h, w)."""
    h, w = shape
    boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, w)
    boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, h)
    return boxes
