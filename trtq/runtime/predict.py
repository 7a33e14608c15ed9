"""``trtq predict``: images in, drawn images and JSON out (every task)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtq.errors import TrtqError
from trtq.runtime.decode import Detections
from trtq.runtime.detector import Detector

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """The detections of one image file (or URL) and how long they took."""

    path: Path  # the file; for a URL, its file name
    detections: Detections
    ms: float  # preprocess + inference + postprocess
    saved: Path | None = None
    url: str | None = None

    def summary(self) -> str:
        return f"{self.path.name}: {self.detections.summary()} ({self.ms:.1f} ms)"

    def to_dict(self) -> dict[str, Any]:
        h, w = self.detections.image_shape
        return {
            "image": self.url or str(self.path),
            "width": w,
            "height": h,
            "ms": round(self.ms, 2),
            "saved": str(self.saved) if self.saved else None,
            "detections": self.detections.to_list(),
        }


class Predictions(list[Prediction]):
    """The predictions of a run, in source order, and the files it skipped (unreadable) with the reason."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped: list[dict[str, str]] = []


def predict(
    model: str | Path,
    source: str | Path,
    *,
    conf: float = 0.25,
    iou: float = 0.7,
    max_det: int = 300,
    save: str | Path | None = None,
    json_path: str | Path | None = None,
    device: int = 0,
    providers: Sequence[str] | None = None,
    on_result: Any = None,
) -> Predictions:
    """Run ``model`` on every image of ``source`` (file, directory, glob, list file, or an image URL).

    ``save``: write each image with drawn detections (boxes; masks, keypoints and skeleton, rotated boxes)
    into this directory (same file name; JPEG/PNG as the source,
    other formats as JPEG). ``json_path``: write all detections as one JSON file. ``on_result``: called with
    each :class:`Prediction` as soon as it is ready (progress output). Images are processed one at a time.
    Unreadable files are skipped (listed in ``skipped`` and the JSON); when none can be read it is an error.
    """
    from trtq.fileio import write_json
    from trtq.images import is_image_url, load_image, load_image_url, resolve_image_paths

    out_dir = Path(save) if save is not None else None
    results = Predictions()
    used_names: set[str] = set()
    with Detector(model, conf=conf, iou=iou, max_det=max_det, device=device, providers=providers) as det:
        url = str(source).strip() if is_image_url(source) else None
        paths = [_url_name(url)] if url is not None else resolve_image_paths(source)
        for path in paths:
            try:
                img = load_image_url(url) if url is not None else load_image(path)
            except TrtqError as exc:  # one unreadable file does not end the run (as calibration skips it)
                if len(paths) == 1:
                    raise
                logger.warning("skipped %s: %s", path, exc)
                results.skipped.append({"image": str(path), "reason": str(exc)})
                continue
            (d,) = det.detect(img)
            saved = None
            if out_dir is not None:
                from trtq.draw import draw_detections, write_image  # OpenCV, only when saving

                suffix = path.suffix.lower() if path.suffix.lower() in (".jpg", ".jpeg", ".png") else ".jpg"
                name, k = path.stem + suffix, 1
                while name in used_names:  # same file name in two source folders
                    name, k = f"{path.stem}_{k}{suffix}", k + 1
                used_names.add(name)
                saved = write_image(out_dir / name, draw_detections(img, d))
            pred = Prediction(path, d, det.last_timing.get("total", 0.0), saved, url)
            results.append(pred)
            if on_result is not None:
                on_result(pred)
        if not results and results.skipped:
            raise TrtqError(f"none of the {len(results.skipped)} images of {source} could be read "
                            f"(first: {results.skipped[0]['reason']})")
        if json_path is not None:
            write_json(
                json_path,
                {
                    "model": str(model),
                    "backend": det.backend,
                    "task": det.task,
                    "conf": conf,
                    "iou": iou,
                    "images": [r.to_dict() for r in results],
                    "skipped": results.skipped,
                },
            )
    return results


def _url_name(url: str) -> Path:
    """The file name of an image URL's path (for the saved image and the summary)."""
    from urllib.parse import unquote, urlparse

    return Path(Path(unquote(urlparse(url).path)).name or "image.jpg")
