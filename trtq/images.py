"""Calibration and inference images: finding them, decoding them, letterboxing them exactly as ultralytics.

Every INT8 range trtq computes is only as good as the match between the calibration tensors and what the
deployed model sees. This module therefore reproduces, pixel for pixel, what ultralytics 8.4 does when it runs
*prediction* on a fixed-size exported model (``ultralytics/engine/predictor.py``, ``BasePredictor.preprocess``):

1. Decoding: ``ultralytics.utils.patches.imread(path, cv2.IMREAD_COLOR)``. The file bytes are decoded with
   ``cv2.imdecode(..., IMREAD_COLOR)``, which applies the EXIF orientation, expands grayscale to 3 channels,
   drops alpha and converts 16-bit data to 8 bits. TIFFs go through ``cv2.imdecodemulti(IMREAD_UNCHANGED)``
   first (a colour first page is used as is, minus alpha) as ultralytics does, and any remaining 16-bit
   result keeps its high byte (``>> 8``). The result is BGR ``uint8`` HxWx3.
2. Letterbox: ``LetterBox(imgsz, auto=False, scale_fill=False, scaleup=True, center=True, stride=stride,
   padding_value=114, interpolation=cv2.INTER_LINEAR)``. For a fixed input shape (an ONNX model or TensorRT engine)
   ``auto`` is False: the full ``imgsz`` canvas. A model with dynamic height and width gets ``auto=True``
   when the images of a batch share a shape (``BasePredictor.pre_transform``): padding only to the next
   multiple of ``stride``; :func:`letterbox_batch` applies that rule. The scale is ``r = min(h_new / h, w_new / w)``, the resized size is
   ``max(round(w * r), 1) x max(round(h * r), 1)``, the padding is split in two and rounded with the
   ``round(d - 0.1)`` / ``round(d + 0.1)`` rule, and the border is constant 114.
3. Tensor: stack, HWC to CHW, BGR to RGB, ``float32`` divided by 255 (a true division, as
   ``torch.Tensor.div_(255)``), contiguous NCHW.

Ultralytics' *validator* reads images differently (it first resizes the long side to ``imgsz`` with
``INTER_AREA`` when shrinking, then letterboxes with ``scaleup=False``); trtq calibrates for inference, so it
follows the predictor. :meth:`ImageBatcher.preprocessing` records these choices next to every calibration
table so a cache made with other settings is detected.

Only numpy and OpenCV are imported here: the light runtime for Jetson applications uses this module too.
"""

from __future__ import annotations

import glob as _glob
import hashlib
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from trtq.errors import TrtqError

if TYPE_CHECKING:
    from trtq.modelinfo import ModelInfo

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
PAD_VALUE = 114
RECOMMENDED_IMAGES = 500
_GLOB_CHARS = frozenset("*?[")
_YAML_SUFFIXES = (".yaml", ".yml")
_LIST_SUFFIXES = (".txt",)


class ImageReadError(TrtqError):
    """A file could not be decoded as an image (missing, empty, corrupt or not an image)."""


# ---------------------------------------------------------------------------------------------------------------
# Finding images
# ---------------------------------------------------------------------------------------------------------------


def _suffix_list() -> str:
    return ", ".join(f"*{s}" for s in IMAGE_SUFFIXES)


def _is_image_name(path: str | Path) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def _scan_dir(directory: Path) -> list[Path]:
    """Image files under ``directory``, recursively; hidden files and folders (``.name``) are skipped as glob does."""
    found: list[Path] = []
    for root, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(Path(root) / f for f in files if _is_image_name(f) and not f.startswith("."))
    return found


def _from_glob(pattern: str) -> list[Path]:
    out: list[Path] = []
    for match in _glob.glob(os.path.expanduser(pattern), recursive=True):
        p = Path(match)
        if p.is_dir():
            out.extend(_scan_dir(p))
        elif _is_image_name(p):
            out.append(p)
    return out


