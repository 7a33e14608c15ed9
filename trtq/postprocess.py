"""YOLO post-processing in numpy for every task: decode, confidence filter, NMS, mapping to the image.

It reproduces ``ultralytics.utils.nms.non_max_suppression`` (single label per box, ``agnostic=False``)
and ``ultralytics.utils.ops`` (``scale_boxes``, ``scale_coords``, ``process_mask``, ``scale_masks``) so
that trtq's runtime returns the same detections as ``YOLO(model).predict`` without torch:

- a grid head output is ``(N, 4 + nc + extra, A)``: ``cx, cy, w, h`` in input pixels, one score per
  class, then the task's extra values (mask coefficients, keypoints or the OBB angle);
- a candidate needs its best class score strictly above ``conf``;
- NMS is greedy, per class (boxes are offset by ``class_id * 7680`` pixels, in float32, as ultralytics
  does), and drops a box whose IoU with a kept one is strictly above ``iou`` (torchvision semantics);
  rotated boxes use ultralytics' Fast-NMS with the probabilistic IoU (``batch_probiou``): a box is
  dropped when any higher-scored box, kept or not, overlaps it by more than ``iou``;
- at most ``max_nms`` candidates (highest scores) enter NMS and ``max_det`` leave it, best first;
- an end-to-end output ``(N, K, 6 + extra)`` (YOLO26's one-to-one head, already ranked) is only
  filtered: ``score > conf``, then the first ``max_det`` rows.

Only numpy (and the pure-Python :mod:`trtq.tasks`) is imported here.
"""

from __future__ import annotations

import numpy as np

from trtq.tasks import TaskLayout

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
    nc: int | None = None,
    rotated: bool = False,
) -> list[np.ndarray]:
    """Decode raw grid outputs ``(N, 4 + nc + extra, A)`` into per-image ``(k, 6 + extra)`` arrays.

    Each row is ``x1, y1, x2, y2, score, class_id, extra...`` in the model input's pixel coordinates
    (letterboxed image), sorted by descending score after NMS. ``nc`` defaults to every channel after the
    box (a detection model); with ``rotated`` (OBB) the box stays ``cx, cy, w, h``, the angle is the last
    extra value and NMS uses the probabilistic IoU. The dtype follows the prediction (float32 for FP32 and
    FP16 engines, which are upcast).
    """
    if prediction.ndim != 3 or prediction.shape[1] < 5:
        raise ValueError(f"expected a (N, 4 + classes, anchors) YOLO output, got shape {prediction.shape}")
    pred = _as_float(prediction)
    n_cls = pred.shape[1] - 4 if nc is None else int(nc)
    extra = pred.shape[1] - 4 - n_cls
    out: list[np.ndarray] = []
    for p in pred:  # (4 + nc + extra, A)
        cls_scores = p[4 : 4 + n_cls]
        best = cls_scores.max(axis=0)
        keep = best > conf
        if not np.any(keep):
            out.append(np.zeros((0, 6 + extra), dtype=pred.dtype))
            continue
        x = p[:, keep].T  # (k, 4 + nc + extra)
        box = x[:, :4] if rotated else xywh2xyxy(x[:, :4])
        cls_id = x[:, 4 : 4 + n_cls].argmax(axis=1)
        score = best[keep]
        det = np.concatenate([box, score[:, None], cls_id[:, None].astype(pred.dtype), x[:, 4 + n_cls :]], axis=1)
        if det.shape[0] > max_nms:
            det = det[np.argsort(-det[:, 4], kind="stable")[:max_nms]]
        offset = det[:, 5:6] * pred.dtype.type(0 if agnostic else MAX_WH)
        if rotated:
            rboxes = np.concatenate([det[:, :2] + offset, det[:, 2:4], det[:, -1:]], axis=1)
            kept = nms_rotated(rboxes, det[:, 4], iou)[:max_det]
        else:
            kept = nms(det[:, :4] + offset, det[:, 4], iou)[:max_det]
        out.append(det[kept])
    return out


