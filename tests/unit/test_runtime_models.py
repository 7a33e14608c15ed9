"""Tiny YOLOv8-shaped ONNX detectors (built with onnx.helper) shared by the runtime, bench and predict tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_tiny_yolo_onnx(
    path: Path, *, batch: int | str = "N", hw: int = 32, nc: int = 2, seed: int = 0
) -> Path:
    """Input ``images`` [batch, 3, hw, hw] -> output ``output0`` [batch, 4 + nc, hw * hw].

    Boxes are ``100 * conv(x) + 50`` pixels (1x1 convolutions), class scores ``sigmoid(conv(x))``: every pixel
    is an anchor, so the output depends on the image content and has overlapping candidates for NMS.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w_box = (rng.standard_normal((4, 3, 1, 1)) * 0.5).astype(np.float32)
    w_cls = (rng.standard_normal((nc, 3, 1, 1)) * 8.0).astype(np.float32)
    w_cls[:2, :, 0, 0] = [[8.0, 0.0, -8.0], [-4.0, 8.0, -4.0]][:nc]  # red-vs-blue, green-vs-rest (RGB input)
    inits = [
        numpy_helper.from_array(w_box, "w_box"),
        numpy_helper.from_array(np.zeros(4, np.float32), "b_box"),
        numpy_helper.from_array(w_cls, "w_cls"),
        numpy_helper.from_array(np.full(nc, -2.0, np.float32), "b_cls"),
        numpy_helper.from_array(np.array(100.0, np.float32), "scale"),
        numpy_helper.from_array(np.array([50.0, 50.0, 20.0, 20.0], np.float32).reshape(1, 4, 1, 1), "offset"),
        numpy_helper.from_array(np.array([0, 4 + nc, -1], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["images", "w_box", "b_box"], ["box_raw"], name="/box/Conv"),
        helper.make_node("Mul", ["box_raw", "scale"], ["box_scaled"], name="/box/Mul"),
        helper.make_node("Add", ["box_scaled", "offset"], ["box_off"], name="/box/Add"),
        helper.make_node("Abs", ["box_off"], ["box"], name="/box/Abs"),
        helper.make_node("Conv", ["images", "w_cls", "b_cls"], ["cls_raw"], name="/cls/Conv"),
        helper.make_node("Sigmoid", ["cls_raw"], ["cls"], name="/cls/Sigmoid"),
        helper.make_node("Concat", ["box", "cls"], ["cat"], name="/Concat", axis=1),
        helper.make_node("Reshape", ["cat", "shape"], ["output0"], name="/Reshape"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, hw, hw])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [batch, 4 + nc, hw * hw])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    names = {i: name for i, name in enumerate(["cat", "dog", "car", "bus", "cup"][:nc])}
    for key, value in (
        ("names", repr(names)),
        ("stride", "32"),
        ("imgsz", f"[{hw}, {hw}]"),
        ("task", "detect"),
    ):
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def random_images(n: int, seed: int = 0) -> list[np.ndarray]:
    """BGR uint8 images of assorted shapes (landscape, portrait, square, thin)."""
    rng = np.random.default_rng(seed)
    shapes = [(48, 64), (80, 40), (32, 32), (20, 90), (100, 75)]
    return [rng.integers(0, 256, size=(*shapes[i % len(shapes)], 3), dtype=np.uint8) for i in range(n)]


def test_tiny_yolo_model_runs_on_onnxruntime(tmp_path: Path) -> None:
    import onnxruntime as ort

    path = make_tiny_yolo_onnx(tmp_path / "t.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    (out,) = sess.run(None, {"images": x})
    assert out.shape == (3, 6, 1024)
    assert (out[:, :4] >= 0).all() and ((out[:, 4:] > 0) & (out[:, 4:] < 1)).all()
    assert not np.allclose(out[0], out[1])  # depends on the image