def _from_list_file(list_file: Path) -> list[Path]:
    """The images a ``.txt`` list names, resolved as ultralytics does (``BaseDataset.get_img_files``): an entry
    starting with ``./`` is relative to the list's folder, any other relative entry to the working directory.
    A listed folder contributes its images. Listed files that do not exist are an error naming them."""
    try:
        text = list_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise TrtqError(f"cannot read image list {list_file}: {exc}") from None
    out: list[Path] = []
    missing: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(os.path.abspath(list_file.parent / line[2:] if line.startswith("./") else os.path.expanduser(line)))
        if p.is_dir():
            out.extend(_scan_dir(p))
        elif _is_image_name(p):
            if not p.exists():
                missing.append(line)
            out.append(p)
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise TrtqError(
            f"{list_file}: {len(missing)} of {len(out)} listed images do not exist ({shown}); as in ultralytics, "
            f"'./' entries are read from the list's folder and other relative entries from the working directory "
            f"({Path.cwd()})"
        )
    return out


def _resolve_split(root: Path, entry: str, *, parent_fallback: bool) -> Path:
    """A ``train:`` entry against the dataset root, as ``check_det_dataset`` does (``../`` retried without it
    for a single entry)."""
    p = Path(os.path.expanduser(entry))
    if p.is_absolute():
        return p
    x = (root / entry).resolve()
    if parent_fallback and not x.exists() and entry.startswith("../"):
        x = (root / entry[3:]).resolve()
    return x


def _dataset_root(yaml_file: Path, root_entry: Any) -> Path:
    """The dataset root of a data yaml, as ultralytics' ``check_det_dataset``: ``path:`` as given (relative to
    the working directory), else in ultralytics' datasets folder; no ``path:``: the yaml's folder. Where neither
    has it, trtq also tries the yaml's folder before giving up."""
    if not root_entry:
        return yaml_file.resolve().parent
    root = Path(os.path.expanduser(str(root_entry)))
    if root.exists() or root.is_absolute():
        return root.resolve() if root.exists() else root
    candidates = [p for p in (_ultralytics_datasets_dir(), yaml_file.resolve().parent) if p is not None]
    return next(((c / root).resolve() for c in candidates if (c / root).exists()), root.resolve())


def _ultralytics_datasets_dir() -> Path | None:
    """ultralytics' ``datasets_dir`` setting, where it is installed (imported only for this)."""
    try:
        from ultralytics.utils import DATASETS_DIR
    except Exception:  # not installed, or its settings cannot be read: no datasets folder to search
        return None
    return Path(DATASETS_DIR)