def decode_end2end(prediction: np.ndarray, *, conf: float = 0.25, max_det: int = 300) -> list[np.ndarray]:
    """Filter end-to-end outputs ``(N, K, 6 + extra)`` (ranked by the model, no NMS): rows with
    ``score > conf``, at most ``max_det``, in the model's order (ultralytics' end-to-end branch)."""
    if prediction.ndim != 3 or prediction.shape[2] < 6:
        raise ValueError(f"expected a (N, detections, 6 + extra) end-to-end output, got shape {prediction.shape}")
    pred = _as_float(prediction)
    return [p[p[:, 4] > conf][:max_det] for p in pred]


def decode_layout(
    prediction: np.ndarray, layout: TaskLayout, *, conf: float = 0.25, iou: float = 0.7, max_det: int = 300
) -> list[np.ndarray]:
    """Rows per image for any task and head form: ``x1 y1 x2 y2 score class extra...`` (OBB: ``cx cy w h
    score class angle``), in input pixels; ``extra`` holds the mask coefficients or keypoints."""
    if layout.end2end:
        return decode_end2end(prediction, conf=conf, max_det=max_det)
    return decode(prediction, conf=conf, iou=iou, max_det=max_det, nc=layout.nc, rotated=layout.task == "obb")


def _as_float(prediction: np.ndarray) -> np.ndarray:
    if prediction.dtype.kind == "f" and prediction.dtype.itemsize >= 4:
        return prediction
    return prediction.astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# rotated boxes (OBB)
# ---------------------------------------------------------------------------------------------------------------


