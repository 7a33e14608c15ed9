"""Dataset staging for label fine-tuning: a private linked copy of the train split and a data yaml naming it.

ultralytics writes label caches next to the labels it reads; staging keeps it from writing beside the user's
(possibly shared or read-only) dataset.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from trtq.errors import TrtqError

logger = logging.getLogger(__name__)


# data yaml keys that describe the task (kept in the staged yaml); the split entries are rewritten
TASK_KEYS = ("kpt_shape", "flip_idx", "kpt_names", "kpt_oks_sigmas", "channels")
_A_TASK = {"detect": "a detect", "segment": "a segment", "pose": "a pose", "obb": "an OBB"}


def _label_rule(task: str, kpt_shape: tuple[int, int] | None) -> str:
    if task == "pose" and kpt_shape is not None:
        return f"pose labels have {5 + kpt_shape[0] * kpt_shape[1]} values (class, box, {kpt_shape[0]}x{kpt_shape[1]} keypoints)"
    if task == "segment":
        return "segment labels are polygons 'class x1 y1 x2 y2 x3 y3 ...', not 'class cx cy w h' boxes"
    if task == "obb":
        return "OBB labels are 'class x1 y1 x2 y2 x3 y3 x4 y4' (corners, or a polygon), not 'class cx cy w h' boxes"
    return "detect labels are 'class cx cy w h' (or polygons)"


def check_task_labels(path: Path, task: str, nc: int | None, kpt_shape: tuple[int, int] | None) -> int:
    """Instances in one label file in ``task``'s format, or a one-line TrtqError (ultralytics would drop the file or fail on it)."""
    from trtq.evaluate import check_label_file

    count = check_label_file(path, nc, kpt_shape=kpt_shape if task == "pose" else None)
    if task in ("obb", "segment") and count:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if len(line.split()) == 5:  # a box: ultralytics needs a rotated box's corners or a mask's polygon
                raise TrtqError(f"label file {path} line {lineno}: {len(line.split())} values; {_label_rule(task, None)}")
    return count


def _check_task_yaml(cfg: dict, data: Path, task: str, nc: int | None, kpt_shape: tuple[int, int] | None) -> None:
    names = cfg["names"]
    if nc is not None and len(names) != nc:
        raise TrtqError(f"{data} names {len(names)} classes but the model has {nc}; fine-tune on labels of the model's classes")
    if task == "pose" and kpt_shape is not None:
        got = cfg.get("kpt_shape")
        if got is None or tuple(got) != tuple(kpt_shape):
            shown = "no kpt_shape" if got is None else f"kpt_shape {list(got)}"
            raise TrtqError(
                f"{data} has {shown}, but the model is a pose model with kpt_shape {list(kpt_shape)}: "
                "pass the data yaml of its keypoint dataset"
            )


def stage_dataset(
    data: Path,
    folder: Path,
    *,
    num_images: int | None = None,
    seed: int = 0,
    task: str = "detect",
    nc: int | None = None,
    kpt_shape: tuple[int, int] | None = None,
) -> Path:
    """A private copy (file links) of ``data``'s train split, and a data yaml that names it for train and val.

    ultralytics writes label caches next to the labels it reads; staging keeps it from writing beside the
    user's (possibly shared or read-only) dataset, and the validation split is never touched here. The labels
    are checked against the model's task (``task``, ``nc`` classes, pose ``kpt_shape``): a set that holds no
    instance in that format is refused here, before any work; files that do not fit are reported (ultralytics
    drops them).
    """
    import yaml

    from trtq.evaluate import label_path
    from trtq.images import resolve_image_paths

    try:
        cfg = yaml.safe_load(data.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise TrtqError(f"cannot read data yaml {data}: {str(exc).splitlines()[0]}") from None
    if not isinstance(cfg, dict) or "names" not in cfg:
        raise TrtqError(f"{data} has no 'names' entry; pass an ultralytics data yaml")
    _check_task_yaml(cfg, data, task, nc, kpt_shape)
    images = resolve_image_paths(data)
    if num_images is not None:
        order = np.random.default_rng(seed).permutation(len(images))[:num_images]
        images = [images[int(i)] for i in sorted(order)]
    img_dir, lbl_dir = folder / "images" / "train", folder / "labels" / "train"
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    labelled = instances = 0
    unfit: list[str] = []
    for k, img in enumerate(images):
        name = f"{k:06d}_{img.stem}"
        # ultralytics' images/ -> labels/ rule on the path as listed: an image that is a link into another
        # tree (a blob store, a shared cache) keeps the labels of the tree it is listed in
        listed = Path(os.path.abspath(img))
        os.symlink(listed, img_dir / f"{name}{img.suffix}")
        label = label_path(listed)
        if label.is_file():
            try:
                instances += check_task_labels(label, task, nc, kpt_shape)
            except TrtqError as exc:
                unfit.append(str(exc))
            os.symlink(label, lbl_dir / f"{name}.txt")
            labelled += 1
    if labelled == 0:
        raise TrtqError(
            f"no labels found for the {len(images)} training images of {data} (expected YOLO .txt files under a "
            "'labels' folder beside 'images'); label fine-tuning needs them, or use --distill"
        )
    if unfit and len(unfit) == labelled:
        raise TrtqError(f"no label file of {data} fits {_A_TASK.get(task, task)} model: {unfit[0]}")
    if unfit:
        logger.warning(
            "%d of %d label files do not fit %s model and will be dropped; first: %s", len(unfit), labelled, _A_TASK.get(task, task), unfit[0]
        )
    if instances == 0:
        raise TrtqError(f"the {labelled} label files of {data} hold no instance; label fine-tuning needs some, or use --distill")
    staged = folder / "data.yaml"
    extra = {k: cfg[k] for k in TASK_KEYS if k in cfg}
    staged.write_text(
        yaml.safe_dump({"path": str(folder.resolve()), "train": "images/train", "val": "images/train", "names": cfg["names"], **extra}),
        encoding="utf-8",
    )
    return staged
