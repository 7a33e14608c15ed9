"""trtq.runtime.Detector on ONNX Runtime: same detections as ultralytics, batching, bad inputs, light import."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.unit.test_runtime_models import make_tiny_yolo_onnx, random_images
from trtq.errors import TrtqError
from trtq.ort import exact_qdq_sessions
from trtq.runtime import Detections, Detector

REPO = Path(__file__).resolve().parents[2]
HEAVY = (
    "torch",
    "ultralytics",
    "click",
    "tqdm",
    "tensorrt",
    "pycuda",
    "cuda",
    "onnx",
    "matplotlib",
    "torchvision",
)


def _ultralytics_assets() -> list[Path]:
    try:
        import ultralytics
    except ImportError:
        return []
    root = Path(ultralytics.__file__).parent / "assets"
    return [p for p in (root / "bus.jpg", root / "zidane.jpg") if p.is_file()]


def _same(a: Detections, b: Detections) -> None:
    assert len(a) == len(b)
    np.testing.assert_array_equal(a.class_ids, b.class_ids)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)


# ------------------------------------------------------------------------------------------ against ultralytics
def test_matches_ultralytics_predict_on_shared_images(yolo_onnx: Path, shared_assets: Path) -> None:
    yolo_mod = pytest.importorskip("ultralytics")
    images = (
        sorted((shared_assets / "coco128" / "images" / "val2017").glob("*.jpg"))[:4] + _ultralytics_assets()
    )
    model = yolo_mod.YOLO(str(yolo_onnx), task="detect")
    total = 0
    with Detector(yolo_onnx, conf=0.25, iou=0.7) as det:
        for path in images:
            ref = model.predict(str(path), imgsz=640, conf=0.25, iou=0.7, verbose=False, save=False)[0]
            (ours,) = det.detect(cv2.imread(str(path)))
            ref_boxes = ref.boxes.xyxy.cpu().numpy()
            ref_cls = ref.boxes.cls.cpu().numpy().astype(np.int64)
            assert len(ours) == len(ref_boxes), path.name
            np.testing.assert_array_equal(ours.class_ids, ref_cls, err_msg=path.name)
            np.testing.assert_allclose(ours.boxes, ref_boxes, atol=1.0, err_msg=path.name)
            np.testing.assert_allclose(ours.scores, ref.boxes.conf.cpu().numpy(), atol=1e-3)
            assert list(ours.names) == [ref.names[int(c)] for c in ref_cls]
            assert ours.image_shape == ref.orig_shape
            total += len(ours)
    assert total > 10  # the comparison covered real detections


def test_bus_summary_and_json(yolo_onnx: Path) -> None:
    assets = _ultralytics_assets()
    if not assets:
        pytest.skip("ultralytics sample images not installed")
    with Detector(yolo_onnx) as det:
        (d,) = det.detect(cv2.imread(str(assets[0])))
        assert set(det.last_timing) == {"preprocess", "inference", "postprocess", "total"}
    assert d.counts() == {"person": 4, "bus": 1}
    assert d.summary() == "4 person, 1 bus"
    items = json.loads(json.dumps(d.to_list()))
    assert len(items) == 5 and {"box", "score", "class_id", "name"} <= set(items[0])
    assert d.boxes.dtype == np.float32 and d.scores.dtype == np.float32
    h, w = d.image_shape
    assert (d.boxes[:, [0, 2]] <= w).all() and (d.boxes[:, [1, 3]] <= h).all() and (d.boxes >= 0).all()


# ------------------------------------------------------------------------------------------ batching, colours
def test_batch_equals_one_by_one_dynamic(tmp_path: Path) -> None:
    path = make_tiny_yolo_onnx(tmp_path / "dyn.onnx", batch="N")
    imgs = random_images(5)
    with Detector(path, conf=0.3, iou=0.5) as det:
        assert det.batch_range[0] == 1 and det.batch_range[1] >= 5
        singles = [det.detect(im)[0] for im in imgs]
        batched = det.detect(imgs)
        again = det.detect(imgs)  # buffers reused: same answer twice
    assert sum(len(d) for d in singles) > 0
    for a, b, c in zip(singles, batched, again, strict=True):
        _same(a, b)
        _same(b, c)


def test_static_batch_model_chunks_and_pads(tmp_path: Path) -> None:
    static = make_tiny_yolo_onnx(tmp_path / "b2.onnx", batch=2)
    dyn = make_tiny_yolo_onnx(tmp_path / "dyn.onnx", batch="N")
    imgs = random_images(3, seed=4)
    with Detector(static, conf=0.3) as a, Detector(dyn, conf=0.3) as b:
        assert a.batch_range == (2, 2)
        for x, y in zip(a.detect(imgs), b.detect(imgs), strict=True):
            _same(x, y)
        _same(a.detect(imgs[0])[0], b.detect(imgs[0])[0])


def test_rgb_and_4d_inputs(tmp_path: Path) -> None:
    path = make_tiny_yolo_onnx(tmp_path / "dyn.onnx")
    rng = np.random.default_rng(3)
    stack = rng.integers(0, 256, size=(2, 40, 50, 3), dtype=np.uint8)
    with Detector(path, conf=0.3) as det:
        bgr = det.detect(list(stack))
        as4d = det.detect(stack)
        rgb = det.detect([np.ascontiguousarray(im[..., ::-1]) for im in stack], rgb=True)
        swapped = det.detect(list(stack), rgb=True)
    for a, b, c in zip(bgr, as4d, rgb, strict=True):
        _same(a, b)
        _same(a, c)
    assert any(
        len(a) != len(s) or not np.allclose(a.scores, s.scores) for a, s in zip(bgr, swapped, strict=True)
    )


def test_conf_and_max_det(tmp_path: Path) -> None:
    path = make_tiny_yolo_onnx(tmp_path / "dyn.onnx")
    img = random_images(1)[0]
    with Detector(path, conf=0.05, iou=0.9) as low, Detector(path, conf=0.6, iou=0.9, max_det=3) as high:
        lo, hi = low.detect(img)[0], high.detect(img)[0]
    assert len(lo) > len(hi) and len(hi) <= 3
    assert (lo.scores > 0.05).all() and (hi.scores > 0.6).all()


def test_threads_share_one_detector(tmp_path: Path) -> None:
    path = make_tiny_yolo_onnx(tmp_path / "dyn.onnx")
    imgs = random_images(4, seed=7)
    with Detector(path, conf=0.3) as det:
        expected = [det.detect(im)[0] for im in imgs]
        results: dict[int, Detections] = {}

        def work(i: int) -> None:
            for _ in range(5):
                results[i] = det.detect(imgs[i])[0]

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i, e in enumerate(expected):
        _same(results[i], e)


# ------------------------------------------------------------------------------------------ errors
def test_missing_file_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(TrtqError, match="model not found"):
        Detector(tmp_path / "nope.onnx")
    with pytest.raises(TrtqError, match="directory"):
        Detector(tmp_path)
    other = tmp_path / "model.pt"
    other.write_bytes(b"x")
    with pytest.raises(TrtqError, match="unknown model type"):
        Detector(other)


def test_not_a_detector_and_corrupt_onnx(tmp_path: Path, tiny_conv_onnx: Path) -> None:
    with pytest.raises(TrtqError, match="expected a YOLO head output"):
        Detector(tiny_conv_onnx)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(TrtqError, match="ONNX Runtime cannot load"):
        Detector(bad)


def test_bad_images_and_thresholds(tmp_path: Path) -> None:
    path = make_tiny_yolo_onnx(tmp_path / "dyn.onnx")
    with pytest.raises(TrtqError, match="conf must be between 0 and 1"):
        Detector(path, conf=1.5)
    with pytest.raises(TrtqError, match="max_det"):
        Detector(path, max_det=0)
    det = Detector(path)
    with pytest.raises(TrtqError, match="empty"):
        det.detect(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(TrtqError, match="HxWx3"):
        det.detect(np.zeros((10, 10), np.uint8))
    with pytest.raises(TrtqError, match="uint8"):
        det.detect(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(TrtqError, match="no images"):
        det.detect([])
    with pytest.raises(TrtqError, match="not a numpy array"):
        det.detect(["img.jpg"])  # type: ignore[list-item]
    det.close()
    det.close()  # idempotent
    with pytest.raises(TrtqError, match="closed"):
        det.detect(np.zeros((10, 10, 3), np.uint8))


# ------------------------------------------------------------------------------------------ light import
def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    ).stdout
    return {m.split(".")[0] for m in json.loads(out.strip().splitlines()[-1])}


def test_import_is_light() -> None:
    mods = _modules_after("import trtq.runtime")
    assert "numpy" in mods
    assert not {"cv2", "onnxruntime", *HEAVY} & mods, sorted({"cv2", "onnxruntime", *HEAVY} & mods)


def test_onnx_detector_pulls_only_its_backend(tmp_path: Path) -> None:
    path = make_tiny_yolo_onnx(tmp_path / "dyn.onnx")
    code = (
        "import numpy as np\nfrom trtq.runtime import Detector\n"
        f"d = Detector({str(path)!r})\nd.detect(np.zeros((40, 30, 3), np.uint8))\nd.close()"
    )
    mods = _modules_after(code)
    assert {"numpy", "cv2", "onnxruntime"} <= mods
    assert not set(HEAVY) & mods, sorted(set(HEAVY) & mods)


@pytest.mark.slow
def test_qdq_onnx_matches_ultralytics(yolo_onnx: Path, calib_dir: Path, tmp_path: Path) -> None:
    yolo_mod = pytest.importorskip("ultralytics")
    quantize_mod = pytest.importorskip("trtq.quantize")
    options = quantize_mod.QuantizeOptions(num_images=8, progress=False)
    qdq = quantize_mod.quantize(yolo_onnx, calib_dir, options, output=tmp_path / "y.qdq.onnx").path
    images = sorted(calib_dir.parent.joinpath("val2017").glob("*.jpg"))[4:7]
    model = yolo_mod.YOLO(str(qdq), task="detect")
    total = 0
    # both simulate TensorRT: ONNX Runtime computes the Q/DQ exactly in ultralytics' session too
    with Detector(qdq) as det, exact_qdq_sessions():
        for path in images:
            ref = model.predict(str(path), imgsz=640, conf=0.25, iou=0.7, verbose=False, save=False)[0]
            (ours,) = det.detect(cv2.imread(str(path)))
            assert len(ours) == len(ref.boxes), path.name
            np.testing.assert_array_equal(ours.class_ids, ref.boxes.cls.cpu().numpy().astype(np.int64))
            np.testing.assert_allclose(ours.boxes, ref.boxes.xyxy.cpu().numpy(), atol=1.0)
            total += len(ours)
    assert total > 0