def _covariance(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian covariance terms of ``xywhr`` boxes (``ultralytics.utils.metrics._get_covariance_matrix``)."""
    a = boxes[:, 2:3] ** 2 / 12
    b = boxes[:, 3:4] ** 2 / 12
    c = boxes[:, 4:5]
    cos, sin = np.cos(c), np.sin(c)
    cos2, sin2 = cos**2, sin**2
    return a * cos2 + b * sin2, a * sin2 + b * cos2, (a - b) * cos * sin


def probiou(obb1: np.ndarray, obb2: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Probabilistic IoU ``(n, m)`` of ``xywhr`` boxes (``ultralytics.utils.metrics.batch_probiou``)."""
    x1, y1 = obb1[:, 0:1], obb1[:, 1:2]
    x2, y2 = obb2[None, :, 0], obb2[None, :, 1]
    a1, b1, c1 = _covariance(obb1)
    a2, b2, c2 = (v[:, 0][None] for v in _covariance(obb2))
    den = (a1 + a2) * (b1 + b2) - (c1 + c2) ** 2 + eps
    t1 = (((a1 + a2) * (y1 - y2) ** 2 + (b1 + b2) * (x1 - x2) ** 2) / den) * 0.25
    t2 = (((c1 + c2) * (x2 - x1) * (y1 - y2)) / den) * 0.5
    prod = np.clip(a1 * b1 - c1**2, 0, None) * np.clip(a2 * b2 - c2**2, 0, None)
    t3 = np.log(((a1 + a2) * (b1 + b2) - (c1 + c2) ** 2) / (4 * np.sqrt(prod) + eps) + eps) * 0.5
    bd = np.clip(t1 + t2 + t3, eps, 100.0)
    hd = np.sqrt(1.0 - np.exp(-bd) + eps)
    return (1 - hd).astype(obb1.dtype, copy=False)


def nms_rotated(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, block: int = 1024) -> np.ndarray:
    """Fast-NMS of ``xywhr`` boxes with :func:`probiou` (``TorchNMS.fast_nms`` as ultralytics runs it for
    OBB): indices of kept boxes, highest score first. Computed in row blocks to bound memory."""
    n = int(boxes.shape[0])
    if n == 0:
        return np.zeros((0,), dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    b = boxes[order]
    suppressed = np.zeros(n, dtype=bool)
    cols = np.arange(n)
    for start in range(0, n, block):
        rows = np.arange(start, min(start + block, n))
        over = probiou(b[rows], b) > iou_threshold
        over &= cols[None, :] > rows[:, None]  # upper triangle: only higher-scored boxes suppress
        suppressed |= over.any(axis=0)
    return order[~suppressed].astype(np.int64)


def xywhr2corners(xywhr: np.ndarray) -> np.ndarray:
    """``(n, 5)`` rotated boxes to ``(n, 4, 2)`` corner points (``ultralytics.utils.ops.xywhr2xyxyxyxy``)."""
    ctr = xywhr[:, :2]
    w, h, angle = (xywhr[:, i : i + 1] for i in range(2, 5))
    cos, sin = np.cos(angle), np.sin(angle)
    vec1 = np.concatenate([w / 2 * cos, w / 2 * sin], -1)
    vec2 = np.concatenate([-h / 2 * sin, h / 2 * cos], -1)
    return np.stack([ctr + vec1 + vec2, ctr + vec1 - vec2, ctr - vec1 - vec2, ctr - vec1 + vec2], -2)


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


def _unpad(from_shape: tuple[int, int], to_shape: tuple[int, int]) -> tuple[float, float, int, int]:
    """``(gain_x, gain_y, pad_x, pad_y)`` of the centred letterbox from ``to_shape`` into ``from_shape``."""
    h1, w1 = from_shape
    h0, w0 = to_shape
    gain = min(h1 / h0, w1 / w0)
    new_h, new_w = max(round(h0 * gain), 1), max(round(w0 * gain), 1)
    return new_w / w0, new_h / h0, round((w1 - new_w) / 2 - 0.1), round((h1 - new_h) / 2 - 0.1)


def scale_xywh(boxes: np.ndarray, from_shape: tuple[int, int], to_shape: tuple[int, int]) -> np.ndarray:
    """Map ``cx, cy, w, h`` (rotated boxes) from the letterboxed input to the original image, in place and
    unclipped (``ultralytics.utils.ops.scale_boxes(..., xywh=True)``)."""
    gain_x, gain_y, pad_x, pad_y = _unpad(from_shape, to_shape)
    boxes[..., 0] -= pad_x
    boxes[..., 1] -= pad_y
    boxes[..., [0, 2]] /= gain_x
    boxes[..., [1, 3]] /= gain_y
    return boxes


def scale_coords(coords: np.ndarray, from_shape: tuple[int, int], to_shape: tuple[int, int]) -> np.ndarray:
    """Map points ``(..., 2+)`` (x, y first) from the letterboxed input to the original image and clip them,
    in place (``ultralytics.utils.ops.scale_coords``); further values (visibility) are left as they are."""
    gain_x, gain_y, pad_x, pad_y = _unpad(from_shape, to_shape)
    h0, w0 = to_shape
    coords[..., 0] = ((coords[..., 0] - pad_x) / gain_x).clip(0, w0)
    coords[..., 1] = ((coords[..., 1] - pad_y) / gain_y).clip(0, h0)
    return coords


# ---------------------------------------------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------------------------------------------


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of 1-D linear resampling, as ``torch.nn.functional.interpolate``
    (``mode="bilinear"``, ``align_corners=False``, no antialias) computes them: ``(i0, i1, w0, w1)``."""
    scale = np.float32(n_in / n_out)
    src = np.maximum((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0))
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
    return i0, i1, np.float32(1) - w1, w1


def _resample(
    x: np.ndarray, rows: tuple[np.ndarray, ...], cols: tuple[np.ndarray, ...], ro: np.ndarray, co: np.ndarray
) -> np.ndarray:
    """Bilinear samples of 2-D ``x`` at output rows ``ro`` and columns ``co`` (taps from :func:`_linear_taps`);
    only the source columns the taps read are touched."""
    r0, r1, a0, a1 = rows
    c0, c1, b0, b1 = cols
    lo, hi = int(c0[co].min()), int(c1[co].max()) + 1
    band = x[:, lo:hi]
    y = band[r0[ro]] * a0[ro, None] + band[r1[ro]] * a1[ro, None]
    return y[:, c0[co] - lo] * b0[co] + y[:, c1[co] - lo] * b1[co]


def resize_bilinear(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a 2-D float32 map to ``shape`` (h, w) like ``F.interpolate(mode="bilinear")``."""
    rows, cols = _linear_taps(x.shape[0], shape[0]), _linear_taps(x.shape[1], shape[1])
    return _resample(x, rows, cols, np.arange(shape[0]), np.arange(shape[1]))


def process_masks(protos: np.ndarray, coefficients: np.ndarray, boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Binary masks ``(n, H, W)`` at the model input's resolution (``ultralytics.utils.ops.process_mask``
    with ``upsample=True``): coefficients x prototypes, bilinear upsampling, ``> 0``, cropped to each
    xyxy box (pixel columns ``x1 <= c < x2``, rows likewise). Only each box's pixels are computed."""
    nm, mh, mw = protos.shape
    h, w = shape
    flat = protos.reshape(nm, -1).astype(np.float32, copy=False)
    rows, cols = _linear_taps(mh, h), _linear_taps(mw, w)
    ys, xs = np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32)
    out = np.zeros((coefficients.shape[0], h, w), dtype=bool)
    for k, (coef, box) in enumerate(zip(coefficients.astype(np.float32, copy=False), boxes, strict=True)):
        x1, y1, x2, y2 = (np.float32(v) for v in box)
        ro, co = np.flatnonzero((ys >= y1) & (ys < y2)), np.flatnonzero((xs >= x1) & (xs < x2))
        if ro.size and co.size:
            m = (coef @ flat).reshape(mh, mw)
            out[k, ro[0] : ro[-1] + 1, co[0] : co[-1] + 1] = _resample(m, rows, cols, ro, co) > 0
    return out


def scale_masks(masks: np.ndarray, shape: tuple[int, int], threshold: float = 0.5) -> np.ndarray:
    """Map binary masks ``(n, H, W)`` of the letterboxed input to the original image ``shape`` (h, w):
    the letterbox content is cropped and resized bilinearly (``ultralytics.utils.ops.scale_masks``), then
    thresholded at ``threshold``. Only the output pixels near each mask are computed."""
    n, h1, w1 = masks.shape
    h0, w0 = shape
    if (h1, w1) == (h0, w0):
        return masks.astype(bool, copy=True)
    gain = min(h1 / h0, w1 / w0)
    top, left = round((h1 - max(round(h0 * gain), 1)) / 2 - 0.1), round((w1 - max(round(w0 * gain), 1)) / 2 - 0.1)
    bottom, right = top + max(round(h0 * gain), 1), left + max(round(w0 * gain), 1)
    rows, cols = _linear_taps(bottom - top, h0), _linear_taps(right - left, w0)
    out = np.zeros((n, h0, w0), dtype=bool)
    for k in range(n):
        crop = masks[k, top:bottom, left:right]
        ys, xs = np.flatnonzero(crop.any(axis=1)), np.flatnonzero(crop.any(axis=0))
        if not ys.size:
            continue
        ro = np.flatnonzero((rows[1] >= ys[0]) & (rows[0] <= ys[-1]))  # output rows whose taps reach the mask
        co = np.flatnonzero((cols[1] >= xs[0]) & (cols[0] <= xs[-1]))
        val = _resample(crop.astype(np.float32), rows, cols, ro, co)
        out[k, ro[0] : ro[-1] + 1, co[0] : co[-1] + 1] = val > threshold
    return out
