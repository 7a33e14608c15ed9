"""mAP evaluation of a .pt, FP32 ONNX, Q/DQ ONNX or TensorRT engine with ultralytics' own validator.

The metrics are ultralytics' (``model.val``): the same letterbox, decode, NMS (conf 0.001, IoU 0.7, at most
300 detections) and COCO-style interpolated AP as ``yolo val``, so numbers are comparable with published
ones. ONNX models (FP32 and Q/DQ) run on ONNX Runtime's CPU provider.

Accepted data:

* an ultralytics data yaml (its ``val`` split),
* a folder of images with YOLO-format labels (``class cx cy w h`` normalised to [0, 1]) either in a sibling
  ``labels`` tree (``.../images/x.jpg`` -> ``.../labels/x.txt``, ultralytics' layout) or next to the images,
* a COCO instances JSON (``images=`` gives the image folder; by default ``<json>/../../images/<split>``).

Label files are checked before ultralytics sees them, so a malformed one is a one-line :class:`TrtqError`
instead of a silently ignored image.

The validator follows the model's task (ultralytics metadata): box mAP for detect, box and mask mAP for
segment, box and pose (OKS) mAP for pose, rotated-box mAP for OBB. A task whose labels the data does not
have (polygons for segment, keypoints and ``kpt_shape`` for pose, rotated boxes for OBB) is refused in one
line rather than scored as zeros.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtq.cpuisa import TARGET_CPU, TARGET_KEY, model_metadata, warn_if_saturating
from trtq.errors import MissingDependencyError, TrtqError
from trtq.ort import exact_qdq_sessions

logger = logging.getLogger(__name__)

CONF = 0.001
IOU = 0.7
MAX_DET = 300
IMAGE_SUFFIXES = (".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm", ".heic")
MODEL_SUFFIXES = (".pt", ".onnx", ".engine")


@dataclass(frozen=True)
class DataSpec:
    """A validated evaluation set: the yaml ultralytics reads and what it holds."""

    yaml: Path
    images: int
    labelled: int
    instances: int
    source: str


def _ultralytics() -> Any:
    try:
        import ultralytics
    except ImportError:
        raise MissingDependencyError(
            "mAP evaluation needs ultralytics: pip install 'trtq[export]' (or pip install ultralytics)"
        ) from None
    return ultralytics


def _image_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def label_path(image: Path) -> Path:
    """ultralytics' rule: the last ``/images/`` in the path becomes ``/labels/``, suffix ``.txt``."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    s = str(image)
    if sa in s:
        head, _, tail = s.rpartition(sa)
        return Path(head + sb + tail).with_suffix(".txt")
    return image.with_suffix(".txt")


def check_label_file(path: Path, nc: int | None = None, *, kpt_shape: tuple[int, int] | None = None) -> int:
    """Validate a YOLO label file; return its number of boxes. Raise a one-line TrtqError.

    With ``kpt_shape`` (pose) each line is ``class cx cy w h`` and ``keypoints * dims`` values (visibility
    0, 1 or 2 when dims is 3); otherwise boxes (5 values) or polygons / rotated boxes (an odd number >= 7)."""
    columns = 5 + kpt_shape[0] * kpt_shape[1] if kpt_shape else None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TrtqError(f"cannot read label file {path}: {type(exc).__name__}") from None
    count = 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        parts = line.split()
        where = f"label file {path} line {lineno}"
        fix = "YOLO labels are 'class cx cy w h' with coordinates normalised to [0, 1]"
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise TrtqError(f"{where}: {line[:60]!r} is not numeric; {fix}") from None
        if columns is not None and len(values) != columns:
            raise TrtqError(f"{where}: {len(values)} values; pose labels have {columns} (class, box, keypoints)")
        if columns is None and len(values) != 5 and (len(values) < 7 or len(values) % 2 == 0):
            raise TrtqError(f"{where}: {len(values)} values; {fix} (or 'class x1 y1 x2 y2 ...' polygons)")
        cls = values[0]
        if cls < 0 or cls != int(cls):
            raise TrtqError(f"{where}: class {parts[0]!r} is not a non-negative integer; {fix}")
        if nc is not None and int(cls) >= nc:
            raise TrtqError(f"{where}: class {int(cls)} but the model/dataset has {nc} classes (0..{nc - 1})")
        coords = values[1:]
        if kpt_shape is not None and kpt_shape[1] == 3:
            coords = values[1:5] + [v for i, v in enumerate(values[5:]) if i % 3 != 2]
            if any(v not in (0, 1, 2) for v in values[7::3]):
                raise TrtqError(f"{where}: keypoint visibility must be 0, 1 or 2")
        if any(v < 0 or v > 1 for v in coords):
            raise TrtqError(f"{where}: coordinates outside [0, 1]; {fix}")
        count += 1
    return count


