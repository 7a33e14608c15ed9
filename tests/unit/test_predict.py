"""`trtq predict` and trtq.runtime.predict: summaries, drawn images, JSON, errors."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from tests.unit.test_runtime_models import make_tiny_yolo_onnx, random_images
from trtq.draw import class_color, draw_detections, write_image
from trtq.errors import TrtqError
from trtq.runtime import Detections, Detector, predict


def _assets() -> Path:
    ultralytics = pytest.importorskip("ultralytics")
    root = Path(ultralytics.__file__).parent / "assets"
    if not (root / "bus.jpg").is_file():
        pytest.skip("ultralytics sample images not installed")
    return root


def test_cli_predict_summaries_and_saved_images(yolo_onnx: Path, tmp_path: Path) -> None:
    from trtq.cli import main

    assets = _assets()
    out = CliRunner().invoke(
        main, ["predict", str(yolo_onnx), "--source", str(assets), "--save", str(tmp_path / "out")]
    )
    assert out.exit_code == 0, out.output
    lines = [line for line in out.output.splitlines() if line.endswith("ms)")]
    assert lines[0].startswith("bus.jpg: 4 person, 1 bus (") and len(lines) == 2
    assert lines[1].startswith("zidane.jpg: ") and "person" in lines[1]
    drawn = cv2.imread(str(tmp_path / "out" / "bus.jpg"))
    original = cv2.imread(str(assets / "bus.jpg"))
    assert drawn is not None and drawn.shape == original.shape
    changed = np.abs(drawn.astype(int) - original.astype(int)).sum(axis=2).astype(bool)
    assert changed.mean() > 0.01  # boxes drawn


def test_cli_predict_json(yolo_onnx: Path, tmp_path: Path) -> None:
    from trtq.cli import main

    assets = _assets()
    runner = CliRunner()
    out = runner.invoke(
        main,
        [
            "predict",
            str(yolo_onnx),
            "--source",
            str(assets / "bus.jpg"),
            "--json",
            "--conf",
            "0.5",
            "--save",
            str(tmp_path),
        ],
    )
    assert out.exit_code == 0, out.output
    start = out.stdout.index("{")
    doc = json.loads(out.stdout[start:])
    (image,) = doc["images"]
    assert image["width"] == 810 and image["height"] == 1080 and doc["conf"] == 0.5
    names = [d["name"] for d in image["detections"]]
    assert names.count("person") >= 3 and "bus" in names
    assert all(d["score"] > 0.5 for d in image["detections"])
    saved = json.loads((tmp_path / "predictions.json").read_text())
    assert saved["images"][0]["detections"] == image["detections"]


def test_predict_library_function_matches_detector(tmp_path: Path) -> None:
    model = make_tiny_yolo_onnx(tmp_path / "tiny.onnx")
    src = tmp_path / "imgs"
    src.mkdir()
    for i, img in enumerate(random_images(3)):
        cv2.imwrite(str(src / f"im{i}.png"), img)
    seen: list[str] = []
    results = predict(
        model,
        src,
        conf=0.3,
        json_path=tmp_path / "p.json",
        save=tmp_path / "out",
        on_result=lambda p: seen.append(p.path.name),
    )
    assert [r.path.name for r in results] == seen == ["im0.png", "im1.png", "im2.png"]
    with Detector(model, conf=0.3) as det:
        for r in results:
            (ref,) = det.detect(cv2.imread(str(r.path)))
            np.testing.assert_allclose(r.detections.boxes, ref.boxes)
            assert r.saved is not None and r.saved.suffix == ".png" and r.saved.is_file()
            assert r.summary().startswith(f"{r.path.name}: ") and r.summary().endswith(" ms)")
    doc = json.loads((tmp_path / "p.json").read_text())
    assert len(doc["images"]) == 3 and doc["backend"] == "onnxruntime"


def test_predict_errors(tmp_path: Path) -> None:
    from trtq.cli import main

    model = make_tiny_yolo_onnx(tmp_path / "tiny.onnx")
    runner = CliRunner()
    out = runner.invoke(main, ["predict", str(model), "--source", str(tmp_path / "none")])
    assert out.exit_code != 0 and "Traceback" not in out.output and "error" in out.output
    out = runner.invoke(main, ["predict", str(tmp_path / "missing.onnx"), "--source", str(tmp_path)])
    assert out.exit_code == 2 and "model not found" in out.output
    broken = tmp_path / "imgs"
    broken.mkdir()
    (broken / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(TrtqError):
        predict(model, broken)
    empty = tmp_path / "empty"
    empty.mkdir()
    out = runner.invoke(main, ["predict", str(model), "--source", str(empty)])
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert "found no images in" in out.output and str(empty) in out.output  # what was searched
    assert "calib" not in out.output.lower()  # no calibration advice for a prediction source


def test_draw_and_write_image(tmp_path: Path) -> None:
    img = np.full((100, 120, 3), 30, np.uint8)
    det = Detections(
        np.array([[10, 20, 60, 90]], np.float32),
        np.array([0.9], np.float32),
        np.array([3]),
        ("bus",),
        (100, 120),
    )
    out = draw_detections(img, det)
    assert (img == 30).all()  # the input is not modified
    assert tuple(out[50, 10]) == class_color(3)  # left edge of the box in the class colour
    assert (out[95:, :] == 30).all()  # nothing drawn outside the box and label
    path = write_image(tmp_path / "x.png", out)
    read = cv2.imread(str(path))
    assert read is not None and np.array_equal(read, out)
    with pytest.raises(TrtqError, match=".jpg"):
        write_image(tmp_path / "x.gif", out)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("cfg", "field"),
    [("yolov8n-seg.yaml", "mask"), ("yolov8n-pose.yaml", "keypoints"), ("yolov8n-obb.yaml", "corners")],
)
def test_cli_predict_draws_and_writes_each_task(
    zoo_onnx, yolo_pt: Path, shared_assets: Path, tmp_path: Path, cfg: str, field: str
) -> None:
    from trtq.runtime.decode import rle_to_mask

    onnx_path = zoo_onnx(cfg, weights=yolo_pt, nc=80, imgsz=320)
    image = sorted((shared_assets / "coco128" / "images" / "val2017").glob("*.jpg"))[0]
    out = tmp_path / "out"
    from trtq.cli import main

    result = CliRunner().invoke(
        main,
        ["predict", str(onnx_path), "--source", str(image), "--save", str(out), "--json", "--conf", "0.1"],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "predictions.json").read_text())
    dets = doc["images"][0]["detections"]
    assert doc["task"] == cfg.split("-")[1].split(".")[0].replace("seg", "segment") and dets
    assert all(field in d for d in dets)
    h, w = doc["images"][0]["height"], doc["images"][0]["width"]
    if field == "mask":
        mask = rle_to_mask(dets[0]["mask"])
        assert mask.shape == (h, w) and int(mask.sum()) == dets[0]["mask_area"] > 0
    if field == "keypoints":
        assert len(dets[0]["keypoints"]) == 17 and len(dets[0]["keypoints"][0]) == 3
    if field == "corners":
        assert len(dets[0]["corners"]) == 4 and len(dets[0]["xywhr"]) == 5
    drawn = cv2.imread(str(out / image.name))
    plain = cv2.imread(str(image))
    assert drawn.shape == plain.shape and np.abs(drawn.astype(int) - plain.astype(int)).sum() > 0


def test_an_unreadable_image_is_skipped_not_fatal(yolo_onnx: Path, tmp_path: Path, calib_dir: Path) -> None:
    from trtq.runtime import predict as run_predict

    src = tmp_path / "src"
    src.mkdir()
    good = sorted(calib_dir.glob("*.jpg"))[0]
    (src / good.name).write_bytes(good.read_bytes())
    (src / "broken.jpg").write_text("not an image")
    results = run_predict(yolo_onnx, src, save=tmp_path / "out")
    assert [r.path.name for r in results] == [good.name]
    assert [p.name for p in (tmp_path / "out").iterdir()] == [good.name]


def test_every_image_unreadable_is_an_error_and_skipped_files_are_listed(tmp_path: Path) -> None:
    from trtq.cli import main

    model = make_tiny_yolo_onnx(tmp_path / "m.onnx")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_text("not an image")
    (src / "b.png").write_bytes(b"\x89PNG broken")
    res = CliRunner().invoke(main, ["predict", str(model), "--source", str(src), "--json"])
    assert res.exit_code != 0, res.output
    assert "none of the 2 images" in res.output and "Traceback" not in res.output
    # one readable image: the run succeeds and the JSON names the file it skipped, with the reason
    cv2.imwrite(str(src / "c.jpg"), np.full((48, 64, 3), 127, np.uint8))
    res = CliRunner().invoke(main, ["predict", str(model), "--source", str(src), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [Path(i["image"]).name for i in doc["images"]] == ["c.jpg"]
    assert sorted(Path(s["image"]).name for s in doc["skipped"]) == ["a.jpg", "b.png"]
    assert all(s["reason"] for s in doc["skipped"])


@contextlib.contextmanager
def _serve(folder: Path) -> Iterator[str]:
    """A local HTTP server of ``folder``; yields its base URL."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()


