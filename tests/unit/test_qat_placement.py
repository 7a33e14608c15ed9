"""QAT placement mapping, dataset staging and the checks made before any export or calibration."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from trtq.errors import TrtqError  # noqa: E402


# ----------------------------------------------------------------------------------------------- shared weights
def _shared_weight_pair() -> tuple[torch.nn.Module, onnx.ModelProto, np.ndarray]:
    """Two convs reading one weight tensor, in PyTorch (``model.0``, ``model.1``) and in ONNX."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((3, 3, 3, 3)) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c0"], name="/model.0/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c0", "w"], ["c1"], name="/model.1/Conv", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("c1", TensorProto.FLOAT, [1, 3, 8, 8])], [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = torch.nn.ModuleList([torch.nn.Conv2d(3, 3, 3, padding=1, bias=False) for _ in range(2)])
            self.model[1].weight = self.model[0].weight  # one Parameter, two readers
            with torch.no_grad():
                self.model[0].weight.copy_(torch.from_numpy(w))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model[1](self.model[0](x))

    return Net(), model, w


def test_a_weight_shared_by_two_convs_is_fake_quantized_for_both() -> None:
    from trtq.qat import fake_quantize, insert_fake_quant, map_placement, weight_scale
    from trtq.qat.numerics import activation_scale
    from trtq.qdq import dequantize_weight, insert_qdq, plan_qdq, quantize_weight

    net, model, w = _shared_weight_pair()
    plan = plan_qdq(model)
    qmodel, used = insert_qdq(model, plan, {"x": 1.0, "c0": 4.0})
    # the ONNX side: every reader of w reads it through a DequantizeLinear
    prod = {o: n for n in qmodel.graph.node for o in n.output}
    onnx_readers = {n.name for n in qmodel.graph.node if n.op_type == "Conv" and prod[n.input[1]].op_type == "DequantizeLinear"}
    assert onnx_readers == {"/model.0/Conv", "/model.1/Conv"}

    placement = map_placement(net, model, plan, used)
    assert {p for p, (_, _, qw) in placement.convs.items() if qw} == {"model.0", "model.1"}

    insert_fake_quant(net, placement)
    x = torch.from_numpy(np.random.default_rng(1).random((1, 3, 8, 8), dtype=np.float32))
    q, s = quantize_weight(w, 0)
    wq = torch.from_numpy(dequantize_weight(q, s, 0))
    np.testing.assert_array_equal(weight_scale(torch.from_numpy(w)).numpy().reshape(-1), s)

    def fq(t: torch.Tensor, amax: float) -> torch.Tensor:
        return fake_quantize(t, torch.tensor(activation_scale(amax)))

    c0 = torch.nn.functional.conv2d(fq(x, used["x"]), wq, padding=1)
    expected = torch.nn.functional.conv2d(fq(c0, used["c0"]), wq, padding=1)
    with torch.no_grad():
        np.testing.assert_allclose(net(x).numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_a_conv_transpose_is_fake_quantized_like_its_qdq_onnx() -> None:
    """A segment model's mask prototype upsamples with a ConvTranspose: input per tensor, weight per output
    channel along axis 1; the PyTorch forward equals onnx's reference evaluation of the Q/DQ ONNX."""
    from onnx.reference import ReferenceEvaluator

    from trtq.qat import insert_fake_quant, map_placement, weight_scale
    from trtq.qdq import insert_qdq, plan_qdq, quantize_weight

    rng = np.random.default_rng(2)
    w = (rng.standard_normal((3, 4, 2, 2)) * rng.uniform(0.05, 1.0, (1, 4, 1, 1))).astype(np.float32)
    b = (rng.standard_normal(4) * 0.1).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], name="/model.0/ConvTranspose", strides=[2, 2])
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    plan = plan_qdq(model)
    assert plan.weights["w"][1] == 1
    qmodel, used = insert_qdq(model, plan, {"x": 2.0})

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = torch.nn.ModuleList([torch.nn.ConvTranspose2d(3, 4, 2, 2)])
            with torch.no_grad():
                self.model[0].weight.copy_(torch.from_numpy(w))
                self.model[0].bias.copy_(torch.from_numpy(b))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model[0](x)

    net = Net()
    placement = map_placement(net, model, plan, used)
    assert placement.convs == {"model.0": ("/model.0/ConvTranspose", "x", True)}
    insert_fake_quant(net, placement)
    np.testing.assert_array_equal(weight_scale(torch.from_numpy(w), 1).numpy().reshape(-1), quantize_weight(w, 1)[1])
    x = (rng.standard_normal((1, 3, 8, 8)) * 0.8).astype(np.float32)
    for opset in qmodel.opset_import:  # onnx's reference QuantizeLinear starts at opset 19 (same INT8 semantics)
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, 19)
    ref = np.asarray(ReferenceEvaluator(qmodel).run(None, {"x": x})[0])
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert np.abs(got - np.asarray(ReferenceEvaluator(model).run(None, {"x": x})[0])).max() > 1e-3  # really quantized


# ----------------------------------------------------------------------------------------------- staging
def _image(dst: Path, calib_dir: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sorted(calib_dir.glob("*.jpg"))[0], dst)
    return dst