def _check_split(
    images: list[Path], nc: int | None, what: str, kpt_shape: tuple[int, int] | None = None
) -> tuple[int, int]:
    """(labelled images, instances) of an image list; raise when nothing is labelled."""
    if not images:
        raise TrtqError(f"no images found for {what} (accepted: {', '.join(IMAGE_SUFFIXES)})")
    labelled = instances = 0
    for img in images:
        lab = label_path(img)
        if lab.is_file():
            labelled += 1
            instances += check_label_file(lab, nc, kpt_shape=kpt_shape)
    if labelled == 0:
        raise TrtqError(
            f"no YOLO label files found for {what} (looked for {label_path(images[0])} and the like); "
            "put labels in a sibling 'labels' folder or pass a data yaml / COCO JSON"
        )
    return labelled, instances


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise TrtqError(f"cannot read data yaml {path}: {str(exc).splitlines()[0][:120]}") from None
    if not isinstance(data, dict):
        raise TrtqError(f"{path} is not an ultralytics data yaml (expected keys 'val' and 'names')")
    return data


def _names_count(names: Any) -> int | None:
    if isinstance(names, dict):
        return len(names)
    if isinstance(names, list):
        return len(names)
    return None


def _yaml_split_images(yaml_path: Path, data: dict[str, Any], split: str) -> list[Path]:
    entry = data.get(split)
    if entry is None:
        raise TrtqError(f"{yaml_path} has no '{split}' entry; add '{split}: images/val' (relative to 'path')")
    yaml_path = yaml_path.resolve()
    root = Path(str(data["path"])) if data.get("path") else yaml_path.parent
    if not root.is_absolute():  # ultralytics: relative to the working directory when it exists there
        root = root.resolve() if root.exists() else (yaml_path.parent / root).resolve()
    entries = entry if isinstance(entry, list) else [entry]
    images: list[Path] = []
    for e in entries:
        p = Path(str(e))
        p = p if p.is_absolute() else root / p
        if p.is_dir():
            images.extend(_image_files(p))
        elif p.is_file() and p.suffix == ".txt":
            for line in p.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    q = Path(line.strip())
                    images.append(q if q.is_absolute() else (p.parent / q).resolve())
        else:
            raise TrtqError(f"{yaml_path}: '{split}' points to {p}, which does not exist")
    return images


def _write_yaml(path: Path, content: dict[str, Any]) -> None:
    import yaml

    path.write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")


def _coco_to_yolo(json_path: Path, images_dir: Path | None, workdir: Path, names: dict[int, str] | None) -> DataSpec:
    try:
        coco = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TrtqError(f"cannot read COCO JSON {json_path}: {str(exc)[:120]}") from None
    if not isinstance(coco, dict) or not all(k in coco for k in ("images", "annotations", "categories")):
        raise TrtqError(f"{json_path} is not a COCO instances file (needs 'images', 'annotations', 'categories')")
    if images_dir is None:
        split = json_path.stem.split("_", 1)[-1]
        images_dir = json_path.parent.parent / "images" / split
    if not images_dir.is_dir():
        raise TrtqError(f"image folder for {json_path.name} not found: {images_dir}; pass images=DIR (--images DIR)")
    cats = sorted(coco["categories"], key=lambda c: int(c["id"]))
    by_name = {v: k for k, v in (names or {}).items()}
    cat_map: dict[int, int] = {}
    for idx, c in enumerate(cats):
        cat_map[int(c["id"])] = by_name.get(str(c["name"]), idx) if by_name else idx
    out_names = names or {idx: str(c["name"]) for idx, c in enumerate(cats)}
    img_out, lab_out = workdir / "images" / "val", workdir / "labels" / "val"
    img_out.mkdir(parents=True)
    lab_out.mkdir(parents=True)
    anns: dict[int, list[dict[str, Any]]] = {}
    for a in coco["annotations"]:
        anns.setdefault(int(a["image_id"]), []).append(a)
    count = labelled = instances = 0
    for im in coco["images"]:
        src = images_dir / str(im["file_name"])
        if not src.is_file():
            continue
        w, h = float(im["width"]), float(im["height"])
        lines: list[str] = []
        for a in anns.get(int(im["id"]), []):
            if a.get("iscrowd", 0):
                continue
            x, y, bw, bh = (float(v) for v in a["bbox"])
            if bw <= 0 or bh <= 0:
                continue
            cx, cy = min(max((x + bw / 2) / w, 0.0), 1.0), min(max((y + bh / 2) / h, 0.0), 1.0)
            nw, nh = min(bw / w, 1.0), min(bh / h, 1.0)
            lines.append(f"{cat_map[int(a['category_id'])]} {cx:.6f} {cy:.6f} {nw:.6f} {nh:.6f}")
        link = img_out / src.name
        try:
            link.symlink_to(src.resolve())
        except OSError:
            import shutil

            shutil.copy2(src, link)
        (lab_out / src.with_suffix(".txt").name).write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
        count += 1
        if lines:
            labelled += 1
            instances += len(lines)
    if count == 0:
        raise TrtqError(f"none of the {len(coco['images'])} images of {json_path.name} are in {images_dir}")
    yaml_path = workdir / "data.yaml"
    _write_yaml(yaml_path, {"path": str(workdir), "train": "images/val", "val": "images/val", "names": out_names})
    return DataSpec(yaml_path, count, labelled, instances, f"COCO JSON {json_path}")


