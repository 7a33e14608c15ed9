"""Drawing detections on images with OpenCV's built-in Hershey font (no font files, nothing downloaded):
boxes and labels for every task, masks (segment), keypoints and skeleton (pose), rotated boxes (OBB)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from trtq.errors import TrtqError

if TYPE_CHECKING:
    from trtq.runtime.decode import Detections

# ultralytics' default palette (RGB hex), so drawings look familiar
_PALETTE_HEX = (
    "042AFF", "0BDBEB", "F3F3F3", "00DFB7", "111F68", "FF6FDD", "FF444F", "CCED00", "00F344", "BD00FF",
    "00B4FF", "DD00BA", "00FFFF", "26C000", "01FFB3", "7D24FF", "7B0068", "FF1B6C", "FC6D2F", "A2FF0B",
)  # fmt: skip

# COCO-17 keypoint skeleton (1-based keypoint pairs) and colours, as ultralytics draws them
_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
    (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)  # fmt: skip
_POSE_PALETTE = (  # RGB
    (255, 128, 0), (255, 153, 51), (255, 178, 102), (230, 230, 0), (255, 153, 255), (153, 204, 255),
    (255, 102, 255), (255, 51, 255), (102, 178, 255), (51, 153, 255), (255, 153, 153), (255, 102, 102),
    (255, 51, 51), (153, 255, 153), (102, 255, 102), (51, 255, 51), (0, 255, 0), (0, 0, 255), (255, 0, 0),
    (255, 255, 255),
)  # fmt: skip
_LIMB_COLOR = (9, 9, 9, 9, 7, 7, 7, 0, 0, 0, 0, 0, 16, 16, 16, 16, 16, 16, 16)
_KPT_COLOR = (16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 9, 9, 9, 9, 9, 9)
KPT_VISIBLE = 0.5  # keypoints with a lower visibility are not drawn


def class_color(class_id: int) -> tuple[int, int, int]:
    """BGR colour of a class (stable across runs)."""
    h = _PALETTE_HEX[int(class_id) % len(_PALETTE_HEX)]
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return b, g, r


def draw_detections(
    image: np.ndarray,
    detections: Detections,
    *,
    line_width: int | None = None,
    show_scores: bool = True,
) -> np.ndarray:
    """Return a copy of BGR ``image`` with the detections drawn: masks (segment) first, then boxes
    (rotated ones for OBB) with ``name score`` labels, then keypoints and skeleton (pose)."""
    out = np.ascontiguousarray(image).copy()
    h, w = out.shape[:2]
    lw = line_width or max(round((h + w) / 2 * 0.003), 2)
    font_scale = lw / 3
    thickness = max(lw - 1, 1)
    if detections.masks is not None:
        _draw_masks(out, detections.masks, detections.class_ids)
    for i, (box, score, cid, name) in enumerate(
        zip(detections.boxes, detections.scores, detections.class_ids, detections.names, strict=True)
    ):
        color = class_color(int(cid))
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        if detections.corners is not None:
            pts = np.round(detections.corners[i]).astype(np.int32).reshape(-1, 1, 2)
            cv2.polylines(out, [pts], isClosed=True, color=color, thickness=lw, lineType=cv2.LINE_AA)
            x1, y1 = int(pts[:, 0, 0].min()), int(pts[:, 0, 1].min())
        else:
            cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness=lw, lineType=cv2.LINE_AA)
        label = f"{name} {float(score):.2f}" if show_scores else name
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        outside = y1 - th - base - 3 >= 0
        ty1 = y1 - th - base - 3 if outside else y1
        ty2 = y1 if outside else y1 + th + base + 3
        cv2.rectangle(out, (x1, ty1), (x1 + tw + 2, ty2), color, thickness=-1, lineType=cv2.LINE_AA)
        text_color = (0, 0, 0) if sum(color) > 3 * 160 else (255, 255, 255)
        cv2.putText(
            out,
            label,
            (x1 + 1, ty2 - base - 1),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            text_color,
            thickness,
            cv2.LINE_AA,
        )
    if detections.keypoints is not None:
        for kpts in detections.keypoints:
            _draw_keypoints(out, kpts, radius=max(lw + 1, 3), thickness=max(lw - 1, 2))
    return out


def _draw_masks(out: np.ndarray, masks: np.ndarray, class_ids: np.ndarray, alpha: float = 0.5) -> None:
    """Blend each mask's class colour into ``out`` in place (later detections on top)."""
    for mask, cid in zip(masks, class_ids, strict=True):
        if mask.shape != out.shape[:2] or not mask.any():
            continue
        color = np.asarray(class_color(int(cid)), dtype=np.float32)
        region = out[mask].astype(np.float32)
        out[mask] = (region * (1 - alpha) + color * alpha).astype(np.uint8)


def _rgb_to_bgr(c: tuple[int, int, int]) -> tuple[int, int, int]:
    return c[2], c[1], c[0]


def _draw_keypoints(out: np.ndarray, kpts: np.ndarray, *, radius: int, thickness: int) -> None:
    """Keypoints (x, y, visibility) and, for the 17 COCO keypoints, the skeleton, in place."""
    h, w = out.shape[:2]
    coco = kpts.shape[0] == 17

    def visible(k: np.ndarray) -> bool:
        x, y, v = float(k[0]), float(k[1]), float(k[2])
        return v >= KPT_VISIBLE and 0 < x < w and 0 < y < h

    if coco:
        for (a, b), ci in zip(_SKELETON, _LIMB_COLOR, strict=True):
            ka, kb = kpts[a - 1], kpts[b - 1]
            if visible(ka) and visible(kb):
                p1 = (int(round(float(ka[0]))), int(round(float(ka[1]))))
                p2 = (int(round(float(kb[0]))), int(round(float(kb[1]))))
                cv2.line(out, p1, p2, _rgb_to_bgr(_POSE_PALETTE[ci]), thickness=thickness, lineType=cv2.LINE_AA)
    for j, k in enumerate(kpts):
        if visible(k):
            color = _rgb_to_bgr(_POSE_PALETTE[_KPT_COLOR[j] if coco else j % len(_POSE_PALETTE)])
            center = (int(round(float(k[0]))), int(round(float(k[1]))))
            cv2.circle(out, center, radius, color, -1, lineType=cv2.LINE_AA)


def draw_text(image: np.ndarray, text: str, *, origin: tuple[int, int] = (10, 30)) -> np.ndarray:
    """Draw ``text`` in place (white on a dark box), e.g. an FPS counter; returns ``image``."""
    scale, thickness = 0.8, 2
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    x, y = origin
    cv2.rectangle(image, (x - 4, y - th - 6), (x + tw + 4, y + base + 2), (0, 0, 0), thickness=-1)
    cv2.putText(image, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return image


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Encode ``image`` (BGR) by the suffix of ``path`` (.jpg/.jpeg/.png) and write it atomically."""
    from trtq.fileio import write_bytes

    p = Path(path)
    ext = p.suffix.lower()
    if ext not in (".jpg", ".jpeg", ".png"):
        raise TrtqError(f"cannot write {p}: use a .jpg, .jpeg or .png file name")
    ok, data = cv2.imencode(ext, image)
    if not ok:
        raise TrtqError(f"OpenCV could not encode {p}")
    write_bytes(p, data.tobytes())
    return p
