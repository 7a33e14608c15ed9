"""The head policy finds every head's float nodes from the graph structure, with reason codes."""

from __future__ import annotations

import pickle
import re
from collections import Counter
from pathlib import Path

import onnx
import pytest

from trtq.headpolicy import Branch, FloatReason, Reason, final_head_convs, float_nodes, head_policy

FINAL_CONV = re.compile(r"/model\.22/cv[23]\.[0-2]/cv[23]\.[0-2]\.2/Conv$")


def test_yolov8n_final_convs_are_exactly_the_six_head_convs(yolo_onnx: Path) -> None:
    model = onnx.load(str(yolo_onnx))
    finals = final_head_convs(model)
    expected = [n.name for n in model.graph.node if n.op_type == "Conv" and FINAL_CONV.search(n.name)]
    assert len(expected) == 6
    assert sorted(finals) == sorted(expected)
    policy = head_policy(model)
    assert Counter(policy[n].branch for n in finals) == {Branch.BOX: 3, Branch.CLASS: 3}
    assert all(policy[n].branch is Branch.BOX for n in finals if "/cv2." in n)  # names only check the answer


def test_yolov8n_dfl_decode_sigmoid_and_output_concat_stay_float(yolo_onnx: Path) -> None:
    model = onnx.load(str(yolo_onnx))
    policy = head_policy(model)
    by_name = {n.name: n for n in model.graph.node}
    ops = {by_name[k].op_type for k in policy}
    assert {"Softmax", "Sigmoid", "Concat", "Conv", "Sub", "Add", "Div", "Mul", "Reshape"} <= ops
    assert policy["/model.22/dfl/conv/Conv"].code is Reason.DFL
    assert policy["/model.22/dfl/Softmax"].code is Reason.DFL
    assert policy["/model.22/Sigmoid"].code is Reason.SCORES
    out_concat = [n.name for n in model.graph.node if "output0" in n.output]
    assert out_concat and policy[out_concat[0]].code is Reason.OUTPUT_CONCAT
    # nothing before the head's final convs, and no conv other than the six finals and the DFL conv
    assert all(k.startswith("/model.22/") for k in policy)
    assert len([k for k in policy if by_name[k].op_type == "Conv"]) == 7
    assert not any(re.search(r"cv[23]\.[0-2]\.[01]/", k) for k in policy)


def test_reason_text_is_derived_from_the_code() -> None:
    box = FloatReason(Reason.FINAL_CONV, Branch.BOX)
    assert isinstance(box, str) and "box branch" in box and box.code is Reason.FINAL_CONV
    assert FloatReason(Reason.FINAL_CONV, Branch.KEYPOINTS) != box
    assert pickle.loads(pickle.dumps(box)).code is Reason.FINAL_CONV
    assert all(FloatReason(code) for code in Reason if code is not Reason.FINAL_CONV)  # every code has a text


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


# Every architecture and task, built offline from ultralytics' yaml files (random weights: structure only).
EXPECTED_BRANCHES = {
    "detect": {Branch.BOX: 3, Branch.CLASS: 3},
    "segment": {Branch.BOX: 3, Branch.CLASS: 3, Branch.MASK: 3, Branch.PROTO: 1},
    "pose": {Branch.BOX: 3, Branch.CLASS: 3, Branch.KEYPOINTS: 3},
    "obb": {Branch.BOX: 3, Branch.CLASS: 3, Branch.ANGLE: 3},
}
SUFFIX = {"detect": "", "segment": "-seg", "pose": "-pose", "obb": "-obb"}


