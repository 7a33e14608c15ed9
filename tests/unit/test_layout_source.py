"""One answer to "what do this model's outputs mean", for quantize, the runtime, verify and compare."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.unit.test_runtime_models import make_tiny_yolo_onnx


def _bare(src: Path, dst: Path, *, joined: bool = False) -> Path:
    """``src`` without its ultralytics metadata; ``joined``: boxes and scores come out of one conv, so the
    head's branches cannot be told from the graph."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    del model.metadata_props[:]
    if joined:
        w = np.random.default_rng(0).standard_normal((135, 3, 1, 1)).astype(np.float32)
        graph = helper.make_graph(
            [helper.make_node("Conv", ["images", "w"], ["y"], name="/head/Conv"),
             helper.make_node("Reshape", ["y", "shape"], ["output0"], name="/Reshape")],
            "joined", list(model.graph.input),
            [helper.make_tensor_value_info("output0", onnx.TensorProto.FLOAT, [1, 135, 1024])],
            [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([0, 135, -1], np.int64), "shape")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
    onnx.save(model, str(dst))
    return dst


def test_a_head_that_could_be_several_tasks_is_refused_by_every_reader(tmp_path: Path) -> None:
    """135 rows: an 131-class detector, or a pose model with 80 classes and 17x3 keypoints."""
    from trtq.modelinfo import check_model, model_layout, read_model_info
    from trtq.runtime import Detector
    from trtq.tasks import AmbiguousLayout
    from trtq.verify import artifact_layout

    bare = _bare(make_tiny_yolo_onnx(tmp_path / "t.onnx", batch=1), tmp_path / "bare.onnx", joined=True)
    info = read_model_info(bare)
    with pytest.raises(AmbiguousLayout, match="no ultralytics metadata"):
        model_layout(info)
    with pytest.raises(AmbiguousLayout):
        Detector(bare)  # was decoded as a 131-class detector
    with pytest.raises(AmbiguousLayout):
        artifact_layout(bare, [(1, 135, 1024)])
    assert check_model(info) is None  # calibration does not need the layout: quantize goes on, with a warning


def test_a_bare_model_the_graph_can_tell_is_read_alike_everywhere(tmp_path: Path) -> None:
    from trtq.modelinfo import check_model, read_model_info
    from trtq.runtime import Detector
    from trtq.verify import artifact_layout

    bare = _bare(make_tiny_yolo_onnx(tmp_path / "t.onnx", batch=1), tmp_path / "bare.onnx")
    layout = check_model(read_model_info(bare))
    assert layout is not None and layout.inferred and (layout.task, layout.nc) == ("detect", 2)
    with Detector(bare) as det:
        assert det.layout == layout
    assert artifact_layout(bare, [(1, 6, 1024)]) == layout
