"""Small pose / OBB / segment checkpoints and labelled datasets for the QAT tests, built offline.

Models are YOLOv8n (or YOLO11n) structures from ultralytics' yamls; YOLOv8 ones get the COCO backbone
transplanted. Datasets are a few coco128 images (copied, optionally shrunk) with labels derived from their
COCO boxes in the task's own format.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

COCO_FLIP_IDX = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
SUFFIX = {"detect": "", "pose": "-pose", "obb": "-obb", "segment": "-seg"}


def task_pt(task: str, folder: Path, weights: Path | None = None, arch: str = "yolov8n") -> Path:
    """``folder/<arch><suffix>.pt``: the yaml's structure, with ``weights`` transplanted where layers match."""
    from ultralytics import YOLO

    from trtq.export import _in_folder, _quiet_ultralytics
    from trtq.qat import save_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{arch}{SUFFIX[task]}.pt"
    if out.is_file():
        return out
    with tempfile.TemporaryDirectory() as tmp, _in_folder(tmp), _quiet_ultralytics():
        yolo = YOLO(f"{arch}{SUFFIX[task]}.yaml")
        if weights is not None:
            local = Path(tmp) / weights.name
            shutil.copy2(weights, local)
            yolo.load(str(local))
        save_checkpoint(yolo.model, out)
    return out


def _label_line(task: str, box: np.ndarray, kpt_shape: tuple[int, int]) -> str:
    cx, cy, w, h = (float(v) for v in box)
    x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    if task in ("obb", "segment"):  # a rotated box's corners; for segment, a 4-point polygon
        values = [x1, y1, x2, y1, x2, y2, x1, y2]
    elif task == "pose":
        n, dims = kpt_shape
        t = np.linspace(0.1, 0.9, n)
        pts = np.stack([x1 + t * (x2 - x1), y1 + t[::-1] * (y2 - y1), np.full(n, 2.0)], 1)[:, :dims]
        values = [cx, cy, w, h, *pts.ravel().tolist()]
    else:
        values = [cx, cy, w, h]
    return "0 " + " ".join(f"{min(max(v, 0.0), 1.0):.6f}" for v in values)


def task_dataset(
    task: str, root: Path, coco128: Path, pt: Path, *, n: int = 4, image_px: int | None = None, labels_as: str | None = None
) -> tuple[Path, int]:
    """(data yaml, number of label rows): ``n`` coco128 images with class-0 labels in ``labels_as`` format
    (default: ``task``'s), the yaml carrying the model's names (and keypoint shape for pose)."""
    import cv2
    import torch
    import yaml

    ckpt = torch.load(str(pt), map_location="cpu", weights_only=False)
    model = ckpt["model"]
    names = dict(model.names)
    kpt_shape = tuple(getattr(model.model[-1], "kpt_shape", (17, 3)))
    images = sorted((coco128 / "images" / "train2017").glob("*.jpg"))[:n]
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    rows = 0
    for img in images:
        dst = root / "images" / "train" / img.name
        if image_px is None:
            shutil.copyfile(img, dst)
        else:
            cv2.imwrite(str(dst), cv2.resize(cv2.imread(str(img)), (image_px, image_px)))
        src = coco128 / "labels" / "train2017" / f"{img.stem}.txt"
        boxes = np.loadtxt(src, ndmin=2)[:, 1:5]
        lines = [_label_line(labels_as or task, b, kpt_shape) for b in boxes]
        (root / "labels" / "train" / f"{img.stem}.txt").write_text("\n".join(lines) + "\n")
        rows += len(lines)
    cfg: dict[str, object] = {"path": str(root), "train": "images/train", "val": "images/train", "names": names}
    if task == "pose":
        cfg["kpt_shape"] = list(kpt_shape)
        cfg["flip_idx"] = COCO_FLIP_IDX if kpt_shape[0] == 17 else list(range(kpt_shape[0]))
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump(cfg))
    return data, rows