def _folder_dataset(folder: Path, workdir: Path, names: dict[int, str] | None) -> DataSpec:
    images = _image_files(folder)
    if not images:
        raise TrtqError(f"no images found in {folder} (accepted: {', '.join(IMAGE_SUFFIXES)})")
    nc = len(names) if names else None
    # ultralytics' own layout (.../images/... with .../labels/...), seen through a private view
    if any(label_path(i).is_file() and label_path(i) != i.with_suffix(".txt") for i in images):
        labelled, inst = _check_split(images, nc, str(folder))
        if names is None:
            names = _names_from_labels(images)
        yaml_path = _private_view(images, workdir, {"names": names})
        return DataSpec(yaml_path, len(images), labelled, inst, f"folder {folder}")
    # labels next to the images (or in folder/labels): rebuild the ultralytics layout with links
    img_out, lab_out = workdir / "images" / "val", workdir / "labels" / "val"
    img_out.mkdir(parents=True)
    lab_out.mkdir(parents=True)
    labelled = inst = 0
    for i, img in enumerate(images):
        candidates = [img.with_suffix(".txt"), folder / "labels" / img.with_suffix(".txt").name]
        label = next((c for c in candidates if c.is_file()), None)
        name = f"{i:06d}_{img.name}"
        try:
            (img_out / name).symlink_to(img.resolve())
        except OSError:
            import shutil

            shutil.copy2(img, img_out / name)
        if label is not None:
            inst += check_label_file(label, nc)
            labelled += 1
            (lab_out / Path(name).with_suffix(".txt")).write_text(label.read_text(encoding="utf-8"), encoding="utf-8")
    if labelled == 0:
        raise TrtqError(
            f"no YOLO label files found for the images in {folder} (looked next to them, in {folder / 'labels'} and in "
            "a sibling 'labels' tree); pass a data yaml or COCO JSON instead"
        )
    if names is None:
        names = _names_from_labels([lab_out / "x"], label_dir=lab_out)
    yaml_path = workdir / "data.yaml"
    _write_yaml(yaml_path, {"path": str(workdir), "train": "images/val", "val": "images/val", "names": names})
    return DataSpec(yaml_path, len(images), labelled, inst, f"folder {folder}")


