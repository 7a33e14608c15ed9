"""Dynamic-size models are padded as ultralytics' predictor pads them: only to the next stride multiple
(``LetterBox(auto=True)``) when the images of a batch share a shape, else to the full canvas. Checked against
ultralytics' own ``LetterBox``, ``BasePredictor.pre_transform`` and, end to end, ``YOLO(onnx).predict``."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest

from tests.fakes import write_images
from tests.unit.test_runtime_models import make_tiny_yolo_onnx, random_images
from trtq.images import ImageBatcher, dynamic_spatial, letterbox_batch
from trtq.modelinfo import read_model_info
from trtq.runtime import Detector


def make_dynamic(path: Path, hw: int = 64) -> Path:
    """The tiny detector with dynamic height, width (and anchors), as an ultralytics dynamic=True export."""
    make_tiny_yolo_onnx(path, hw=hw)
    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    model.graph.output[0].type.tensor_type.shape.dim[2].dim_param = "anchors"
    onnx.save(model, str(path))
    return path


def ultralytics_pre_transform(images: list[np.ndarray], imgsz: int, *, dynamic: bool) -> list[np.ndarray]:
    """ultralytics' predictor letterbox for an ONNX model (``BasePredictor.pre_transform``), run on a stub."""
    predictor = pytest.importorskip("ultralytics.engine.predictor")
    stub = SimpleNamespace(imgsz=[imgsz, imgsz], args=SimpleNamespace(rect=True), scale_fill=False,
                           model=SimpleNamespace(format="onnx", dynamic=dynamic, stride=32))
    return predictor.BasePredictor.pre_transform(stub, images)


@pytest.mark.parametrize("dynamic", [True, False])
@pytest.mark.parametrize("same_shapes", [True, False])
def test_letterbox_batch_matches_the_predictor(dynamic: bool, same_shapes: bool) -> None:
    images = random_images(5, seed=1)
    batch = [images[0], images[0][::-1].copy()] if same_shapes else images
    ours = letterbox_batch(batch, 640, stride=32, auto=dynamic)
    theirs = ultralytics_pre_transform(batch, 640, dynamic=dynamic)
    assert [a.shape for a in ours] == [b.shape for b in theirs]
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
    if dynamic and same_shapes:
        assert ours[0].shape[:2] != (640, 640) and all(s % 32 == 0 for s in ours[0].shape[:2])


def test_detector_on_a_dynamic_model_feeds_and_decodes_like_ultralytics(tmp_path: Path) -> None:
    yolo = pytest.importorskip("ultralytics").YOLO
    path = make_dynamic(tmp_path / "dyn.onnx")
    model = yolo(str(path), task="detect")
    with Detector(path, conf=0.25) as det:
        assert det.dynamic_hw
        fed: list[np.ndarray] = []
        session = det._session
        real = session.run_array  # type: ignore[union-attr]
        session.run_array = lambda x: (fed.append(x), real(x))[1]  # type: ignore[union-attr]
        for img in random_images(5, seed=3):
            fed.clear()
            ours = det.detect(img)[0]
            # BasePredictor.preprocess: stack, BGR to RGB, BHWC to BCHW, float /255
            want = np.stack(ultralytics_pre_transform([img], 64, dynamic=True))[..., ::-1].transpose(0, 3, 1, 2)
            want = np.ascontiguousarray(want).astype(np.float32) / np.float32(255)
            assert fed[0].shape == want.shape and np.array_equal(fed[0], want)
            theirs = model.predict(img, imgsz=64, conf=0.25, verbose=False)[0].boxes
            assert len(ours.boxes) == len(theirs) > 0
            order = np.lexsort(ours.boxes.T[::-1])
            ref = theirs.xyxy.numpy()
            np.testing.assert_allclose(ours.boxes[order], ref[np.lexsort(ref.T[::-1])], atol=1e-3)


def test_quantize_calibrates_a_dynamic_model_with_the_predictor_padding(tmp_path: Path) -> None:
    path = make_dynamic(tmp_path / "dyn.onnx")
    info = read_model_info(path)
    assert dynamic_spatial(info.input.shape)
    images = write_images(tmp_path / "imgs", 3, size=(20, 90))
    batcher = ImageBatcher.from_model(images, info, predictor_padding=True)
    shapes = {feed["images"].shape for feed in batcher}
    assert shapes == {(1, 3, 32, 64)}  # 20x90 scaled to 14x64, padded to the stride (32), not the 64x64 canvas
    assert batcher.preprocessing()["auto"] is True
    assert ImageBatcher.from_model(images, info).preprocessing()["auto"] is False  # e.g. a fixed-size engine
    from trtq.amax import collect_statistics

    _, used = collect_statistics(path, str(images), ["images"], progress=False)
    assert used.auto


def test_letterbox_hw_is_the_shape_letterbox_gives() -> None:
    """The size arithmetic alone (used to size a dynamic model's input before any pixel is read) agrees with
    the letterbox itself, for odd sizes, both orientations, full canvas and stride padding."""
    from trtq.images import letterbox, letterbox_hw

    rng = np.random.default_rng(0)
    for _ in range(40):
        hw = (int(rng.integers(7, 1500)), int(rng.integers(7, 1500)))
        imgsz = (int(rng.choice([320, 480, 640])), int(rng.choice([320, 640])))
        img = np.zeros((*hw, 3), np.uint8)
        for auto in (False, True):
            assert letterbox_hw(hw, imgsz, stride=32, auto=auto) == letterbox(img, imgsz, stride=32, auto=auto)[0].shape[:2]
