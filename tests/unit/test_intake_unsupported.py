"""RT-DETR, YOLO-World and nms=True exports: refused at intake, before any work, in one line that says
what the model is and what to do. The small models carry the metadata ultralytics' export writes for each
(copied from real exports of rtdetr-l.yaml, yolov8s-worldv2.yaml and yolov8n.yaml with nms=True); the slow
test exports real ones offline (not rtdetr-l: its export alone takes over a minute on two cores)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from tests.fakes import write_images
from trtq.cli import main
from trtq.errors import TrtqError
from trtq.modelinfo import check_model, read_model_info

ARGS = "{'data': None, 'batch': 1, 'fraction': 1.0, 'quantize': None, 'nms': %s, 'dynamic': False, 'simplify': True, 'opset': 17}"
MODELS = {  # name -> (metadata, output shape)
    "rtdetr": ({"description": "Ultralytics rtdetr-l model ", "task": "detect", "head": "RTDETRDecoder",
                "args": ARGS % "None", "end2end": "False", "names": str({i: f"c{i}" for i in range(80)})}, [1, 300, 84]),
    "world": ({"description": "Ultralytics YOLOv8s-worldv2 model ", "task": "detect", "head": "WorldDetect",
               "args": ARGS % "None", "end2end": "False", "names": str({i: f"c{i}" for i in range(80)})}, [1, 84, 84]),
    "nms": ({"description": "Ultralytics YOLOv8n model ", "task": "detect", "head": "Detect",
             "args": ARGS % "True", "end2end": "False", "names": str({i: f"c{i}" for i in range(80)})}, [1, 300, 6]),
    # exports older than the "head" key: told by the model name in the description
    "world-old": ({"description": "Ultralytics YOLOv8s-worldv2 model trained on coco.yaml", "task": "detect",
                   "names": str({i: f"c{i}" for i in range(80)})}, [1, 84, 84]),
}
WORDS = {"rtdetr": "RT-DETR", "world": "YOLO-World", "nms": "re-export it without nms=True", "world-old": "YOLO-World"}


def make_onnx(path: Path, metadata: dict[str, str], out_shape: list[int]) -> Path:
    """A conv net with a [1, 3, 64, 64] input and one output of ``out_shape``, carrying ``metadata``."""
    rng = np.random.default_rng(0)
    n = out_shape[1] * out_shape[2]
    nodes = [
        helper.make_node("Conv", ["images", "w"], ["c"], name="/model.0/conv/Conv", strides=[8, 8]),
        helper.make_node("Reshape", ["c", "shape"], ["output0"], name="reshape"),
    ]
    graph = helper.make_graph(
        nodes, "m",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(rng.standard_normal((n // 64, 3, 8, 8)).astype(np.float32), "w"),
         numpy_helper.from_array(np.array(out_shape, np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in {"stride": "32", "imgsz": "[64, 64]", **metadata}.items():
        p = model.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("name", list(MODELS))
def test_unsupported_models_are_named_at_intake(tmp_path: Path, name: str) -> None:
    meta, shape = MODELS[name]
    path = make_onnx(tmp_path / f"{name}.onnx", meta, shape)
    with pytest.raises(TrtqError, match=WORDS[name]) as err:
        check_model(read_model_info(path))
    assert "metadata does not match" not in str(err.value)


@pytest.mark.parametrize("command", ["quantize", "calibrate", "predict"])
@pytest.mark.parametrize("name", ["rtdetr", "world", "nms"])
def test_every_command_refuses_before_any_work(tmp_path: Path, name: str, command: str) -> None:
    meta, shape = MODELS[name]
    path = make_onnx(tmp_path / f"{name}.onnx", meta, shape)
    images = write_images(tmp_path / "images", 2)
    args = [command, str(path), "--calib" if command != "predict" else "--source", str(images)]
    before = {p.name for p in tmp_path.iterdir()}
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("trtq: error:")]
    assert len(errors) == 1 and WORDS[name] in errors[0], res.output
    assert "internal error" not in res.output and "Traceback" not in res.output
    assert {p.name for p in tmp_path.iterdir()} == before


def test_a_plain_detector_named_like_its_data_is_not_refused(tmp_path: Path) -> None:
    meta = {"description": "Ultralytics YOLOv8n model trained on world-rtdetr.yaml", "task": "detect", "head": "Detect",
            "args": ARGS % "False", "names": str({0: "a", 1: "b"})}
    path = make_onnx(tmp_path / "m.onnx", meta, [1, 6, 84])
    layout = check_model(read_model_info(path))
    assert layout is not None and layout.task == "detect" and layout.nc == 2


@pytest.mark.slow
@pytest.mark.parametrize(("cfg", "export_args", "word"), [
    ("yolov8n.yaml", {"nms": True}, "re-export it without nms=True"),
    ("yolov8s-worldv2.yaml", {}, "YOLO-World"),
])
def test_real_ultralytics_exports_are_refused_by_quantize(zoo_onnx, tmp_path: Path, cfg: str,  # noqa: ANN001
                                                           export_args: dict[str, object], word: str) -> None:
    path = zoo_onnx(cfg, imgsz=160, **export_args)
    images = write_images(tmp_path / "images", 2)
    res = CliRunner().invoke(main, ["quantize", str(path), "--calib", str(images), "-o", str(tmp_path / "q.onnx")])
    assert res.exit_code == 2 and word in res.output, res.output
    assert not (tmp_path / "q.onnx").exists()
