"""trtq.images against ultralytics' own reading, letterboxing and predictor preprocessing."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import make_tiny_conv_onnx
from trtq.errors import TrtqError
from trtq.images import (
    IMAGE_SUFFIXES,
    ImageBatcher,
    ImageReadError,
    letterbox,
    letterbox_into,
    load_image,
    preprocess,
    resolve_image_paths,
    to_tensor,
)
from trtq.modelinfo import ModelInfo, TensorSpec, read_model_info

SHAPES = [(640, 640), (320, 320), (384, 640)]


def _rand_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # smooth content plus noise so interpolation differences would show
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // max(w, 1)), (yy * 255 // max(h, 1)), ((xx + yy) * 7) % 256], axis=2)
    return np.clip(base + rng.integers(-30, 30, (h, w, 3)), 0, 255).astype(np.uint8)


def _write_images(
    folder: Path, n: int, *, size: tuple[int, int] = (48, 64), suffix: str = ".png"
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"img_{i:03d}{suffix}"
        assert cv2.imwrite(str(p), _rand_image(size[0] + i, size[1] + 2 * i, seed=i))
        out.append(p)
    return out


@pytest.fixture
def real_images(calib_dir: Path) -> list[Path]:
    files = sorted(calib_dir.glob("*.jpg"))
    assert len(files) >= 8
    return files[:: max(1, len(files) // 6)][:6]


# --------------------------------------------------------------------------------------------- letterbox parity


def _ultra_letterbox(img: np.ndarray, shape: tuple[int, int], **kw: object) -> tuple[np.ndarray, dict]:
    from ultralytics.data.augment import LetterBox

    lb = LetterBox(shape, **kw)  # type: ignore[arg-type]
    params = lb.get_params({"img": img})
    return lb(image=img.copy()), params


@pytest.mark.parametrize("shape", SHAPES)
def test_letterbox_matches_ultralytics_on_real_images(
    real_images: list[Path], shape: tuple[int, int]
) -> None:
    from ultralytics.utils.patches import imread

    for path in real_images:
        img = imread(str(path))
        expected, params = _ultra_letterbox(img, shape)
        got, r, (dw, dh) = letterbox(img, shape)
        assert got.shape == (*shape, 3)
        assert np.array_equal(got, expected), path
        assert r == params["ratio"][0]
        assert (round(dh - 0.1), round(dw - 0.1)) == (params["top"], params["left"])


SYNTHETIC = [
    (1000, 60),
    (60, 1000),
    (3, 5),
    (1, 3000),
    (1280, 960),
    (640, 640),
    (641, 639),
    (480, 640),
    (17, 23),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("hw", SYNTHETIC)
def test_letterbox_matches_ultralytics_on_odd_sizes(hw: tuple[int, int], shape: tuple[int, int]) -> None:
    img = _rand_image(*hw, seed=hw[0] * 7 + hw[1])
    expected, _ = _ultra_letterbox(img, shape)
    got, _, _ = letterbox(img, shape)
    assert np.array_equal(got, expected)


@pytest.mark.parametrize(
    "kw",
    [
        {"auto": True},
        {"scaleup": False},
        {"center": False},
        {"auto": True, "stride": 64},
        {"padding_value": 0},
    ],
)
@pytest.mark.parametrize("hw", [(300, 500), (700, 421), (33, 1000)])
def test_letterbox_options_match_ultralytics(hw: tuple[int, int], kw: dict) -> None:
    img = _rand_image(*hw, seed=1)
    expected, params = _ultra_letterbox(img, (384, 640), **kw)
    ours = {("pad_value" if k == "padding_value" else k): v for k, v in kw.items()}
    got, r, _ = letterbox(img, (384, 640), **ours)
    assert np.array_equal(got, expected)
    assert r == params["ratio"][0]


def test_letterbox_exact_640_is_untouched() -> None:
    img = _rand_image(640, 640)
    got, r, pad = letterbox(img, 640)
    assert np.array_equal(got, img) and r == 1.0 and pad == (0.0, 0.0)


def test_letterbox_pads_with_114() -> None:
    got, r, (dw, dh) = letterbox(np.zeros((320, 640, 3), np.uint8), (640, 640))
    assert r == 1.0 and (dw, dh) == (0.0, 160.0)
    assert (got[:160] == 114).all() and (got[480:] == 114).all() and (got[160:480] == 0).all()


# --------------------------------------------------------------------------------------------- tensor parity


def _predictor(tmp_path: Path, imgsz: tuple[int, int]):
    from types import SimpleNamespace

    import torch
    from ultralytics.engine.predictor import BasePredictor

    p = BasePredictor(overrides={"project": str(tmp_path / "runs"), "imgsz": list(imgsz)})
    p.model = SimpleNamespace(
        format="onnx", stride=32, fp16=False, dynamic=False
    )  # a fixed-size exported model
    p.imgsz = imgsz
    p.device = torch.device("cpu")
    return p


def _ultra_read(paths: list[Path]) -> list[np.ndarray]:
    from ultralytics.data.loaders import LoadImagesAndVideos

    out = []
    for p in paths:
        _, imgs, _ = next(iter(LoadImagesAndVideos(str(p))))
        out.append(imgs[0])
    return out


@pytest.mark.parametrize("shape", [(640, 640), (384, 640)])
def test_tensor_matches_ultralytics_predictor(
    tmp_path: Path, real_images: list[Path], shape: tuple[int, int]
) -> None:
    predictor = _predictor(tmp_path, shape)
    paths = real_images[:4]
    expected = predictor.preprocess(_ultra_read(paths)).numpy()
    got = preprocess([load_image(p) for p in paths], shape)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    assert got.shape == (4, 3, *shape)
    assert np.array_equal(got, expected)
    # one image (ultralytics takes another code path for a single image)
    assert np.array_equal(
        preprocess([load_image(paths[0])], shape), predictor.preprocess(_ultra_read(paths[:1])).numpy()
    )


def test_batcher_batches_match_ultralytics_predictor(tmp_path: Path, calib_dir: Path) -> None:
    predictor = _predictor(tmp_path, (640, 640))
    batcher = ImageBatcher(calib_dir, batch=3, num_images=6, seed=3)
    batches = list(batcher)
    assert len(batches) == 2
    for i, b in enumerate(batches):
        expected = predictor.preprocess(_ultra_read(batcher.selected[3 * i : 3 * i + 3])).numpy()
        assert np.array_equal(b["images"], expected)


def test_to_tensor_layout() -> None:
    img = np.zeros((2, 3, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 20, 255  # B, G, R
    t = to_tensor([img, img])
    assert t.shape == (2, 3, 2, 3) and t.dtype == np.float32
    assert t[0, 0, 0, 0] == np.float32(255) / np.float32(255)  # R first
    assert t[1, 1, 1, 2] == np.float32(20) / np.float32(255)
    assert t[0, 2, 0, 0] == np.float32(10) / np.float32(255)
    with pytest.raises(ValueError):
        to_tensor([img, np.zeros((3, 3, 3), np.uint8)])


@pytest.mark.parametrize(
    ("frame_hw", "dst_hw", "auto"),
    [((272, 640), (640, 640), False), ((480, 640), (640, 640), False), ((720, 1280), (384, 640), False),
     ((100, 37), (640, 640), False), ((1080, 1920), (384, 640), True), ((333, 517), (416, 640), True),
     ((640, 640), (640, 640), False)],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_letterbox_into_gives_the_letterboxed_tensor_exactly(
    frame_hw: tuple[int, int], dst_hw: tuple[int, int], auto: bool, dtype: type
) -> None:
    img = np.random.default_rng(sum(frame_hw)).integers(0, 256, (*frame_hw, 3), dtype=np.uint8)
    lb = letterbox(img, (640, 640) if auto else dst_hw, auto=auto)[0]
    assert lb.shape[:2] == dst_hw
    expected = to_tensor([lb])[0].astype(dtype)  # ultralytics' predictor: float32 / 255
    dst = np.full((3, *dst_hw), np.nan, dtype)
    shape = (640, 640) if auto else None  # a dynamic model: its size, padded only to the stride
    letterbox_into(dst, img, shape, auto=auto)
    assert np.array_equal(dst, expected)
    letterbox_into(dst, img, shape, auto=auto, swap_rb=False)
    assert np.array_equal(dst, expected[::-1])
    with pytest.raises(TrtqError, match="letterboxes to another size"):
        letterbox_into(np.empty((3, dst_hw[0] + 32, dst_hw[1]), dtype), img, shape or dst_hw, auto=auto)


# --------------------------------------------------------------------------------------------- decoding


def _ultra_imread(path: Path) -> np.ndarray:
    from ultralytics.utils.patches import imread

    im = imread(str(path))
    assert im is not None
    return im


def test_decode_gray_rgba_16bit(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (21, 33)).astype(np.uint8)
    rgba = rng.integers(0, 256, (21, 33, 4)).astype(np.uint8)
    g16 = rng.integers(0, 65536, (21, 33)).astype(np.uint16)
    c16 = rng.integers(0, 65536, (21, 33, 3)).astype(np.uint16)
    cases: dict[str, np.ndarray] = {}
    for suffix in (".png", ".bmp", ".webp"):
        Image.fromarray(gray).save(
            tmp_path / f"gray{suffix}", **({"lossless": True} if suffix == ".webp" else {})
        )
        cases[f"gray{suffix}"] = np.repeat(gray[..., None], 3, axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    cases["rgba.png"] = rgba[..., 2::-1]  # RGB(A) file -> BGR, alpha dropped
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.webp", lossless=True, exact=True)
    cases["rgba.webp"] = rgba[..., 2::-1]
    assert cv2.imwrite(str(tmp_path / "g16.png"), g16)
    cases["g16.png"] = np.repeat((g16 >> 8).astype(np.uint8)[..., None], 3, axis=2)
    assert cv2.imwrite(str(tmp_path / "c16.png"), c16)
    cases["c16.png"] = (c16 >> 8).astype(np.uint8)
    assert cv2.imwrite(str(tmp_path / "c16.tif"), c16)
    cases["c16.tif"] = (c16 >> 8).astype(np.uint8)
    for name, expected in cases.items():
        got = load_image(tmp_path / name)
        assert got.dtype == np.uint8 and got.shape == (21, 33, 3), name
        assert np.array_equal(got, expected), name
        assert np.array_equal(got, _ultra_imread(tmp_path / name)), name


def test_decode_applies_exif_orientation(tmp_path: Path) -> None:
    from PIL import Image, ImageOps

    rgb = np.full((40, 60, 3), 255, np.uint8)
    rgb[:10, :20] = (255, 0, 0)  # red block at the top-left of the stored pixels
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    im.save(tmp_path / "rot.jpg", exif=exif, quality=100)
    got = load_image(tmp_path / "rot.jpg")
    assert got.shape == (60, 40, 3)  # rotated
    # after a clockwise turn the block sits at the top-right: 20 rows x 10 columns, red (BGR: high R)
    block = got[2:18, 32:38].astype(int)
    assert (block[..., 2] > 200).all() and (block[..., 0] < 60).all()
    assert np.array_equal(got, _ultra_imread(tmp_path / "rot.jpg"))
    pil = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "rot.jpg")))[..., ::-1]
    assert pil.shape == got.shape and np.abs(pil.astype(int) - got).max() <= 3


def test_decode_real_jpeg_matches_ultralytics(real_images: list[Path]) -> None:
    for p in real_images[:3]:
        assert np.array_equal(load_image(p), _ultra_imread(p))


def test_decode_errors_name_the_reason(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image\n")
    (tmp_path / "noise.png").write_bytes(
        np.random.default_rng(0).integers(0, 256, 4096).astype(np.uint8).tobytes()
    )
    with pytest.raises(ImageReadError, match="file not found"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageReadError, match="empty file"):
        load_image(tmp_path / "empty.png")
    for name in ("text.jpg", "noise.png"):
        with pytest.raises(ImageReadError, match="not an image or corrupt"):
            load_image(tmp_path / name)
    assert issubclass(ImageReadError, TrtqError)


# --------------------------------------------------------------------------------------------- sources


def test_directory_is_recursive_sorted_and_case_insensitive(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    a = _write_images(root / "b_sub", 2)
    b = _write_images(root, 2, suffix=".jpg")
    (root / "b_sub" / "deeper").mkdir()
    upper = root / "b_sub" / "deeper" / "X.PNG"
    assert cv2.imwrite(str(upper.with_suffix(".png")), _rand_image(8, 8))
    upper.with_suffix(".png").rename(upper)
    (root / "notes.txt").write_text("hi")
    (root / "labels.json").write_text("{}")
    (root / "._img_000.jpg").write_bytes(b"\x00\x05\x16\x07")  # macOS AppleDouble file, hidden like glob does
    _write_images(root / ".cache", 1)
    found = resolve_image_paths(root)
    assert found == sorted([*a, *b, upper], key=str)
    assert {p.suffix.lower() for p in found} <= set(IMAGE_SUFFIXES)


def test_glob_source(tmp_path: Path) -> None:
    _write_images(tmp_path / "x", 3)
    jpgs = _write_images(tmp_path / "y", 2, suffix=".jpg")
    assert resolve_image_paths(str(tmp_path / "*" / "*.jpg")) == jpgs
    assert len(resolve_image_paths(str(tmp_path / "**" / "*.png"))) == 3


def test_txt_list_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    imgs = _write_images(tmp_path / "data" / "images", 3)
    lst = tmp_path / "data" / "list.txt"
    # a bare relative entry is read from the working directory, a './' one from the list's folder
    monkeypatch.chdir(tmp_path)
    lst.write_text(
        f"# calibration set\n\ndata/images/{imgs[2].name}\n  ./images/{imgs[0].name}  \n{imgs[1]}\nreadme.md\n"
    )
    assert resolve_image_paths(lst) == sorted(imgs, key=str)
    with lst.open("a") as fh:
        fh.write("images/missing.png\n")  # bare: data/images/... exists, but ./images/missing.png does not
    with pytest.raises(TrtqError, match=r"1 of 4 listed images do not exist \(images/missing.png\)"):
        resolve_image_paths(lst)


def test_data_yaml_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = tmp_path / "ds"
    train = _write_images(ds / "images" / "train", 3)
    extra = _write_images(ds / "images" / "extra", 2)
    _write_images(ds / "images" / "val", 4)
    (ds / "plain.yaml").write_text("train: images/train\nval: images/val\nnames: {0: a}\n")
    assert resolve_image_paths(ds / "plain.yaml") == train
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    monkeypatch.chdir(tmp_path)  # 'path: ds' is read from the working directory
    (cfg / "rel.yaml").write_text("path: ds\ntrain: [images/train, images/extra]\nval: images/val\n")
    assert resolve_image_paths(cfg / "rel.yaml") == sorted([*train, *extra], key=str)
    (cfg / "abs.yaml").write_text(f"path: {ds}\ntrain: images/extra\nval: images/val\n")
    assert resolve_image_paths(cfg / "abs.yaml") == extra
    (ds / "train.txt").write_text(f"./images/train/{train[0].name}\n")
    (ds / "txt.yaml").write_text("train: train.txt\nval: images/val\n")
    assert resolve_image_paths(ds / "txt.yaml") == [train[0]]
    (ds / "bad.yaml").write_text("val: images/val\n")
    with pytest.raises(TrtqError, match="train"):
        resolve_image_paths(ds / "bad.yaml")
    (ds / "gone.yaml").write_text("train: images/nope\n")
    with pytest.raises(TrtqError, match="does not exist"):
        resolve_image_paths(ds / "gone.yaml")


def test_shared_data_yaml_uses_train_split(val_yaml: Path, calib_dir: Path) -> None:
    assert resolve_image_paths(val_yaml) == sorted(calib_dir.glob("*.jpg"), key=str)


def test_no_images_error_names_what_was_searched(tmp_path: Path) -> None:
    empty = tmp_path / "images"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(TrtqError) as info:
        resolve_image_paths(empty)
    msg = str(info.value)
    assert str(empty) in msg and "recursively" in msg
    assert all(f"*{s}" in msg for s in IMAGE_SUFFIXES)
    assert "no images" in msg and "at least 1 image" in msg
    assert "calib" not in msg.lower()  # neutral: predict and eval resolve sources too
    with pytest.raises(TrtqError) as calib_info:  # the batcher feeds calibration: it adds the hint
        ImageBatcher(empty)
    calib_msg = str(calib_info.value)
    assert str(empty) in calib_msg and "--calib DIR" in calib_msg and "500+ images recommended" in calib_msg
    with pytest.raises(TrtqError, match="not found"):
        resolve_image_paths(tmp_path / "nope")
    with pytest.raises(TrtqError, match=r"the glob .*\*\.jpg"):
        resolve_image_paths(str(tmp_path / "*.jpg"))


# --------------------------------------------------------------------------------------------- batching


def test_order_is_sorted_then_seeded_permutation(tmp_path: Path) -> None:
    files = _write_images(tmp_path, 12)
    shuffled = list(reversed(files))
    b = ImageBatcher(shuffled, imgsz=64, seed=7)
    perm = np.random.default_rng(7).permutation(12)
    assert b.selected == [sorted(files, key=str)[i] for i in perm]
    assert ImageBatcher(files, imgsz=64, seed=7).selected == b.selected
    assert ImageBatcher(files, imgsz=64, seed=8).selected != b.selected
    sub = ImageBatcher(files, imgsz=64, seed=7, num_images=5)
    assert sub.selected == b.selected[:5]
    assert len(ImageBatcher(files, imgsz=64, num_images=100).selected) == 12
    assert ImageBatcher([tmp_path], imgsz=64, seed=7).selected == b.selected  # folders in a list are expanded
    assert ImageBatcher(str(tmp_path), imgsz=64, seed=7).selected == b.selected  # a source string is resolved
    for bad in (0, -1):
        with pytest.raises(TrtqError, match="num_images"):
            ImageBatcher(files, num_images=bad)
    with pytest.raises(TrtqError, match="batch"):
        ImageBatcher(files, batch=0)


def test_batches_group_and_drop_last(tmp_path: Path) -> None:
    files = _write_images(tmp_path, 10)
    keep = ImageBatcher(files, imgsz=(32, 48), batch=4)
    shapes = [b["images"].shape for b in keep]
    assert (
        shapes == [(4, 3, 32, 48), (4, 3, 32, 48), (2, 3, 32, 48)] and len(keep) == 3 and keep.num_used == 10
    )
    drop = ImageBatcher(files, imgsz=(32, 48), batch=4, drop_last=True, input_name="x")
    out = list(drop)
    assert [b["x"].shape[0] for b in out] == [4, 4] and len(drop) == 2 and drop.num_used == 8
    # each batch is the letterboxed tensor of the next files in the shuffled order
    expected = preprocess([load_image(p) for p in keep.selected[4:8]], (32, 48))
    assert np.array_equal(out[1]["x"], expected)
    with pytest.raises(TrtqError, match="batch is 16"):
        ImageBatcher(files, batch=16, drop_last=True)


def test_iterating_twice_is_identical(tmp_path: Path) -> None:
    b = ImageBatcher(_write_images(tmp_path, 5), imgsz=64, batch=2, seed=1)
    first = [x["images"] for x in b]
    second = [x["images"] for x in b]
    assert len(first) == len(second) == 3
    assert all(np.array_equal(a, c) for a, c in zip(first, second, strict=True))


def test_decoding_is_lazy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trtq.images as images

    calls: list[Path] = []
    real = images.load_image

    def counting(path):  # type: ignore[no-untyped-def]
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(images, "load_image", counting)
    it = iter(ImageBatcher(_write_images(tmp_path, 9), imgsz=32, batch=2))
    assert calls == []
    next(it)
    assert len(calls) == 2
    next(it)
    assert len(calls) == 4


def test_unreadable_files_are_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = _write_images(tmp_path, 5)
    bad = [tmp_path / "corrupt.jpg", tmp_path / "empty.png", tmp_path / "text.webp"]
    bad[0].write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 4)
    bad[1].write_bytes(b"")
    bad[2].write_text("hello")
    caplog.set_level(logging.WARNING, logger="trtq.images")
    b = ImageBatcher(tmp_path, imgsz=32, batch=2)
    assert len(b.selected) == 8
    out = list(b)
    assert [x["images"].shape[0] for x in out] == [2, 2, 1]  # batches filled from the next readable file
    assert b.num_used == 5 and len(b) == 3
    assert sorted(p.name for p, _ in b.skipped) == sorted(p.name for p in bad)
    assert all(reason for _, reason in b.skipped)
    skip_lines = [r for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skip_lines) == 3 and all(r.levelno == logging.WARNING for r in skip_lines)
    caplog.clear()
    assert len(list(b)) == 3 and len(b.skipped) == 3  # counted per iteration, not accumulated
    assert not [r for r in caplog.records if "skipping" in r.getMessage()]  # warned once per file
    used = [p for p in b.selected if p not in {q for q, _ in b.skipped}]
    assert sorted(used) == sorted(good)


def test_zero_usable_images_raises(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"bad{i}.png").write_text("nope")
    b = ImageBatcher(tmp_path, imgsz=32)
    with pytest.raises(TrtqError, match="no usable calibration images: 3 of 3"):
        list(b)


def test_few_images_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="trtq.images")
    ImageBatcher(_write_images(tmp_path, 4), imgsz=32)
    msgs = [r.getMessage() for r in caplog.records if "recommended" in r.getMessage()]
    assert msgs == ["only 4 calibration images; 500+ recommended for stable INT8 ranges"]


def test_images_sha256_tracks_the_selected_set(tmp_path: Path) -> None:
    files = _write_images(tmp_path, 4)
    h = ImageBatcher(files, seed=0).images_sha256()
    assert h == ImageBatcher(files, seed=0).images_sha256() and len(h) == 64
    assert h != ImageBatcher(files, seed=1).images_sha256()  # order
    assert h != ImageBatcher(files[:3], seed=0).images_sha256()  # set
    assert cv2.imwrite(str(files[0]), _rand_image(90, 90))  # same name, other content size
    assert h != ImageBatcher(files, seed=0).images_sha256()


def test_preprocessing_record(tmp_path: Path) -> None:
    b = ImageBatcher(_write_images(tmp_path, 2), imgsz=(384, 640), batch=2)
    assert b.preprocessing() == {
        "imgsz": [384, 640],
        "stride": 32,
        "pad_value": 114,
        "auto": False,
        "scaleup": True,
        "center": True,
        "interpolation": "INTER_LINEAR",
        "color": "RGB",
        "scale": 1 / 255,
        "layout": "NCHW",
        "batch": 2,
    }


# --------------------------------------------------------------------------------------------- from_model


def test_from_model_static_batch(tmp_path: Path) -> None:
    files = _write_images(tmp_path / "imgs", 9)
    info = read_model_info(make_tiny_conv_onnx(tmp_path / "b4.onnx", hw=32, batch=4), with_hash=False)
    with pytest.raises(TrtqError) as err:
        ImageBatcher.from_model(files, info, batch=1)
    msg = str(err.value)
    assert "static batch of 4" in msg and "batch=1" in msg and "use batch=4" in msg
    b = ImageBatcher.from_model(files, info, batch=4)
    assert b.drop_last and b.imgsz == (32, 32)
    assert [x["images"].shape for x in b] == [(4, 3, 32, 32), (4, 3, 32, 32)]
    one = read_model_info(make_tiny_conv_onnx(tmp_path / "b1.onnx", hw=32, batch=1), with_hash=False)
    assert not ImageBatcher.from_model(files, one).drop_last
    with pytest.raises(TrtqError, match="static batch of 1"):
        ImageBatcher.from_model(files, one, batch=2)


def test_from_model_dynamic(tmp_path: Path) -> None:
    files = _write_images(tmp_path / "imgs", 5)
    info = read_model_info(make_tiny_conv_onnx(tmp_path / "dyn.onnx", hw=32, batch="N"), with_hash=False)
    b = ImageBatcher.from_model(files, info, batch=2)
    assert not b.drop_last and [x["images"].shape[0] for x in b] == [2, 2, 1]
    spec = TensorSpec("input", (None, 3, None, None), "float32")
    meta = ModelInfo(tmp_path / "m.onnx", (spec,), (), {"imgsz": [320, 480], "stride": 64})
    b = ImageBatcher.from_model(files, meta, batch=3, drop_last=True)
    assert b.imgsz == (320, 480) and b.stride == 64 and b.input_name == "input"
    assert [x["input"].shape for x in b] == [(3, 3, 320, 480)]
    bare = ModelInfo(tmp_path / "m.onnx", (spec,), (), {})
    assert ImageBatcher.from_model(files, bare).imgsz == (640, 640)


def test_from_model_shared_onnx(yolo_onnx: Path, calib_dir: Path) -> None:
    info = read_model_info(yolo_onnx, with_hash=False)
    b = ImageBatcher.from_model(calib_dir, info, num_images=2)
    assert [x["images"].shape for x in b] == [(1, 3, 640, 640)] * 2
    with pytest.raises(TrtqError, match="static batch of 1"):
        ImageBatcher.from_model(calib_dir, info, batch=8)


def test_module_is_light() -> None:
    code = (
        "import sys, trtq.images; "
        "bad = [m for m in ('torch', 'ultralytics', 'click', 'tqdm', 'yaml', 'onnx') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
