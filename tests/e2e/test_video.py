"""Video parity: every frame of bikes.mp4 through ``Detector.stream`` gives ultralytics' stream predict
detections on the same FP32 ONNX (classes equal, boxes within 1 px)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trtq.runtime import Detector

pytestmark = pytest.mark.slow


def test_every_bikes_frame_matches_ultralytics_stream_predict(yolo_onnx: Path, shared_assets: Path) -> None:
    ultralytics = pytest.importorskip("ultralytics")
    video = shared_assets / "video" / "bikes.mp4"
    if not video.is_file():
        pytest.skip(f"{video} not found")
    ref = [
        (r.boxes.cls.numpy().astype(int), r.boxes.xyxy.numpy(), r.boxes.conf.numpy())
        for r in ultralytics.YOLO(str(yolo_onnx), task="detect").predict(
            str(video), stream=True, verbose=False, conf=0.25, iou=0.7
        )
    ]
    with Detector(yolo_onnx, conf=0.25, iou=0.7) as det:
        got = list(det.stream(str(video)))
    assert len(got) == len(ref) == 250
    assert sum(len(c) for c, _, _ in ref) > 250  # the street has cyclists and people in most frames
    for res, (cls, xyxy, conf) in zip(got, ref, strict=True):
        d = res.detections
        order_ref, order = np.argsort(-conf, kind="stable"), np.argsort(-d.scores, kind="stable")
        assert np.array_equal(d.class_ids[order], cls[order_ref]), f"frame {res.frame}"
        np.testing.assert_allclose(d.boxes[order], xyxy[order_ref], atol=1.0, err_msg=f"frame {res.frame}")