def test_staging_reads_labels_beside_symlinked_images(tmp_path: Path, calib_dir: Path) -> None:
    """Images that are links into a store without labels keep the labels of the tree they are listed in
    (ultralytics' images/ -> labels/ rule applies to the image path as listed, not to the link's target)."""
    import yaml

    from trtq.qat import stage_dataset

    blob = _image(tmp_path / "store" / "0a1b2c.jpg", calib_dir)
    ds = tmp_path / "ds"
    (ds / "images" / "train").mkdir(parents=True)
    os.symlink(blob, ds / "images" / "train" / "cat.jpg")
    (ds / "labels" / "train").mkdir(parents=True)
    (ds / "labels" / "train" / "cat.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    data = ds / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(ds), "train": "images/train", "val": "images/train", "names": {0: "cat"}}))

    staged = stage_dataset(data, tmp_path / "staged")
    labels = sorted((tmp_path / "staged" / "labels" / "train").iterdir())
    assert [p.read_text() for p in labels] == ["0 0.5 0.5 0.25 0.25\n"]
    assert yaml.safe_load(staged.read_text())["names"] == {0: "cat"}


# ----------------------------------------------------------------------------------------------- refused up front
@pytest.fixture(scope="module")
def task_models(tmp_path_factory: pytest.TempPathFactory, yolo_pt: Path) -> dict[str, Path]:
    pytest.importorskip("ultralytics")
    from tests.qat_data import task_pt

    root = tmp_path_factory.mktemp("qat-models")
    models = {t: task_pt(t, root, yolo_pt) for t in ("pose", "obb", "segment")}
    models["yolo11"] = task_pt("detect", root, arch="yolo11n")
    return models


@pytest.fixture
def no_export(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any export (the first costly step) fails the test: refusals must come before it."""

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("exported before refusing")

    monkeypatch.setattr("trtq.export.export_onnx", boom)


def _qat(pt: Path, tmp_path: Path, **kwargs: object) -> None:
    from trtq.qat import qat

    qat(pt, imgsz=64, epochs=1, batch=2, output=tmp_path / "out" / "m.onnx", progress=False, **kwargs)  # type: ignore[arg-type]


def test_yolo11_is_refused_before_any_work(task_models: dict[str, Path], calib_dir: Path, tmp_path: Path, no_export: None) -> None:
    match = r"C2PSA, C3k2 layers \(a YOLO11 / YOLO26 structure\); qat fine-tunes YOLOv8 detect, segment, pose and OBB"
    with pytest.raises(TrtqError, match=match):
        _qat(task_models["yolo11"], tmp_path, distill=True, calib=calib_dir)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize(
    ("model", "labels_as", "kpt", "match"),
    [
        ("pose", "detect", True, r"no label file of .* fits a pose model: .* pose labels have 56"),
        ("pose", "pose", False, r"has no kpt_shape, but the model is a pose model with kpt_shape \[17, 3\]"),
        ("obb", "detect", False, r"no label file of .* fits an OBB model: .* 5 values; OBB labels are 'class x1 y1 x2 y2 x3 y3 x4 y4'"),
        ("detect", "pose", False, r"no label file of .* fits a detect model: .* 56 values"),
        ("segment", "detect", False, r"no label file of .* fits a segment model: .* 5 values; segment labels are polygons"),
    ],
)
def test_labels_that_do_not_fit_the_task_are_refused_before_any_work(
    model: str, labels_as: str, kpt: bool, match: str, task_models: dict[str, Path], yolo_pt: Path,
    shared_assets: Path, tmp_path: Path, no_export: None,
) -> None:
    import yaml

    from tests.qat_data import task_dataset

    pt = yolo_pt if model == "detect" else task_models[model]
    data, _ = task_dataset(model, tmp_path / "ds", shared_assets / "coco128", pt, labels_as=labels_as)
    cfg = yaml.safe_load(data.read_text())
    if model == "pose" and not kpt:
        cfg.pop("kpt_shape")
    elif model == "pose" and kpt:
        assert cfg["kpt_shape"] == [17, 3]
    data.write_text(yaml.safe_dump(cfg))
    with pytest.raises(TrtqError, match=match):
        _qat(pt, tmp_path, data=data)


def test_a_data_yaml_with_other_classes_is_refused(task_models: dict[str, Path], shared_assets: Path, tmp_path: Path,
                                                   no_export: None) -> None:
    """The pose yaml model has 1 class; coco128's yaml names 80."""
    with pytest.raises(TrtqError, match="names 80 classes but the model has 1"):
        _qat(task_models["pose"], tmp_path, data=shared_assets / "coco128" / "data.yaml")


def test_cli_refuses_yolo11_in_one_line(task_models: dict[str, Path], calib_dir: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from trtq.cli import main

    r = CliRunner().invoke(main, ["qat", str(task_models["yolo11"]), "--distill", "--calib", str(calib_dir),
                                  "-o", str(tmp_path / "m.onnx")])
    assert r.exit_code == 2 and r.output.count("trtq: error:") == 1 and "Traceback" not in r.output, r.output
