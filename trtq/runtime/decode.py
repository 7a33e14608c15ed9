"""Per-task results of one image: decoded rows of the model input mapped onto the original image.

Numpy only. The row decoding itself (NMS, rotated NMS, end-to-end filtering, masks) is in
:mod:`trtq.postprocess`; this module turns those rows into :class:`Detections` the way ultralytics'
predictors build their ``Results``:

- **detect**: xyxy boxes scaled to the image and clipped;
- **segment**: masks from the prototypes at the input resolution (``process_mask``, upsampled then
  cropped to the box), detections whose mask is empty are dropped (as ultralytics' predictor does), then
  the masks are mapped to the image resolution (``scale_masks``, bilinear, thresholded at 0.5);
- **pose**: keypoints scaled to the image and clipped, visibility kept (1.0 for models without it);
- **obb**: ``cx, cy, w, h, angle`` scaled to the image (not clipped), the 4 corner points, and as
  ``boxes`` the axis-aligned box around the corners (ultralytics' ``OBB.xyxy``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from trtq.postprocess import process_masks, scale_boxes, scale_coords, scale_masks, scale_xywh, xywhr2corners
from trtq.tasks import TaskLayout


@dataclass(frozen=True)
class Detections:
    """Detections of one image, best score first; coordinates are pixels of the original image.

    ``boxes`` are xyxy (clipped) for every task; the task's own fields are ``None`` for other tasks.
    """

    boxes: np.ndarray  # (n, 4) float32 x1, y1, x2, y2
    scores: np.ndarray  # (n,) float32
    class_ids: np.ndarray  # (n,) int64
    names: tuple[str, ...]  # (n,) class name of each detection
    image_shape: tuple[int, int]  # (height, width) of the original image
    task: str = "detect"
    masks: np.ndarray | None = None  # segment: (n, height, width) bool
    keypoints: np.ndarray | None = None  # pose: (n, k, 3) float32 x, y, visibility
    xywhr: np.ndarray | None = None  # obb: (n, 5) float32 cx, cy, w, h, angle (radians)
    corners: np.ndarray | None = None  # obb: (n, 4, 2) float32 corner points

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def counts(self) -> dict[str, int]:
        """Detections per class name, in class-id order."""
        out: dict[str, int] = {}
        for cid in np.unique(self.class_ids):
            idx = np.flatnonzero(self.class_ids == cid)
            out[self.names[int(idx[0])]] = int(idx.size)
        return out

    def summary(self) -> str:
        """``"4 person, 1 bus"`` (or ``"no detections"``)."""
        counts = self.counts()
        return ", ".join(f"{n} {name}" for name, n in counts.items()) if counts else "no detections"

    def to_list(self) -> list[dict[str, Any]]:
        """JSON-ready list: ``{"box": [x1, y1, x2, y2], "score", "class_id", "name"}`` per detection, plus
        ``"mask"`` (COCO uncompressed RLE, column-major: ``{"size": [h, w], "counts": [...]}``) and
        ``"mask_area"`` for segment, ``"keypoints"`` (``[[x, y, visibility], ...]``) for pose, ``"xywhr"``
        and ``"corners"`` (``[[x, y] * 4]``) for obb."""
        items: list[dict[str, Any]] = []
        for i, (box, score, cid, name) in enumerate(
            zip(self.boxes, self.scores, self.class_ids, self.names, strict=True)
        ):
            item: dict[str, Any] = {
                "box": [round(float(v), 2) for v in box],
                "score": round(float(score), 5),
                "class_id": int(cid),
                "name": name,
            }
            if self.masks is not None:
                item["mask"] = mask_to_rle(self.masks[i])
                item["mask_area"] = int(self.masks[i].sum())
            if self.keypoints is not None:
                item["keypoints"] = [[round(float(v), 2) for v in kp] for kp in self.keypoints[i]]
            if self.xywhr is not None and self.corners is not None:
                item["xywhr"] = [round(float(v), 2) for v in self.xywhr[i, :4]] + [round(float(self.xywhr[i, 4]), 5)]
                item["corners"] = [[round(float(x), 2), round(float(y), 2)] for x, y in self.corners[i]]
            items.append(item)
        return items


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE of a binary mask: run lengths over the column-major pixels, zeros first."""
    h, w = mask.shape
    flat = mask.ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(h), int(w)], "counts": [int(c) for c in counts]}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`mask_to_rle`."""
    h, w = rle["size"]
    values = np.zeros(len(rle["counts"]), dtype=bool)
    values[1::2] = True
    return np.repeat(values, rle["counts"]).reshape((w, h)).T


def to_detections(
    rows: np.ndarray,
    layout: TaskLayout,
    input_shape: tuple[int, int],
    image_shape: tuple[int, int],
    names: dict[int, str],
    protos: np.ndarray | None = None,
) -> Detections:
    """Map decoded rows (:func:`trtq.postprocess.decode_layout`) of one image onto the image."""
    rows = rows.astype(np.float32, copy=True)
    task = layout.task
    masks = keypoints = xywhr = corners = None
    if task == "segment":
        if protos is None:
            raise ValueError("a segmentation model's rows need its mask prototypes")
        coefs = rows[:, 6 : 6 + layout.nm]
        in_masks = process_masks(protos, coefs, rows[:, :4], input_shape)
        keep = in_masks.any(axis=(1, 2))  # ultralytics keeps only detections with a mask
        rows, in_masks = rows[keep], in_masks[keep]
        masks = scale_masks(in_masks, image_shape)
    if task == "obb":
        xywhr = np.concatenate([rows[:, :4], rows[:, -1:]], axis=1)
        scale_xywh(xywhr, input_shape, image_shape)
        corners = xywhr2corners(xywhr)
        boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
    else:
        boxes = scale_boxes(rows[:, :4].copy(), input_shape, image_shape)
    if task == "pose":
        assert layout.kpt_shape is not None
        k, d = layout.kpt_shape
        kpts = rows[:, 6 : 6 + k * d].reshape(-1, k, d).copy()
        scale_coords(kpts, input_shape, image_shape)
        keypoints = kpts if d == 3 else np.concatenate([kpts, np.ones((*kpts.shape[:2], 1), np.float32)], axis=2)
    class_ids = rows[:, 5].astype(np.int64)
    label = tuple(names.get(int(c), str(int(c))) for c in class_ids)
    return Detections(
        boxes.astype(np.float32, copy=False),
        rows[:, 4].copy(),
        class_ids,
        label,
        (int(image_shape[0]), int(image_shape[1])),
        task,
        masks,
        keypoints,
        xywhr,
        corners,
    )