def _from_data_yaml(yaml_file: Path) -> tuple[list[Path], str]:
    import yaml

    try:
        data = yaml.safe_load(yaml_file.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise TrtqError(f"cannot read data yaml {yaml_file}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not data.get("train"):
        raise TrtqError(
            f"{yaml_file} has no 'train:' entry; pass an ultralytics data yaml with a train split, "
            "or a folder of images"
        )
    root = _dataset_root(yaml_file, data.get("path"))
    train = data["train"]
    single = not isinstance(train, (list, tuple))
    entries = [str(train)] if single else [str(t) for t in train]
    out: list[Path] = []
    searched: list[str] = []
    for entry in entries:
        p = _resolve_split(root, entry, parent_fallback=single)
        searched.append(str(p))
        if p.is_dir():
            out.extend(_scan_dir(p))
        elif p.is_file() and p.suffix.lower() in _LIST_SUFFIXES:
            out.extend(_from_list_file(p))
        elif p.is_file() and _is_image_name(p):
            out.append(p)
        elif not p.exists():
            raise TrtqError(f"{yaml_file}: train split {entry!r} resolves to {p}, which does not exist "
                            f"(dataset root {root}: its 'path:' is read from the working directory, as ultralytics does)")
    return out, f"the train split of {yaml_file} ({', '.join(searched)})"


def _sort_unique(paths: Iterable[Path]) -> list[Path]:
    return sorted({str(p): p for p in paths}.values(), key=lambda p: str(p))


def resolve_image_paths(source: str | os.PathLike[str]) -> list[Path]:
    """List the images of ``source``: a folder (recursive), a glob, a ``.txt`` list of paths or a data yaml.

    Relative paths resolve as in ultralytics. A ``.txt`` list holds one path (file or folder) per line: ``./x``
    is read from the list's folder, any other relative entry from the working directory; blank lines and ``#``
    comments are ignored; a listed file that does not exist is an error. A data yaml contributes its ``train``
    split (a folder, a list of folders or a ``.txt`` list) under its dataset root: ``path:`` as given (relative
    to the working directory), else in ultralytics' datasets folder, else beside the yaml; without ``path:``
    the yaml's folder.
    Only files with a suffix in :data:`IMAGE_SUFFIXES` (any case) are returned, sorted by path.
    """
    text = os.fspath(source)
    p = Path(os.path.expanduser(text))
    what: str
    if p.is_dir():
        found, what = _scan_dir(p), f"{text} (searched recursively for {_suffix_list()})"
    elif p.is_file():
        suffix = p.suffix.lower()
        if suffix in _YAML_SUFFIXES:
            found, where = _from_data_yaml(p)
            what = f"{where} (searched recursively for {_suffix_list()})"
        elif suffix in _LIST_SUFFIXES:
            found, what = _from_list_file(p), f"the paths listed in {text} (accepted: {_suffix_list()})"
        elif _is_image_name(p):
            found, what = [p], text
        else:
            raise TrtqError(
                f"{text} is not an image source: pass a folder of images, a glob, a .txt list of image paths "
                f"or an ultralytics data yaml (images: {_suffix_list()})"
            )
    elif _GLOB_CHARS & set(text):
        found, what = _from_glob(text), f"the glob {text} (accepted: {_suffix_list()})"
    else:
        raise TrtqError(
            f"image source not found: {text}. Pass a folder of images, a glob, a .txt list or a data yaml"
        )
    paths = _sort_unique(found)
    if not paths:
        raise TrtqError(
            f"found no images in {what}. Pass a folder, glob, .txt list or data yaml with at least 1 image"
        )
    return paths


# ---------------------------------------------------------------------------------------------------------------
# Decoding and letterboxing
# ---------------------------------------------------------------------------------------------------------------


def _decode(path: Path) -> np.ndarray:
    """``ultralytics.utils.patches.imread(path, cv2.IMREAD_COLOR)``, raising instead of returning None."""
    try:
        data = np.fromfile(str(path), np.uint8)
    except FileNotFoundError:
        raise ImageReadError(f"cannot read image {path}: file not found") from None
    except (IsADirectoryError, PermissionError, OSError) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc.strerror or exc}") from None
    return _decode_bytes(data, str(path))


def _decode_bytes(data: np.ndarray, path: str) -> np.ndarray:
    """The image encoded in ``data`` (the bytes of ``path``, a file name or URL) as :func:`_decode` reads it."""
    if not data.size:
        raise ImageReadError(f"cannot read image {path}: empty file")
    im: np.ndarray | None = None
    try:
        if str(path).lower().endswith((".tif", ".tiff")):
            ok, frames = cv2.imdecodemulti(data, cv2.IMREAD_UNCHANGED)
            if ok and frames and frames[0].ndim == 3:
                im = frames[0][..., :3]  # colour first page, alpha dropped
        if im is None:
            im = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ImageReadError(
            f"cannot decode image {path}: {str(exc).strip().splitlines()[-1][:120]}"
        ) from None
    if im is None:
        raise ImageReadError(f"cannot decode image {path}: not an image or corrupt ({data.size} bytes)")
    if im.dtype == np.uint16:
        im = (im >> 8).astype(np.uint8)
    if im.ndim == 2:
        im = im[..., None]
    if im.dtype != np.uint8 or im.shape[2] != 3:
        raise ImageReadError(
            f"cannot use image {path}: decoded as {im.dtype} with {im.shape[2]} channels, expected 8-bit colour"
        )
    return np.ascontiguousarray(im)


def is_image_url(source: str | os.PathLike[str]) -> bool:
    """An ``http(s)://`` URL whose path names an image file (ultralytics downloads such a source)."""
    s = str(source).strip()
    if not s.lower().startswith(("http://", "https://")):
        return False
    from urllib.parse import urlparse

    return urlparse(s).path.lower().endswith(IMAGE_SUFFIXES)


URL_TIMEOUT_S = 10.0  # connecting to, and each read of, an image URL
MAX_URL_IMAGE_BYTES = 256 * 1024 * 1024


def load_image_url(url: str, *, timeout: float = URL_TIMEOUT_S) -> np.ndarray:
    """Download the image at ``url`` (into memory, within ``timeout`` per network step) and decode it as
    :func:`load_image` does; :class:`ImageReadError` with the reason on any failure."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http(s) only, checked
            data = response.read(MAX_URL_IMAGE_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise ImageReadError(f"cannot download image {url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise ImageReadError(f"cannot download image {url}: {exc.reason}") from None
    except (OSError, ValueError) as exc:  # timeouts, resets, a malformed URL
        raise ImageReadError(f"cannot download image {url}: {exc or type(exc).__name__}") from None
    if len(data) > MAX_URL_IMAGE_BYTES:
        raise ImageReadError(f"cannot use image {url}: larger than {MAX_URL_IMAGE_BYTES >> 20} MB")
    return _decode_bytes(np.frombuffer(data, np.uint8), url)


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read ``path`` as ultralytics does for prediction: BGR ``uint8`` HxWx3, EXIF orientation applied.

    Raises :class:`ImageReadError` with the reason when the file is missing, empty, corrupt or not an image.
    """
    return _decode(Path(path))


def _as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    values = tuple(int(v) for v in size)
    if len(values) == 1:
        return values[0], values[0]
    if len(values) != 2:
        raise TrtqError(f"image size must be one number or (height, width), got {tuple(size)}")
    return values[0], values[1]


def _letterbox_geometry(
    shape: Sequence[int], h_new: int, w_new: int, *, stride: int, auto: bool, scaleup: bool
) -> tuple[float, tuple[int, int], tuple[float, float]]:
    """Ultralytics' LetterBox arithmetic: the scale, the resized (w, h) and the total padding (dw, dh)."""
    r = min(h_new / shape[0], w_new / shape[1])
    if not scaleup:
        r = min(r, 1.0)
    new_unpad = max(round(shape[1] * r), 1), max(round(shape[0] * r), 1)
    dw: float = w_new - new_unpad[0]
    dh: float = h_new - new_unpad[1]
    if auto:
        dw, dh = float(np.mod(dw, stride)), float(np.mod(dh, stride))
    return r, new_unpad, (dw, dh)


def _pads(dw: float, dh: float, *, center: bool = True) -> tuple[int, int, int, int]:
    """Ultralytics' border (top, bottom, left, right) for a total padding of ``dw`` x ``dh``."""
    if center:
        dw, dh = dw / 2, dh / 2
    top, left = (round(dh - 0.1), round(dw - 0.1)) if center else (0, 0)
    return top, round(dh + 0.1), left, round(dw + 0.1)


def letterbox_hw(
    image_hw: Sequence[int], new_shape: int | Sequence[int] = (640, 640), *, stride: int = 32, auto: bool = False
) -> tuple[int, int]:
    """The (height, width) :func:`letterbox` gives an image of ``image_hw``, without touching pixels."""
    h_new, w_new = _as_hw(new_shape)
    _, (w, h), (dw, dh) = _letterbox_geometry(image_hw, h_new, w_new, stride=stride, auto=auto, scaleup=True)
    top, bottom, left, right = _pads(dw, dh)
    return h + top + bottom, w + left + right


def letterbox(
    img: np.ndarray,
    new_shape: int | tuple[int, int] = (640, 640),
    *,
    stride: int = 32,
    auto: bool = False,
    scaleup: bool = True,
    center: bool = True,
    pad_value: int = PAD_VALUE,
) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Resize and pad ``img`` exactly as ``ultralytics.data.augment.LetterBox`` does.

    Returns the padded image, the scale ratio ``r`` and ``(dw, dh)``: the padding as ultralytics computes it
    (halved when ``center``), so a box maps back to the original image with ``(x - dw) / r``, ``(y - dh) / r``.
    """
    h_new, w_new = _as_hw(new_shape)
    shape = img.shape[:2]
    r, new_unpad, (dw, dh) = _letterbox_geometry(shape, h_new, w_new, stride=stride, auto=auto, scaleup=scaleup)
    top, bottom, left, right = _pads(dw, dh, center=center)
    if center:
        dw /= 2
        dh /= 2
    if shape[::-1] != new_unpad:
        img = cv2.resize(img, new_unpad, interpolation=cv2.INTER_LINEAR)
    if img.ndim == 2:
        img = img[..., None]
    h, w, c = img.shape
    if c == 3:
        img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad_value,) * 3)
    else:
        padded = np.full((h + top + bottom, w + left + right, c), pad_value, dtype=img.dtype)
        padded[top : top + h, left : left + w] = img
        img = padded
    return img, float(r), (float(dw), float(dh))


def letterbox_into(
    dst: np.ndarray,
    img: np.ndarray,
    new_shape: int | Sequence[int] | None = None,
    *,
    stride: int = 32,
    auto: bool = False,
    swap_rb: bool = True,
) -> None:
    """Letterbox ``img`` (HxWx3 uint8) straight into ``dst`` (3xHxW float): the same numbers as
    ``to_tensor([letterbox(img, new_shape, stride=stride, auto=auto)])[0]`` (``swap_rb``: BGR to RGB; /255;
    ``new_shape`` defaults to ``dst``'s size, and the letterboxed size must be ``dst``'s), without the padded
    uint8 canvas: the frame is divided into its window of ``dst`` and the border is filled with the pad
    value, so a wide frame on a square input costs only its own pixels."""
    h_dst, w_dst = int(dst.shape[1]), int(dst.shape[2])
    h_new, w_new = _as_hw(new_shape) if new_shape is not None else (h_dst, w_dst)
    _, new_unpad, (dw, dh) = _letterbox_geometry(img.shape[:2], h_new, w_new, stride=stride, auto=auto, scaleup=True)
    top, bottom, left, right = _pads(dw, dh)
    w, h = new_unpad
    if (h + top + bottom, w + left + right) != (h_dst, w_dst):
        raise TrtqError(
            f"a {img.shape[1]}x{img.shape[0]} image letterboxes to another size than the input's {w_dst}x{h_dst}"
        )
    if img.shape[1::-1] != new_unpad:
        img = cv2.resize(img, new_unpad, interpolation=cv2.INTER_LINEAR)
    pad = np.divide(np.full(1, PAD_VALUE, np.uint8), 255.0, out=np.empty(1, dst.dtype), casting="unsafe")[0]
    dst[:, :top] = pad
    dst[:, top + h :] = pad
    dst[:, top : top + h, :left] = pad
    dst[:, top : top + h, left + w :] = pad
    chw = img.transpose(2, 0, 1)
    np.divide(chw[::-1] if swap_rb else chw, 255.0, out=dst[:, top : top + h, left : left + w], casting="unsafe")


def to_tensor(images: Sequence[np.ndarray]) -> np.ndarray:
    """Stack letterboxed BGR ``uint8`` HxWx3 images into a contiguous ``float32`` NCHW RGB tensor in [0, 1]."""
    if len(images) == 0:
        raise ValueError("to_tensor needs at least one image")
    shape = images[0].shape
    if any(im.shape != shape for im in images):
        raise ValueError(f"to_tensor needs images of one shape, got {sorted({im.shape for im in images})}")
    if len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"to_tensor needs HxWx3 images, got {shape}")
    n, h, w = len(images), shape[0], shape[1]
    out = np.empty((n, 3, h, w), dtype=np.float32)
    for i, im in enumerate(images):
        out[i] = im.transpose(2, 0, 1)[::-1]  # HWC BGR -> CHW RGB, uint8 -> float32 (exact)
    out /= np.float32(255.0)  # true division, as torch's div_(255)
    return out


def letterbox_batch(
    images: Sequence[np.ndarray], imgsz: int | tuple[int, int] = (640, 640), *, stride: int = 32, auto: bool = False
) -> list[np.ndarray]:
    """Letterbox one inference batch as ultralytics' predictor does (``BasePredictor.pre_transform``).

    ``auto`` is for a model whose input height and width are dynamic (ultralytics: ``model.dynamic``): each
    image is padded only up to the next multiple of ``stride`` (``LetterBox(auto=True)``), provided every
    image of the batch has the same shape; otherwise, and for fixed-size models, to the full ``imgsz`` canvas.
    """
    same_shapes = len({im.shape for im in images}) == 1
    return [letterbox(im, _as_hw(imgsz), stride=stride, auto=auto and same_shapes)[0] for im in images]


def dynamic_spatial(shape: Sequence[int | None]) -> bool:
    """An NCHW input whose height and width are dynamic: ultralytics' predictor pads it to the stride only."""
    return len(shape) == 4 and (shape[2] is None or shape[3] is None)


def preprocess(
    images: Sequence[np.ndarray], imgsz: int | tuple[int, int] = (640, 640), *, stride: int = 32, auto: bool = False
) -> np.ndarray:
    """Letterbox BGR images to ``imgsz`` and return the model input tensor (ultralytics' predictor path;
    ``auto``: a dynamic-size model, see :func:`letterbox_batch`)."""
    return to_tensor(letterbox_batch(images, imgsz, stride=stride, auto=auto))


# ---------------------------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------------------------


class ImageBatcher:
    """Iterable of ``{input_name: float32 NCHW}`` batches for calibration and evaluation.

    Files are sorted, shuffled with ``numpy.random.default_rng(seed).permutation`` and the first ``num_images``
    are used. Images are decoded lazily, one batch at a time, so memory does not grow with the number of images;
    iterating again yields identical batches. Unreadable files are skipped (one warning each, recorded in
    :attr:`skipped`) and the batch is filled from the next file. With ``drop_last`` a final partial batch is
    dropped (a static-batch model or TensorRT calibration needs full batches).
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
        *,
        input_name: str = "images",
        imgsz: int | tuple[int, int] = (640, 640),
        stride: int = 32,
        batch: int = 1,
        num_images: int | None = None,
        seed: int = 0,
        drop_last: bool = False,
        auto: bool = False,
    ) -> None:
        if isinstance(paths, (str, os.PathLike)):
            try:
                files = resolve_image_paths(paths)
            except TrtqError as exc:
                raise TrtqError(
                    f"{exc} (for calibration: --calib DIR; {RECOMMENDED_IMAGES}+ images recommended)",
                    exit_code=exc.exit_code,
                ) from None
        else:
            listed = [Path(p) for p in paths]
            files = _sort_unique(f for p in listed for f in (_scan_dir(p) if p.is_dir() else [p]))
        if not files:
            raise TrtqError(
                f"Calibration got an empty list of images (accepted: {_suffix_list()}). "
                f"Pass --calib DIR with at least 1 image; {RECOMMENDED_IMAGES}+ recommended."
            )
        if isinstance(batch, bool) or int(batch) < 1:
            raise TrtqError(f"batch must be at least 1, got {batch}")
        if num_images is not None and int(num_images) < 1:
            raise TrtqError(
                f"num_images must be at least 1, got {num_images} (omit it to use all {len(files)} images)"
            )
        h, w = _as_hw(imgsz)
        if h < 1 or w < 1:
            raise TrtqError(f"image size must be positive, got {(h, w)}")
        self.input_name: str = input_name
        self.imgsz: tuple[int, int] = (h, w)
        self.stride: int = int(stride)
        self.batch: int = int(batch)
        self.seed: int = int(seed)
        self.drop_last: bool = bool(drop_last)
        self.auto: bool = bool(auto)  # pad each batch as ultralytics' predictor pads a dynamic-size model
        self.num_found: int = len(files)
        order = np.random.default_rng(self.seed).permutation(len(files))
        count = len(files) if num_images is None else min(int(num_images), len(files))
        self.selected: list[Path] = [files[int(i)] for i in order[:count]]
        self.skipped: list[tuple[Path, str]] = []
        self.num_used: int = 0
        self._warned: set[str] = set()
        if num_images is not None and int(num_images) > len(files):
            logger.info(
                "asked for %d images, only %d found; using all %d", num_images, len(files), len(files)
            )
        if self.drop_last and len(self.selected) < self.batch:
            raise TrtqError(
                f"{len(self.selected)} image(s) selected but batch is {self.batch} and partial batches are dropped; "
                f"pass at least {self.batch} images or a smaller batch"
            )
        if len(self.selected) < RECOMMENDED_IMAGES:
            logger.warning(
                "only %d calibration images; %d+ recommended for stable INT8 ranges",
                len(self.selected),
                RECOMMENDED_IMAGES,
            )

    @classmethod
    def from_model(
        cls,
        source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        info: ModelInfo,
        *,
        batch: int = 1,
        num_images: int | None = None,
        seed: int = 0,
        drop_last: bool | None = None,
        predictor_padding: bool = False,
    ) -> ImageBatcher:
        """A batcher shaped for ``info``'s image input.

        A static batch dimension fixes ``batch`` (another value is rejected); a dynamic one accepts any.
        Static H/W set the image size; dynamic H/W use the ultralytics metadata ``imgsz`` or 640.
        ``drop_last=None`` drops a final partial batch for a static batch above 1 and keeps it otherwise.
        ``predictor_padding``: pad as ultralytics' predictor pads this model (for dynamic H/W, only to the next
        stride multiple: :func:`letterbox_batch`); else always to the full canvas (a fixed-size engine's input).
        """
        spec = info.input
        shape = spec.shape
        if len(shape) != 4 or shape[1] not in (3, None):
            raise TrtqError(
                f"{info.path}: input {spec.name!r} has shape {list(shape)}; expected an NCHW 3-channel image tensor"
            )
        static_batch = shape[0]
        if static_batch is not None and batch != static_batch:
            raise TrtqError(
                f"{info.path} has a static batch of {static_batch} (input {spec.name!r} {_fmt_shape(shape)}) "
                f"but batch={batch} was requested; use batch={static_batch}, or export with --dynamic "
                f"(or --batch {batch}) to use batch {batch}"
            )
        if drop_last is None:
            drop_last = static_batch is not None and static_batch > 1
        return cls(
            source,
            input_name=spec.name,
            imgsz=info.imgsz,
            stride=info.stride,
            batch=batch,
            num_images=num_images,
            seed=seed,
            drop_last=drop_last,
            auto=predictor_padding and dynamic_spatial(shape),
        )

    def __len__(self) -> int:
        """Batches one iteration yields (exact once an iteration has found the unreadable files)."""
        usable = len(self.selected) - len({str(p) for p, _ in self.skipped})
        return usable // self.batch if self.drop_last else math.ceil(usable / self.batch)

    def _images(self) -> Iterator[tuple[Path, np.ndarray]]:
        for path in self.selected:
            try:
                img = load_image(path)
            except ImageReadError as exc:
                reason = str(exc)
                self.skipped.append((path, reason))
                key = str(path)
                if key not in self._warned:
                    self._warned.add(key)
                    logger.warning("skipping %s", reason)
                continue
            yield path, img

    def _tensor(self, images: list[np.ndarray]) -> np.ndarray:
        return to_tensor(letterbox_batch(images, self.imgsz, stride=self.stride, auto=self.auto))

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.skipped = []
        self.num_used = 0
        pending: list[np.ndarray] = []
        for _path, img in self._images():
            pending.append(img)
            if len(pending) == self.batch:
                self.num_used += len(pending)
                yield {self.input_name: self._tensor(pending)}
                pending = []
        if pending and not self.drop_last:
            self.num_used += len(pending)
            yield {self.input_name: self._tensor(pending)}
        elif pending:
            logger.info("dropped a final partial batch of %d image(s) (batch %d)", len(pending), self.batch)
        if self.num_used == 0:
            n_skip = len(self.skipped)
            detail = f"{n_skip} of {len(self.selected)} selected image(s) could not be read"
            if n_skip < len(self.selected):
                detail += (
                    f" and the remaining {len(self.selected) - n_skip} do not fill one batch of {self.batch}"
                )
            first = f" (first: {self.skipped[0][1]})" if self.skipped else ""
            raise TrtqError(
                f"no usable calibration images: {detail}{first}. Pass --calib DIR with readable images"
            )

    def preprocessing(self) -> dict[str, Any]:
        """The settings that turn a file into an input tensor; stored with calibration tables."""
        return {
            "imgsz": [self.imgsz[0], self.imgsz[1]],
            "stride": self.stride,
            "pad_value": PAD_VALUE,
            "auto": self.auto,
            "scaleup": True,
            "center": True,
            "interpolation": "INTER_LINEAR",
            "color": "RGB",
            "scale": 1 / 255,
            "layout": "NCHW",
            "batch": self.batch,
        }

    def images_sha256(self) -> str:
        """SHA-256 of the ordered selected file list with sizes: a changed image set gives another hash."""
        h = hashlib.sha256()
        for p in self.selected:
            try:
                size = p.stat().st_size
            except OSError:
                size = -1
            h.update(f"{p.resolve()}\t{size}\n".encode())
        return h.hexdigest()


def _fmt_shape(shape: Sequence[int | None]) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"
