"""Task layouts: read from metadata, checked against shapes, inferred where metadata is missing."""

from __future__ import annotations

import pytest

from trtq.errors import TrtqError
from trtq.tasks import anchor_count, task_layout

COCO = {i: f"c{i}" for i in range(80)}
A640 = anchor_count((640, 640))


def test_anchor_count_matches_ultralytics_grids() -> None:
    assert A640 == 8400
    assert anchor_count((320, 416)) == 40 * 52 + 20 * 26 + 10 * 13


@pytest.mark.parametrize(
    ("meta", "shapes", "task", "extra", "end2end"),
    [
        ({"task": "detect", "names": COCO}, [(1, 84, A640)], "detect", 0, False),
        ({"task": "segment", "names": COCO}, [(1, 116, A640), (1, 32, 160, 160)], "segment", 32, False),
        ({"task": "pose", "names": {0: "person"}, "kpt_shape": [17, 3]}, [(1, 56, A640)], "pose", 51, False),
        ({"task": "obb", "names": {i: str(i) for i in range(15)}}, [(1, 20, A640)], "obb", 1, False),
        ({"task": "detect", "names": COCO, "end2end": True}, [(1, 300, 6)], "detect", 0, True),
        ({"task": "pose", "names": {0: "p"}, "kpt_shape": [17, 3], "end2end": "True"}, [(1, 300, 57)], "pose", 51, True),
        ({"task": "segment", "names": COCO, "end2end": True}, [(1, 300, 38), (1, 32, 160, 160)], "segment", 32, True),
        ({"task": "obb", "names": COCO, "end2end": True}, [(None, 300, 7)], "obb", 1, True),
    ],
)
def test_layout_from_metadata(meta, shapes, task, extra, end2end) -> None:
    layout = task_layout(meta, shapes, imgsz=(640, 640))
    assert (layout.task, layout.extra, layout.end2end, layout.inferred) == (task, extra, end2end, False)
    assert layout.row_size == (shapes[0][2] if end2end else shapes[0][1])


@pytest.mark.parametrize(
    ("meta", "shapes", "task", "nc"),
    [
        ({}, [(1, 84, A640)], "detect", 80),
        ({"names": COCO}, [(1, 85, A640)], "obb", 80),
        ({"names": {0: "person"}}, [(1, 56, A640)], "pose", 1),
        ({"names": COCO}, [(1, 116, A640), (1, 32, 160, 160)], "segment", 80),
        ({"names": COCO}, [(1, 300, 6)], "detect", 80),
    ],
)
def test_layout_inferred_from_shapes(meta, shapes, task, nc) -> None:
    layout = task_layout(meta, shapes, imgsz=(640, 640))
    assert (layout.task, layout.nc, layout.inferred) == (task, nc, True)


@pytest.mark.parametrize(
    ("meta", "shapes", "words"),
    [
        ({"task": "classify"}, [(1, 1000)], "classification"),
        ({}, [(1, 1000)], "classification"),
        ({"task": "depth"}, [(1, 84, A640)], "'depth'"),
        ({"task": "detect", "names": COCO}, [(1, 85, A640)], "does not match"),
        ({"task": "pose", "names": {0: "p"}, "kpt_shape": [17, 3]}, [(1, 84, A640)], "does not match"),
        ({"task": "segment", "names": COCO}, [(1, 116, A640)], "prototype"),
        ({"names": COCO}, [(1, 86, A640)], "do not fit"),
        ({}, [(1, 300, 6)], "no class names"),
    ],
)
def test_undecodable_models_are_refused_in_one_line(meta, shapes, words) -> None:
    with pytest.raises(TrtqError) as err:
        task_layout(meta, shapes, imgsz=(640, 640), source="m.onnx")
    assert words in str(err.value) and "\n" not in str(err.value)
