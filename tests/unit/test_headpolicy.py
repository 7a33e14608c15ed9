"""The YOLOv8 head policy finds the Detect head's float nodes from the graph structure."""

from __future__ import annotations

import re
from pathlib import Path

import onnx

from trtq.headpolicy import REASON_OUTPUT_CONCAT, final_head_convs, float_nodes

FINAL_CONV = re.compile(r"/model\.22/cv[23]\.[0-2]/cv[23]\.[0-2]\.2/Conv$")


def test_yolov8n_final_convs_are_exactly_the_six_head_convs(yolo_onnx: Path) -> None:
    model = onnx.load(str(yolo_onnx))
    finals = final_head_convs(model)
    expected = [n.name for n in model.graph.node if n.op_type == "Conv" and FINAL_CONV.search(n.name)]
    assert len(expected) == 6
    assert sorted(finals) == sorted(expected)
    nodes = float_nodes(model)
    assert sum("box branch" in nodes[n] for n in finals) == 3
    assert sum("class branch" in nodes[n] for n in finals) == 3


def test_yolov8n_dfl_decode_sigmoid_and_output_concat_stay_float(yolo_onnx: Path) -> None:
    model = onnx.load(str(yolo_onnx))
    nodes = float_nodes(model)
    by_name = {n.name: n for n in model.graph.node}
    ops = {by_name[k].op_type for k in nodes}
    assert {"Softmax", "Sigmoid", "Concat", "Conv", "Sub", "Add", "Div", "Mul", "Reshape"} <= ops
    assert nodes["/model.22/dfl/conv/Conv"].startswith("DFL")
    assert nodes["/model.22/dfl/Softmax"].startswith("DFL")
    assert nodes["/model.22/Sigmoid"].startswith("class Sigmoid")
    out_concat = [n.name for n in model.graph.node if "output0" in n.output]
    assert out_concat and nodes[out_concat[0]] == REASON_OUTPUT_CONCAT
    # nothing before the head's final convs, and no conv other than the six finals and the DFL conv
    assert all(k.startswith("/model.22/") for k in nodes)
    convs = [k for k in nodes if by_name[k].op_type == "Conv"]
    assert len(convs) == 7
    # the first two convs of every head branch are quantized
    assert not any(re.search(r"cv[23]\.[0-2]\.[01]/", k) for k in nodes)


def test_policy_does_not_depend_on_node_names(yolo_onnx: Path) -> None:
    model = onnx.load(str(yolo_onnx))
    reference = float_nodes(model)
    order = {n.name: i for i, n in enumerate(model.graph.node)}
    for i, node in enumerate(model.graph.node):
        node.name = f"n{i}"
    renamed = float_nodes(model)
    assert sorted(renamed) == sorted(f"n{order[k]}" for k in reference)
    assert sorted(renamed.values()) == sorted(reference.values())


def test_non_yolo_graph_keeps_nothing_float(tiny_conv_onnx: Path) -> None:
    assert float_nodes(onnx.load(str(tiny_conv_onnx))) == {}
