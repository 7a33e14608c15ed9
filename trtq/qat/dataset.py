"""Dataset staging for label fine-tuning: a private linked copy of the train split and a data yaml naming it.

ultralytics writes label caches next to the labels it reads; staging keeps it from writing beside the user's
(possibly shared or read-only) dataset.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from trtq.errors import TrtqError


def stage_dataset(data: Path, folder: Path, *, num_images: int | None = None, seed: int = 0) -> Path:
    """A private copy (file links) of ``data``'s train split, and a data yaml that names it for train and val.

    ultralytics writes label caches next to the labels it reads; staging keeps it from writing beside the
    user's (possibly shared or read-only) dataset, and the validation split is never touched here.
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
    images = resolve_image_paths(data)
    if num_images is not None:
        order = np.random.default_rng(seed).permutation(len(images))[:num_images]
        images = [images[int(i)] for i in sorted(order)]
    img_dir, lbl_dir = folder / "images" / "train", folder / "labels" / "train"
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    labelled = 0
    for k, img in enumerate(images):
        name = f"{k:06d}_{img.stem}"
        # ultralytics' images/ -> labels/ rule on the path as listed: an image that is a link into another
        # tree (a blob store, a shared cache) keeps the labels of the tree it is listed in
        listed = Path(os.path.abspath(img))
        os.symlink(listed, img_dir / f"{name}{img.suffix}")
        label = label_path(listed)
        if label.is_file():
            os.symlink(label, lbl_dir / f"{name}.txt")
            labelled += 1
    if labelled == 0:
        raise TrtqError(
            f"no labels found for the {len(images)} training images of {data} (expected YOLO .txt files under a "
            "'labels' folder beside 'images'); label fine-tuning needs them, or use --distill"
        )
    staged = folder / "data.yaml"
    staged.write_text(
        yaml.safe_dump({"path": str(folder.resolve()), "train": "images/train", "val": "images/train", "names": cfg["names"]}),
        encoding="utf-8",
    )
    return staged