def _check_structure(model: onnx.ModelProto, task: str, *, attention: bool, end2end: bool) -> dict[str, FloatReason]:
    policy = head_policy(model)
    nodes = {n.name: n for n in model.graph.node}
    finals = {k: r for k, r in policy.items() if r.code is Reason.FINAL_CONV}
    assert Counter(r.branch for r in finals.values()) == EXPECTED_BRANCHES[task]
    # every last conv of a branch feeds only head nodes (it is the last weighted op before the outputs)
    assert all(nodes[k].op_type == "Conv" for k in finals)
    codes = Counter(r.code for r in policy.values())
    assert codes[Reason.OUTPUT_CONCAT] == 1 and codes[Reason.BOX_DECODE] > 0 and codes[Reason.SCORES] > 0
    assert all(policy[k].code in (Reason.SCORES, Reason.KEYPOINT_DECODE, Reason.ANGLE_DECODE, Reason.PROTO_OUTPUT)
               for k, n in nodes.items() if n.op_type == "Sigmoid" and k in policy)
    softmax = [k for k, n in nodes.items() if n.op_type == "Softmax"]
    matmul = [k for k, n in nodes.items() if n.op_type == "MatMul"]
    assert all(k in policy for k in softmax + matmul)  # DFL and attention math stay float
    assert bool(codes[Reason.ATTENTION]) is attention
    assert bool(codes[Reason.END2END_SELECT]) is end2end
    if end2end:
        assert all(policy[k].code is Reason.END2END_SELECT for k, n in nodes.items() if n.op_type == "TopK")
    return policy


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["yolov8n", "yolo11n", "yolo26n"])
@pytest.mark.parametrize("task", ["detect", "segment", "pose", "obb"])
def test_every_architecture_and_task(zoo_onnx, yolo_pt: Path, arch: str, task: str) -> None:  # noqa: ANN001
    # the same builds as the fidelity tests (COCO weights in the YOLOv8 structures), exported once per session
    extra = {"weights": yolo_pt, "nc": 80} if arch == "yolov8n" else {}
    model = onnx.load(str(zoo_onnx(f"{arch}{SUFFIX[task]}.yaml", imgsz=320, **extra)))
    policy = _check_structure(model, task, attention=arch != "yolov8n", end2end=False)
    has_dfl = any(r.code is Reason.DFL for r in policy.values())
    assert has_dfl is (arch != "yolo26n")  # YOLO26 regresses distances directly (reg_max 1)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["detect", "pose"])
def test_yolo26_end_to_end_head(zoo_onnx, task: str) -> None:  # noqa: ANN001
    model = onnx.load(str(zoo_onnx(f"yolo26n{SUFFIX[task]}.yaml", imgsz=320, nms=False)))
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim][:2] == [1, 300]
    _check_structure(model, task, attention=True, end2end=True)


@pytest.mark.slow
def test_dynamic_export_keeps_the_neck_out_of_the_head(zoo_onnx, yolo_pt) -> None:  # noqa: ANN001
    """A dynamic export computes anchors from the feature maps' shapes: that does not make the neck a head."""
    model = onnx.load(str(zoo_onnx("yolov8n.yaml", weights=yolo_pt, imgsz=320, dynamic=True)))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    _check_structure(model, "detect", attention=False, end2end=False)


@pytest.mark.slow
def test_implicit_build_pins_attention_and_head_layers_of_yolo11(zoo_onnx) -> None:  # noqa: ANN001
    """Implicit INT8: the attention MatMul/Softmax and the branch last convs are pinned to FP16, the decode to FP32."""
    from tests.fakes.fake_tensorrt import make_fake_tensorrt
    from trtq.trt.network import map_float_layers, pin_float_layers

    path = zoo_onnx("yolo11n-pose.yaml", imgsz=320)
    graph = onnx.load(str(path))
    nodes = float_nodes(graph)
    ops = {n.name: n.op_type for n in graph.graph.node}
    trt = make_fake_tensorrt("10.3.0")
    network = trt.Builder(trt.Logger()).create_network(0)
    assert trt.OnnxParser(network, trt.Logger()).parse_from_file(str(path))
    pinned = pin_float_layers(trt, network, map_float_layers(network, nodes, set(ops)), fp16=True)
    layers = {network.get_layer(i).name: network.get_layer(i) for i in range(network.num_layers)}
    by_code = Counter((nodes[n].code, layers[n].precision == trt.float16) for n in pinned)  # type: ignore[union-attr]
    assert by_code[(Reason.ATTENTION, True)] == 3  # two MatMuls and the Softmax (the Transpose is data movement)
    assert by_code[(Reason.FINAL_CONV, True)] == 9 and by_code[(Reason.KEYPOINT_DECODE, False)] > 0
