"""End to end on the shared YOLOv8n: Q/DQ fidelity on real images, eval vs ultralytics, the CLI paths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
import yaml
from click.testing import CliRunner

from trtq.cli import main
from trtq.headpolicy import Reason
from trtq.quantize_options import QuantizeOptions

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def qdq_yolo(tmp_path_factory: pytest.TempPathFactory, yolo_onnx: Path, calib_dir: Path) -> Path:
    from trtq.quantize import quantize

    out = tmp_path_factory.mktemp("qdq") / "yolov8n.int8.qdq.onnx"
    result = quantize(yolo_onnx, calib_dir, QuantizeOptions(num_images=16, progress=False), output=out)
    assert result.path == out and out.is_file()
    return out


def test_qdq_output_close_to_fp32_on_real_images(qdq_yolo: Path, yolo_onnx: Path, val_yaml: Path) -> None:
    from trtq.fidelity import compare

    onnx.checker.check_model(onnx.load(str(qdq_yolo)))
    val_images = val_yaml.parent / "images" / "val2017"
    m = compare(yolo_onnx, qdq_yolo, val_images, num_images=8)
    out = m["outputs"]["output0"]
    assert out["cosine"] >= 0.99
    assert out["scores_cosine"] >= 0.95
    # measured with 128 calibration images on 16 val images: recall 0.83, class agreement 0.97
    assert m["detections"]["recall"] >= 0.7 and m["detections"]["class_agreement"] >= 0.85


def test_report_lists_quantized_tensors_and_float_nodes(qdq_yolo: Path) -> None:
    report = json.loads(qdq_yolo.with_name("yolov8n.int8.qdq.report.json").read_text())
    assert report["counts"]["quantized_weights"] == 57
    assert report["counts"]["float_weighted_ops"] == 7
    finals = [f for f in report["float_nodes"] if f["code"] == Reason.FINAL_CONV.value]
    assert sorted(f["branch"] for f in finals) == ["box"] * 3 + ["class"] * 3
    assert len(finals) == 6
    assert all(a["amax"] > 0 and a["scale"] == pytest.approx(a["amax"] / 127) for a in report["quantized_activations"])
    md = qdq_yolo.with_name("yolov8n.int8.qdq.report.md").read_text()
    assert "/model.22/cv3.0/cv3.0.2/Conv" in md and "output Concat" in md
    meta = {p.key: p.value for p in onnx.load(str(qdq_yolo), load_external_data=False).metadata_props}
    assert "names" in meta and meta["trtq_quantization"] == "int8-qdq"


def test_eval_fp32_onnx_reproduces_ultralytics_val(yolo_onnx: Path, val_yaml: Path, tmp_path: Path) -> None:
    """All 128 val images (about 20 s per evaluation on 2 cores)."""
    from ultralytics import YOLO

    from trtq.evaluate import evaluate

    ours = evaluate(yolo_onnx, val_yaml)
    # ultralytics writes a label cache beside the labels it reads: give it a private copy of the data
    root = tmp_path / "coco128"
    for sub in ("images", "labels"):
        shutil.copytree(val_yaml.parent / sub / "val2017", root / sub / "val2017")
    yaml_copy = tmp_path / "data.yaml"
    cfg = yaml.safe_load(val_yaml.read_text())
    yaml_copy.write_text(yaml.safe_dump({**cfg, "path": str(root), "train": "images/val2017", "val": "images/val2017"}))
    direct = YOLO(str(yolo_onnx), task="detect").val(
        data=str(yaml_copy), imgsz=640, batch=1, plots=False, device="cpu", verbose=False,
        project=str(tmp_path), name="direct", conf=0.001, iou=0.7, max_det=300,
    )
    assert abs(ours["map50_95"] - float(direct.box.map)) <= 0.002
    assert abs(ours["map50"] - float(direct.box.map50)) <= 0.002
    assert ours["images"] == 128
    assert 0.40 < ours["map50_95"] < 0.44


def _small_set(val_yaml: Path, dest: Path, n: int = 8) -> Path:
    src = val_yaml.parent
    (dest / "images").mkdir(parents=True)
    (dest / "labels").mkdir(parents=True)
    for img in sorted((src / "images" / "val2017").glob("*.jpg"))[:n]:
        shutil.copy(img, dest / "images" / img.name)
        lab = src / "labels" / "val2017" / img.with_suffix(".txt").name
        if lab.is_file():
            shutil.copy(lab, dest / "labels" / lab.name)
    names = src / "data.yaml"
    text = names.read_text().split("names:", 1)[1]
    (dest / "data.yaml").write_text(f"path: {dest}\ntrain: images\nval: images\nnames:{text}")
    return dest / "data.yaml"


def test_cli_eval_compare_table(qdq_yolo: Path, yolo_onnx: Path, val_yaml: Path, tmp_path: Path) -> None:
    data = _small_set(val_yaml, tmp_path / "small")
    out_json = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["eval", "--compare", str(yolo_onnx), str(qdq_yolo), "--data", str(data), "--json", str(out_json)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out_json.read_text())
    assert len(rows) == 2 and all(r["images"] == 8 for r in rows)
    delta = (rows[1]["map50_95"] - rows[0]["map50_95"]) * 100
    assert f"{delta:+.2f}" in result.output
    assert abs(delta) < 5


def test_cli_compare(qdq_yolo: Path, yolo_onnx: Path, calib_dir: Path) -> None:
    result = CliRunner().invoke(main, ["compare", str(yolo_onnx), str(qdq_yolo), "--calib", str(calib_dir), "--num-images", "2"])
    assert result.exit_code == 0, result.output
    assert "SQNR" in result.output and "class agreement" in result.output


def test_cli_quantize_and_sensitivity_on_tiny_net(tiny_conv_onnx: Path, calib_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny.q.onnx"
    r = CliRunner().invoke(main, ["quantize", str(tiny_conv_onnx), "--calib", str(calib_dir), "--num-images", "4", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert out.is_file() and (tmp_path / "tiny.q.report.json").is_file() and (tmp_path / "tiny.q.report.md").is_file()
    r = CliRunner().invoke(
        main, ["sensitivity", str(tiny_conv_onnx), "--calib", str(calib_dir), "--num-images", "2", "-o", str(tmp_path / "sens")]
    )
    assert r.exit_code == 0, r.output
    png = (tmp_path / "sens.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    ranking = json.loads((tmp_path / "sens.json").read_text())["ranking"]
    assert {x["layer"] for x in ranking} == {"/model.0/conv/Conv", "/model.1/conv/Conv", "/model.1/Add", "/model.4/Conv"}
    costs = [x["cost"] for x in ranking]
    assert costs == sorted(costs, reverse=True) and costs[0] > 0


def test_head_policy_on_another_yolov8_shape(tmp_path: Path) -> None:
    """A YOLOv8 built from its yaml with 3 classes, exported at 320: the same six head convs are found."""
    pytest.importorskip("ultralytics")
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from trtq.headpolicy import final_head_convs, float_nodes, head_policy, reason_code

    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False).eval().fuse(verbose=False)
    model.model[-1].export = True  # return only the decoded output, as ultralytics' ONNX export does
    path = tmp_path / "s3.onnx"
    torch.onnx.export(model, torch.zeros(1, 3, 320, 320), str(path), opset_version=17,
                      input_names=["images"], output_names=["output0"], dynamo=False)
    m = onnx.load(str(path))
    finals = final_head_convs(m)
    assert len(finals) == 6
    inits = {i.name: i for i in m.graph.initializer}
    by_name = {n.name: n for n in m.graph.node}
    out_channels = sorted(inits[by_name[f].input[1]].dims[0] for f in finals)
    assert out_channels == [3, 3, 3, 64, 64, 64]
    nodes = float_nodes(m)
    assert any(reason_code(v) is Reason.DFL for v in nodes.values())
    policy = head_policy(m)  # no metadata: branches told apart by channels (4 x 16 bins) and graph hints
    assert sorted(policy[f].branch.value for f in finals) == ["box"] * 3 + ["class"] * 3  # type: ignore[union-attr]


def test_eval_never_writes_into_the_dataset(yolo_onnx: Path, val_yaml: Path, tmp_path: Path) -> None:
    """ultralytics caches labels beside the labels it reads; trtq eval reads a private view of the data."""
    data = _small_set(val_yaml, tmp_path / "small", n=4)
    before = sorted(str(p.relative_to(data.parent)) for p in data.parent.rglob("*"))
    result = CliRunner().invoke(main, ["eval", str(yolo_onnx), "--data", str(data)])
    assert result.exit_code == 0, result.output
    assert sorted(str(p.relative_to(data.parent)) for p in data.parent.rglob("*")) == before