def _private_view(images: list[Path], workdir: Path, cfg: dict[str, Any]) -> Path:
    """A data yaml over links to ``images`` and copies of their labels under ``workdir``.

    ultralytics writes a label cache (``labels/<split>.cache``) beside the labels it reads; evaluating
    through this view keeps that file in ``workdir``, so a dataset is never written to (it may be
    read-only or shared)."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="view-", dir=workdir))
    img_out, lab_out = root / "images" / "val", root / "labels" / "val"
    img_out.mkdir(parents=True)
    lab_out.mkdir(parents=True)
    for i, img in enumerate(images):
        name = f"{i:06d}_{img.name}"
        try:
            (img_out / name).symlink_to(img.resolve())
        except OSError:
            import shutil

            shutil.copy2(img, img_out / name)
        label = label_path(img)
        if label.is_file():
            (lab_out / Path(name).with_suffix(".txt")).write_bytes(label.read_bytes())
    keep = {k: v for k, v in cfg.items() if k not in ("path", "train", "val", "test", "download")}
    yaml_path = root / "data.yaml"
    _write_yaml(yaml_path, {"path": str(root), "train": "images/val", "val": "images/val", **keep})
    return yaml_path


def _names_from_labels(images: list[Path], label_dir: Path | None = None) -> dict[int, str]:
    files = sorted(label_dir.glob("*.txt")) if label_dir else [label_path(i) for i in images]
    top = 0
    for f in files:
        if f.is_file():
            for line in f.read_text(encoding="utf-8").split("\n"):
                if line.strip():
                    top = max(top, int(float(line.split()[0])))
    return {i: f"class{i}" for i in range(top + 1)}


def prepare_data(
    data: str | os.PathLike[str], workdir: Path, *, names: dict[int, str] | None = None, images: str | os.PathLike[str] | None = None
) -> DataSpec:
    """Validate ``data`` and return a yaml ultralytics can read (written under ``workdir`` when needed)."""
    path = Path(data)
    if not path.exists():
        raise TrtqError(f"data not found: {path} (pass a data yaml, a folder of images with YOLO labels, or a COCO JSON)")
    if path.is_dir():
        return _folder_dataset(path, workdir, names)
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        cfg = _read_yaml(path)
        if "names" not in cfg:
            raise TrtqError(f"{path} has no 'names' entry; an ultralytics data yaml lists the class names")
        split_images = _yaml_split_images(path, cfg, "val")
        nc = _names_count(cfg.get("names"))
        kpt = cfg.get("kpt_shape")
        kpt_shape = (int(kpt[0]), int(kpt[1])) if isinstance(kpt, list) and len(kpt) == 2 else None
        labelled, inst = _check_split(split_images, nc, f"{path} (val split)", kpt_shape)
        view = _private_view(split_images, workdir, cfg)
        return DataSpec(view, len(split_images), labelled, inst, f"data yaml {path}")
    if suffix == ".json":
        return _coco_to_yolo(path, Path(images) if images is not None else None, workdir, names)
    raise TrtqError(f"{path}: unsupported data ({suffix or 'no suffix'}); pass a data .yaml, an image folder or a COCO .json")


def _model_names(model: Path) -> dict[int, str] | None:
    if model.suffix.lower() == ".onnx":
        from trtq.modelinfo import read_model_info

        return read_model_info(model, with_hash=False).names or None
    return None


def _model_task(model: Path) -> str | None:
    """The task in the model's own metadata (ONNX metadata, engine record or header); None for a ``.pt``
    (ultralytics reads it from the checkpoint)."""
    suffix = model.suffix.lower()
    if suffix == ".onnx":
        from trtq.modelinfo import read_model_info

        task = read_model_info(model, with_hash=False).metadata.get("task")
        return str(task) if task else None
    if suffix == ".engine":
        from trtq.engine_meta import read_engine, read_header

        header = read_header(model) or {}
        if header.get("task"):
            return str(header["task"])
        meta = read_engine(model)[1]
        return meta.task if meta is not None else None
    return None


def _label_widths(yaml_path: Path) -> set[int]:
    """The numbers of values per label line found in the val split of a data yaml."""
    widths: set[int] = set()
    for img in _yaml_split_images(yaml_path, _read_yaml(yaml_path), "val"):
        lab = label_path(img)
        if lab.is_file():
            widths.update(len(line.split()) for line in lab.read_text(encoding="utf-8").splitlines() if line.strip())
    return widths


def _check_task_labels(task: str, model: Path, spec: DataSpec) -> None:
    """Refuse a task the data has no labels for, in one line."""
    if task == "detect":
        return  # every ultralytics detection dataset has box labels
    cfg, widths = _read_yaml(spec.yaml), _label_widths(spec.yaml)
    detection_only = "(coco128, which `make demo` uses, has detection labels only)"
    if task == "pose" and not cfg.get("kpt_shape"):
        raise TrtqError(
            f"{model.name} is a pose model but {spec.source} has no keypoint labels (no kpt_shape in the data "
            f"yaml): pose mAP needs a keypoint dataset such as coco8-pose {detection_only}"
        )
    if task == "obb" and 9 not in widths:
        raise TrtqError(
            f"{model.name} is an OBB model but {spec.source} has no rotated-box labels ('class x1 y1 ... x4 y4'): "
            f"OBB mAP needs a dataset such as DOTA {detection_only}"
        )
    if task == "segment" and not any(w > 5 and w % 2 == 1 for w in widths):
        raise TrtqError(
            f"{model.name} is a segmentation model but {spec.source} has box labels only: mask mAP needs polygon "
            f"labels ('class x1 y1 x2 y2 ...') such as coco8-seg's {detection_only}"
        )


def _check_model(model: str | os.PathLike[str]) -> Path:
    path = Path(model)
    if not path.is_file():
        raise TrtqError(f"model not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        raise TrtqError(f"{path}: cannot evaluate a '{suffix}' file; pass a .pt, .onnx or .engine model")
    if suffix == ".engine":
        from trtq.trt.compat import require_tensorrt

        require_tensorrt(f"evaluating the engine {path.name}")
    return path


def engine_for_ultralytics(path: Path, workdir: Path) -> Path:
    """The engine file ultralytics' validator should load for ``path``.

    Ultralytics learns an engine's DLA core only from the ``"dla"`` key of its header and sets
    ``runtime.DLA_core`` from it. A trtq engine records the core in its ``.json`` sidecar and has no header
    unless built with ``--ultralytics-header``, so for a DLA engine whose header does not name its core this
    writes a copy into ``workdir`` with the header completed from trtq's record (the plan bytes unchanged).
    Every other engine is returned as it is.
    """
    from trtq.engine_meta import engine_dla_core, read_engine, read_header, ultralytics_header

    header = read_header(path)
    plan, meta = read_engine(path)
    core = engine_dla_core(meta, header)
    if core is None or (header is not None and header.get("dla") is not None):
        return path
    fields = dict(header) if header is not None else (meta.ultralytics_metadata() if meta is not None else {})
    fields["dla"] = str(core)
    copy = workdir / path.name
    with open(copy, "wb") as fh:
        fh.write(ultralytics_header(fields))
        fh.write(plan)
    logger.debug("evaluating %s through a copy whose header names DLA core %d", path, core)
    return copy


def _exact_arithmetic(path: Path, exact_qdq: bool | None) -> bool:
    """Whether ONNX Runtime computes Q/DQ exactly for ``path``: yes for what simulates TensorRT, no for a
    CPU-target model run for what this CPU gives (unless asked); engines and .pt models: not ONNX Runtime."""
    if path.suffix.lower() != ".onnx":
        return False
    meta = model_metadata(path)
    cpu = meta.get(TARGET_KEY) == TARGET_CPU
    exact = (not cpu) if exact_qdq is None else exact_qdq
    if cpu and not exact:
        warn_if_saturating(meta, path.name, logger)
    return exact


@contextlib.contextmanager
def _quiet_ultralytics() -> Iterator[None]:
    log = logging.getLogger("ultralytics")
    old = log.level
    if logger.getEffectiveLevel() > logging.DEBUG:
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(old)


def evaluate(
    model: str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    imgsz: int = 640,
    batch: int = 1,
    conf: float = CONF,
    iou: float = IOU,
    max_det: int = MAX_DET,
    per_class: bool = False,
    images: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    exact_qdq: bool | None = None,
) -> dict[str, Any]:
    """mAP of ``model`` on ``data`` with ultralytics' validator.

    An ONNX with Q/DQ simulates TensorRT: ONNX Runtime computes its Q/DQ exactly (no fused integer
    kernels, so the same on every CPU). A ``--target cpu`` model runs on this CPU's integer kernels (with a
    warning where they saturate) unless ``exact_qdq`` is True: then it gives the accuracy of CPUs whose
    kernels accumulate in int32 (VNNI, Arm64).

    Returns ``{"model", "data", "map50_95", "map50", "precision", "recall", "images", "instances",
    "seconds", "speed_ms"}`` plus ``"per_class"`` (name -> {map50_95, map50}) when asked.
    """
    path = _check_model(model)
    if imgsz < 32 or batch < 1:
        raise TrtqError(f"imgsz must be >= 32 and batch >= 1 (got imgsz={imgsz}, batch={batch})")
    with tempfile.TemporaryDirectory(prefix="trtq-eval-") as tmp:
        spec = prepare_data(data, Path(tmp), names=_model_names(path), images=images)
        ul = _ultralytics()
        load = engine_for_ultralytics(path, Path(tmp)) if path.suffix.lower() == ".engine" else path
        t0 = time.perf_counter()
        exact = _exact_arithmetic(path, exact_qdq)
        with _quiet_ultralytics(), (exact_qdq_sessions() if exact else contextlib.nullcontext()):
            try:
                yolo = ul.YOLO(str(load), task=_model_task(path))
                task = str(yolo.task or "detect")
                if task not in ("detect", "segment", "pose", "obb"):
                    raise TrtqError(f"{path.name} is a {task!r} model; trtq evaluates detect, segment, pose and obb models")
                _check_task_labels(task, path, spec)
                metrics = yolo.val(
                    data=str(spec.yaml),
                    imgsz=imgsz,
                    batch=batch,
                    conf=conf,
                    iou=iou,
                    max_det=max_det,
                    plots=False,
                    device=device,
                    verbose=False,
                    save_json=False,
                    project=str(Path(tmp) / "runs"),
                    name="val",
                    exist_ok=True,
                )
            except FileNotFoundError as exc:
                raise TrtqError(f"evaluation could not read a file: {exc}") from None
        seconds = time.perf_counter() - t0
    box = metrics.box
    metric = {"segment": "mask", "pose": "pose", "obb": "obb"}.get(task, "box")
    primary = {"mask": getattr(metrics, "seg", None), "pose": getattr(metrics, "pose", None)}.get(metric) or box
    result: dict[str, Any] = {
        "model": str(path),
        "data": spec.source,
        "task": task,
        "metric": metric,  # what map50_95 measures: box, mask, pose (OKS) or obb (rotated boxes)
        "map50_95": float(primary.map),
        "map50": float(primary.map50),
        "precision": float(primary.mp),
        "recall": float(primary.mr),
        "images": spec.images,
        "instances": spec.instances,
        "imgsz": imgsz,
        "batch": batch,
        "seconds": round(seconds, 2),
        "qdq_arithmetic": "exact" if exact else "this CPU's kernels",
        "speed_ms": {k: round(float(v), 2) for k, v in dict(metrics.speed).items()},
    }
    if primary is not box:
        result["box"] = {"map50_95": float(box.map), "map50": float(box.map50)}
    if per_class:
        names = metrics.names
        per: dict[str, dict[str, float]] = {}
        for i, c in enumerate(primary.ap_class_index):
            per[str(names[int(c)])] = {
                "map50_95": float(primary.all_ap[i].mean()),
                "map50": float(primary.all_ap[i, 0]),
            }
        result["per_class"] = per
    return result


def evaluate_many(
    models: Sequence[str | os.PathLike[str]], data: str | os.PathLike[str], **kwargs: Any
) -> list[dict[str, Any]]:
    """Evaluate several models on the same data (one after the other)."""
    return [evaluate(m, data, **kwargs) for m in models]


def compare_table(results: Sequence[dict[str, Any]]) -> str:
    """One table, deltas (in mAP points) against the first model."""
    if not results:
        return ""
    base = results[0]
    rows = [("model", "mAP50-95", "d50-95", "mAP50", "d50", "images")]
    for r in results:
        d1 = (r["map50_95"] - base["map50_95"]) * 100
        d2 = (r["map50"] - base["map50"]) * 100
        same = r is base
        rows.append(
            (
                Path(r["model"]).name,
                f"{r['map50_95']:.4f}",
                "-" if same else f"{d1:+.2f}",
                f"{r['map50']:.4f}",
                "-" if same else f"{d2:+.2f}",
                str(r["images"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("(d = difference against the first model, in mAP points)")
    return "\n".join(lines)


def result_table(result: dict[str, Any]) -> str:
    """Readable summary of one evaluation."""
    metric = result.get("metric", "box")
    what = "" if metric == "box" else f" ({metric})"
    lines = [
        f"model     {result['model']}",
        f"data      {result['data']} ({result['images']} images, {result['instances']} boxes)",
        f"mAP50-95  {result['map50_95']:.4f}{what}",
        f"mAP50     {result['map50']:.4f}{what}",
        f"P / R     {result['precision']:.4f} / {result['recall']:.4f}",
    ]
    if "box" in result:
        lines.append(f"box mAP   {result['box']['map50_95']:.4f} (50-95), {result['box']['map50']:.4f} (50)")

    per = result.get("per_class")
    if per:
        lines.append("per class (mAP50-95, mAP50):")
        width = max(len(k) for k in per)
        for name, v in sorted(per.items(), key=lambda kv: -kv[1]["map50_95"]):
            lines.append(f"  {name.ljust(width)}  {v['map50_95']:.4f}  {v['map50']:.4f}")
    return "\n".join(lines)
