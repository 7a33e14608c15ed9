"""examples/jetson_app.py runs headless on a short video with an ONNX model and writes an annotated video."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.unit.test_runtime_models import make_tiny_yolo_onnx

REPO = Path(__file__).resolve().parents[2]


def _load_example():  # noqa: ANN202 - a module
    spec = importlib.util.spec_from_file_location("jetson_app", REPO / "examples" / "jetson_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_jetson_app_on_a_video(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    video = tmp_path / "in.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (96, 64))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG videos")
    rng = np.random.default_rng(0)
    for _ in range(6):
        writer.write(rng.integers(0, 256, size=(64, 96, 3), dtype=np.uint8))
    writer.release()
    model = make_tiny_yolo_onnx(tmp_path / "tiny.onnx")
    app = _load_example()
    out = tmp_path / "out.avi"
    rc = app.main(
        [
            "--engine",
            str(model),
            "--source",
            str(video),
            "--no-show",
            "--max-frames",
            "4",
            "--output",
            str(out),
        ]
    )
    assert rc == 0
    err = capsys.readouterr().err
    assert "4 frames" in err and "FPS" in err
    cap = cv2.VideoCapture(str(out))
    count = 0
    while cap.read()[0]:
        count += 1
    cap.release()
    assert count == 4


def test_jetson_app_reports_a_bad_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = _load_example()
    assert app.main(["--engine", str(tmp_path / "missing.engine"), "--no-show"]) == 2
    assert "model not found" in capsys.readouterr().err
