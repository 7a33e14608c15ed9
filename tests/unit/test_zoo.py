"""The model zoo builds each task's structure offline, with the output layout ultralytics documents."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from trtq.tasks import parse_metadata_value


@pytest.mark.slow
@pytest.mark.parametrize(
    ("cfg", "channels", "task"),
    [("yolov8n-pose.yaml", 4 + 1 + 51, "pose"), ("yolo11n-obb.yaml", 4 + 80 + 1, "obb"), ("yolo26n-seg.yaml", 4 + 80 + 32, "segment")],  # yaml defaults: pose nc=1,
)
def test_zoo_builds_task_layout(zoo_onnx, cfg: str, channels: int, task: str) -> None:
    model = onnx.load(str(zoo_onnx(cfg, imgsz=320)))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["task"] == task
    dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, channels, 2100]  # 40*40 + 20*20 + 10*10 anchors at 320
    assert parse_metadata_value(meta["imgsz"]) == [320, 320]


@pytest.mark.slow
def test_zoo_transplants_weights_and_never_writes_beside_them(zoo_onnx, yolo_pt) -> None:
    before = sorted(p.name for p in yolo_pt.parent.iterdir())
    pose = zoo_onnx("yolov8n-pose.yaml", weights=yolo_pt, nc=80, imgsz=320)
    assert sorted(p.name for p in yolo_pt.parent.iterdir()) == before

    def weights(path):  # noqa: ANN001, ANN202
        return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}

    transplanted = weights(pose)
    detector = weights(zoo_onnx("yolov8n.yaml", weights=yolo_pt, imgsz=320))
    untrained = weights(zoo_onnx("yolov8n-pose.yaml", nc=80, imgsz=320))
    for name in ("model.0.conv.weight", "model.9.cv2.conv.weight", "model.21.cv1.conv.weight"):
        assert np.array_equal(transplanted[name], detector[name]), name  # the COCO backbone and neck
        assert not np.allclose(transplanted[name], untrained[name], atol=1e-3), name
