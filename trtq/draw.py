"""Drawing detections on images with OpenCV's built-in Hershey font (no font files, nothing downloaded)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from trtq.errors import TrtqError

if TYPE_CHECKING:
    from trtq.runtime import Detections

# ultralytics' default palette (RGB hex), so drawings look familiar
_PALETTE_HEX = (
    "042AFF", "0BDBEB", "F3F3F3", "00DFB7", "111F68", "FF6FDD", "FF444F", "CCED00", "00F344", "BD00FF",
    "00B4FF", "DD00BA", "00FFFF", "26C000", "01FFB3", "7D24FF", "7B0068", "FF1B6C", "FC6D2F", "A2FF0B",
)  # fmt: skip


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
    """Return a copy of BGR ``image`` with boxes and ``name score`` labels drawn."""
    out = np.ascontiguousarray(image).copy()
    h, w = out.shape[:2]
    lw = line_width or max(round((h + w) / 2 * 0.003), 2)
    font_scale = lw / 3
    thickness = max(lw - 1, 1)
    for box, score, cid, name in zip(
        detections.boxes, detections.scores, detections.class_ids, detections.names, strict=True
    ):
        color = class_color(int(cid))
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
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
    return out


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
