"""Fast checks of ``trtq.deploy``: the layout surgery against DeepStream-Yolo's ``DeepStreamOutput`` math, the
Triton config against Triton's schema, the staged folder write, and nvinfer's calibration preprocessing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from trtq.deploy import layout as ds_layout
from trtq.deploy import nvinfer
from trtq.deploy.bundle import staged_folder
from trtq.errors import TrtqError
from trtq.modelinfo import ModelInfo, TensorSpec
from trtq.tasks import TaskLayout


def _head_model(nc: int, n: int, *, opset: int = 17, end2end: bool = False) -> onnx.ModelProto:
    """``images`` -> Identity -> ``output0``: the head output is whatever the test feeds."""
    shape = [1, 300, 6] if end2end else [1, 4 + nc, n]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["output0"], name="/model.22/Identity")], "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.metadata_props.append(onnx.StringStringEntryProto(key="task", value="detect"))
    return model


def _deepstream_output(x: np.ndarray) -> np.ndarray:
    """DeepStream-Yolo ``utils/export_yoloV8.py`` ``DeepStreamOutput.forward`` with the patched ``dist2bbox``,
    in numpy, from ultralytics' xywh head output."""
    x = x.transpose(0, 2, 1)
    xy, wh = x[..., :2], x[..., 2:4]
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], -1)
    scores = x[..., 4:]
    return np.concatenate([boxes, scores.max(-1, keepdims=True), scores.argmax(-1)[..., None].astype(np.float32)], -1)


def test_layout_matches_deepstream_output() -> None:
    import onnxruntime as ort

    nc, n = 5, 40
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (1, 4 + nc, n)).astype(np.float32)
    x[:, :4] *= 600
    model = ds_layout.to_deepstream_layout(_head_model(nc, n), TaskLayout("detect", nc))
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["output"]
    assert ds_layout.appended_nodes(model) and {p.key for p in model.metadata_props} >= {"task", "trtq_layout"}
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = np.asarray(sess.run(["output"], {"input": x})[0])
    np.testing.assert_allclose(y, _deepstream_output(x), rtol=0, atol=1e-4)


def test_layout_end2end_only_renames() -> None:
    model = ds_layout.to_deepstream_layout(_head_model(80, 0, end2end=True), TaskLayout("detect", 80, end2end=True))
    assert not ds_layout.appended_nodes(model)
    dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 300, 6]


def test_layout_refusals() -> None:
    with pytest.raises(TrtqError, match="only detect"):
        ds_layout.to_deepstream_layout(_head_model(5, 8), TaskLayout("pose", 1, kpt_shape=(17, 3)))
    with pytest.raises(TrtqError, match="opset 13-17"):
        ds_layout.to_deepstream_layout(_head_model(5, 8, opset=19), TaskLayout("detect", 5))


def test_dynamic_batch_axis_only() -> None:
    model = ds_layout.to_deepstream_layout(_head_model(5, 8), TaskLayout("detect", 5))
    ds_layout.static_batch_input(model, None)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]] == [9, 8]


def test_staged_folder_is_all_or_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), staged_folder(out) as stage:
        (stage / "new.txt").write_text("new")
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "old.txt").read_text() == "old"
    with staged_folder(out) as stage:
        (stage / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_nvinfer_batcher_is_nvinfer_preprocessing(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (300, 500, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    batcher = nvinfer.NvinferBatcher(tmp_path, input_name="input", imgsz=(640, 640))
    (feed,) = list(batcher)
    expected, conv = nvinfer.preprocess_frames([img], (640, 640))
    np.testing.assert_array_equal(feed["input"], expected)
    assert conv[0].offset_top == (640 - 384) // 2 and feed["input"][0, :, 0].max() == 0  # black padding rows
    assert feed["input"].dtype == np.float32 and feed["input"].max() <= 1.0
    assert batcher.preprocessing()["pad_value"] == 0 and batcher.preprocessing()["scaling_filter"] == 1


def _info(batch: int | None = None) -> ModelInfo:
    return ModelInfo(
        path=Path("m.onnx"),
        inputs=(TensorSpec("images", (batch, 3, 640, 640), "float32"),),
        outputs=(TensorSpec("output0", (batch, 84, 8400), "float32"),),
        metadata={"task": "detect", "stride": 32, "imgsz": [640, 640], "names": {0: "person", 1: "bicycle", **{i: f"c{i}" for i in range(2, 80)}},
                  "args": {"batch": 1, "half": False}},
    )


def test_triton_config_against_the_schema() -> None:
    pytest.importorskip("tritonclient.grpc")
    import ast

    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from trtq.deploy.triton import model_config, parse_cc

    schema: Any = model_config_pb2
    text = model_config(_info(), name="yolo", platform="onnxruntime_onnx", max_batch=4, instances=2,
                        kind="KIND_CPU", cc_plans=parse_cc(["8.7=orin.plan", "9.0=h100.plan"]))
    cfg = text_format.Parse(text, schema.ModelConfig())
    assert cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 4
    assert list(cfg.input[0].dims) == [3, 640, 640] and list(cfg.output[0].dims) == [84, 8400]
    assert cfg.instance_group[0].kind == schema.ModelInstanceGroup.KIND_CPU and cfg.instance_group[0].count == 2
    assert dict(cfg.cc_model_filenames) == {"8.7": "orin.plan", "9.0": "h100.plan"}
    meta = ast.literal_eval(cfg.parameters["metadata"].string_value)
    assert meta["names"][1] == "bicycle" and len(meta["names"]) == 80 and meta["batch"] == 4 and meta["stride"] == 32


@pytest.mark.parametrize("bad", ["8.7", "orin.plan", "x=orin.plan", "8.7=", "8.7=a/b.plan", "8.7=orin.engine"])
def test_cc_refusals(bad: str) -> None:
    from trtq.deploy.triton import parse_cc

    with pytest.raises(TrtqError, match="COMPUTE_CAPABILITY=FILE.plan"):
        parse_cc([bad])


@pytest.mark.parametrize("task", ["classify", "obb", "pose", "segment"])
def test_only_detect_models_are_deployed(task: str) -> None:
    from dataclasses import replace

    from trtq.deploy.bundle import _deployable

    info = _info(1)
    outputs = {"classify": (TensorSpec("output0", (1, 1000), "float32"),),
               "obb": (TensorSpec("output0", (1, 20, 8400), "float32"),),
               "pose": (TensorSpec("output0", (1, 56, 8400), "float32"),),
               "segment": (TensorSpec("output0", (1, 116, 8400), "float32"),
                           TensorSpec("output1", (1, 32, 160, 160), "float32"))}[task]
    meta: dict[str, Any] = {**info.metadata, "task": task, "names": {0: "a"} if task == "pose" else info.metadata["names"]}
    if task == "pose":
        meta["kpt_shape"] = [17, 3]
    with pytest.raises(TrtqError, match="deploy supports YOLOv8 / YOLO11 / YOLO26 detect models only"):
        _deployable(replace(info, outputs=outputs, metadata=meta))
    assert _deployable(info).task == "detect"