def test_an_image_url_is_downloaded_and_predicted_like_the_file(tmp_path: Path) -> None:
    from trtq.cli import main
    from trtq.images import is_image_url
    from trtq.runtime.sources import is_video_source

    model = make_tiny_yolo_onnx(tmp_path / "m.onnx")
    www = tmp_path / "www"
    www.mkdir()
    img = np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    cv2.imwrite(str(www / "street cam.png"), img)
    (www / "broken.jpg").write_text("not an image")
    assert is_image_url("https://x/a/b.JPG?size=2") and not is_video_source("https://x/a/b.JPG?size=2")
    assert is_video_source("http://cam/stream") and not is_image_url("http://cam/stream")
    with _serve(www) as base:
        url = f"{base}/street%20cam.png"
        res = CliRunner().invoke(
            main, ["predict", str(model), "--source", url, "--json", "--save", str(tmp_path / "out")]
        )
        assert res.exit_code == 0, res.output
        doc = json.loads(res.stdout)
        local = CliRunner().invoke(
            main, ["predict", str(model), "--source", str(www / "street cam.png"), "--json"]
        )
        assert [i["image"] for i in doc["images"]] == [url]
        assert doc["images"][0]["detections"] == json.loads(local.stdout)["images"][0]["detections"]
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["predictions.json", "street cam.png"]
        for bad, why in ((f"{base}/missing.jpg", "HTTP 404"), (f"{base}/broken.jpg", "cannot decode image")):
            res = CliRunner().invoke(main, ["predict", str(model), "--source", bad])
            assert res.exit_code != 0 and why in res.output and "Traceback" not in res.output, res.output
    res = CliRunner().invoke(
        main, ["predict", str(model), "--source", "http://127.0.0.1:9/x.jpg"]
    )  # nothing there
    assert res.exit_code != 0 and "cannot download image" in res.output, res.output
