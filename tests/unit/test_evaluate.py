"""Evaluation input handling: data validation, COCO conversion, one-line errors, the compare table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from trtq.cli import main
from trtq.errors import TrtqError
from trtq.evaluate import check_label_file, compare_table, prepare_data


def _one_line_failure(args: list[str], match: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("trtq: error:") and match in lines[0], lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("0 0.5 0.5 0.2\n", "4 values"),
        ("person 0.5 0.5 0.2 0.2\n", "not numeric"),
        ("0 0.5 0.5 1.2 0.2\n", "outside [0, 1]"),
        ("-1 0.5 0.5 0.2 0.2\n", "non-negative integer"),
        ("1.5 0.5 0.5 0.2 0.2\n", "non-negative integer"),
        ("7 0.5 0.5 0.2 0.2\n", "has 3 classes"),
    ],
)
def test_malformed_label_lines(tmp_path: Path, content: str, match: str) -> None:
    f = tmp_path / "a.txt"
    f.write_text("0 0.5 0.5 0.1 0.1\n" + content)
    with pytest.raises(TrtqError, match="line 2") as info:
        check_label_file(f, nc=3)
    assert match in str(info.value) and "\n" not in str(info.value)


def test_valid_label_file_counts_boxes(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("0 0.5 0.5 0.1 0.1\n\n2 0.1 0.2 0.3 0.4\n1 0.1 0.1 0.2 0.1 0.2 0.2\n")
    assert check_label_file(f, nc=3) == 3


def test_cli_bad_data_path(tiny_conv_onnx: Path, tmp_path: Path) -> None:
    _one_line_failure(["eval", str(tiny_conv_onnx), "--data", str(tmp_path / "missing.yaml")], "data not found")


def test_cli_missing_model(tmp_path: Path) -> None:
    _one_line_failure(["eval", str(tmp_path / "nope.onnx"), "--data", str(tmp_path)], "model not found")


def test_cli_malformed_label_in_folder(tiny_conv_onnx: Path, tmp_path: Path, calib_dir: Path) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    img = sorted(calib_dir.glob("*.jpg"))[0]
    shutil.copy(img, folder / img.name)
    (folder / img.with_suffix(".txt").name).write_text("0 0.5 0.5 0.2\n")
    _one_line_failure(["eval", str(tiny_conv_onnx), "--data", str(folder)], "4 values")


def test_cli_folder_without_labels(tiny_conv_onnx: Path, tmp_path: Path, calib_dir: Path) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    img = sorted(calib_dir.glob("*.jpg"))[0]
    shutil.copy(img, folder / img.name)
    _one_line_failure(["eval", str(tiny_conv_onnx), "--data", str(folder)], "no YOLO label files")


def test_cli_yaml_with_missing_split(tiny_conv_onnx: Path, tmp_path: Path) -> None:
    y = tmp_path / "d.yaml"
    y.write_text("path: .\nval: images/val\nnames: {0: a}\n")
    _one_line_failure(["eval", str(tiny_conv_onnx), "--data", str(y)], "does not exist")


def test_cli_engine_without_tensorrt(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    from trtq.trt.compat import load_tensorrt

    if load_tensorrt() is not None:
        pytest.skip("TensorRT is installed here")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0" * 16)
    y = tmp_path / "d.yaml"
    y.write_text("val: x\nnames: {0: a}\n")
    result = CliRunner().invoke(main, ["eval", str(engine), "--data", str(y)])
    assert result.exit_code == 3 and "TensorRT" in result.output and "Traceback" not in result.output


def test_folder_with_sibling_labels_is_used_in_place(val_yaml: Path, tmp_path: Path) -> None:
    folder = val_yaml.parent / "images" / "val2017"
    spec = prepare_data(folder, tmp_path, names={i: str(i) for i in range(80)})
    assert spec.images == 128 and spec.labelled > 100 and spec.instances > 500


def test_folder_with_labels_next_to_images(tmp_path: Path, val_yaml: Path) -> None:
    src = val_yaml.parent
    folder = tmp_path / "flat"
    folder.mkdir()
    for img in sorted((src / "images" / "val2017").glob("*.jpg"))[:3]:
        shutil.copy(img, folder / img.name)
        shutil.copy(src / "labels" / "val2017" / img.with_suffix(".txt").name, folder / img.with_suffix(".txt").name)
    work = tmp_path / "work"
    work.mkdir()
    spec = prepare_data(folder, work, names={i: str(i) for i in range(80)})
    assert spec.images == 3 and spec.labelled == 3
    assert len(list((work / "labels" / "val").glob("*.txt"))) == 3


def test_coco_json_converts_to_the_yolo_labels(shared_assets: Path, tmp_path: Path) -> None:
    """The COCO JSON path reproduces coco128's own YOLO labels (an independent conversion)."""
    ann = shared_assets / "coco128" / "annotations" / "instances_train2017.json"
    images = shared_assets / "coco128" / "images" / "train2017"
    spec = prepare_data(ann, tmp_path, images=images)
    coco = json.loads(ann.read_text())
    assert spec.images == sum((images / im["file_name"]).is_file() for im in coco["images"])
    checked = 0
    for lab in sorted((tmp_path / "labels" / "val").glob("*.txt"))[:40]:
        ref = shared_assets / "coco128" / "labels" / "train2017" / lab.name
        if not ref.is_file():
            continue
        got = np.loadtxt(lab, ndmin=2)
        want = np.loadtxt(ref, ndmin=2)
        assert got.shape == want.shape, lab.name
        key = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
        np.testing.assert_allclose(key(got), key(want), atol=2e-3)
        checked += 1
    assert checked >= 30


def test_compare_table_deltas() -> None:
    rows = [
        {"model": "a/fp32.onnx", "map50_95": 0.419, "map50": 0.574, "images": 128},
        {"model": "b/int8.onnx", "map50_95": 0.415, "map50": 0.570, "images": 128},
    ]
    table = compare_table(rows)
    lines = table.splitlines()
    assert "fp32.onnx" in lines[2] and "int8.onnx" in lines[3]
    assert lines[3].split()[2] == "-0.40" and lines[3].split()[4] == "-0.40"


def test_relative_yaml_path_resolves(val_yaml: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    monkeypatch.chdir(tmp_path)
    rel = Path(os.path.relpath(val_yaml, tmp_path))
    spec = prepare_data(rel, tmp_path)
    assert spec.images == 128 and spec.yaml.is_absolute()


# ------------------------------------------------------------------------------------------ tasks
def _task_dataset(root: Path, labels: list[str], kpt_shape: list[int] | None = None) -> Path:
    import cv2

    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    for i, line in enumerate(labels):
        cv2.imwrite(str(root / "images" / "val" / f"{i}.jpg"), np.zeros((32, 32, 3), np.uint8))
        (root / "labels" / "val" / f"{i}.txt").write_text(line + "\n")
    cfg = {"path": str(root), "train": "images/val", "val": "images/val", "names": {0: "a", 1: "b"}}
    if kpt_shape:
        cfg["kpt_shape"] = kpt_shape
    import yaml

    (root / "data.yaml").write_text(yaml.safe_dump(cfg))
    return root / "data.yaml"


def test_tasks_without_their_labels_are_refused_in_one_line(tmp_path: Path) -> None:
    from trtq.evaluate import _check_task_labels

    boxes = prepare_data(_task_dataset(tmp_path / "boxes", ["0 0.5 0.5 0.2 0.2"]), tmp_path)
    model = tmp_path / "m.onnx"
    _check_task_labels("detect", model, boxes)
    for task, words in (("segment", "polygon"), ("pose", "keypoint"), ("obb", "rotated-box")):
        with pytest.raises(TrtqError, match=words) as info:
            _check_task_labels(task, model, boxes)
        assert "detection labels only" in str(info.value) and "\n" not in str(info.value)
    polygons = prepare_data(_task_dataset(tmp_path / "poly", ["1 0.1 0.1 0.5 0.1 0.5 0.5 0.1 0.5"]), tmp_path)
    _check_task_labels("segment", model, polygons)
    _check_task_labels("obb", model, polygons)  # 4 corners: a rotated-box label
    kpts = "0 0.5 0.5 0.2 0.2 " + " ".join(["0.5 0.5 2"] * 3)
    pose = prepare_data(_task_dataset(tmp_path / "pose", [kpts], kpt_shape=[3, 3]), tmp_path)
    _check_task_labels("pose", model, pose)


def test_pose_labels_need_their_columns(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("0 0.5 0.5 0.2 0.2 " + " ".join(["0.5 0.5 2"] * 3) + "\n")
    assert check_label_file(f, nc=2, kpt_shape=(3, 3)) == 1
    with pytest.raises(TrtqError, match="pose labels have 56"):
        check_label_file(f, nc=2, kpt_shape=(17, 3))
    f.write_text("0 0.5 0.5 0.2 0.2 " + " ".join(["0.5 0.5 3"] * 3) + "\n")
    with pytest.raises(TrtqError, match="visibility"):
        check_label_file(f, nc=2, kpt_shape=(3, 3))


def _labels_from_boxes(src: Path, root: Path, kind: str, n: int = 4) -> Path:
    """coco128 val images with their boxes written as ``kind`` labels: rectangles as polygons (segment) or
    as 4 corners (obb), or boxes with 17 unlabelled keypoints (pose)."""
    import yaml

    names = yaml.safe_load((src / "data.yaml").read_text())["names"]
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    for im in sorted((src / "images" / "val2017").glob("*.jpg"))[:n]:
        (root / "images" / "val" / im.name).symlink_to(im)
        lines = []
        for ln in (src / "labels" / "val2017" / f"{im.stem}.txt").read_text().splitlines():
            c, cx, cy, w, h = ln.split()[:5]
            x, y, bw, bh = float(cx), float(cy), float(w), float(h)
            x1, y1, x2, y2 = x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2
            if kind == "pose":
                lines.append(f"{c} {cx} {cy} {w} {h} " + " ".join(["0 0 0"] * 17))
            else:
                lines.append(f"{c} {x1:.5f} {y1:.5f} {x2:.5f} {y1:.5f} {x2:.5f} {y2:.5f} {x1:.5f} {y2:.5f}")
        (root / "labels" / "val" / f"{im.stem}.txt").write_text("\n".join(lines) + "\n")
    cfg: dict = {"path": str(root), "train": "images/val", "val": "images/val", "names": names}
    if kind == "pose":
        cfg["kpt_shape"] = [17, 3]
    (root / "data.yaml").write_text(yaml.safe_dump(cfg))
    return root / "data.yaml"


@pytest.mark.slow
def test_eval_uses_the_validator_of_each_task(zoo_onnx, yolo_pt: Path, shared_assets: Path, tmp_path: Path) -> None:
    from trtq.evaluate import evaluate

    src = shared_assets / "coco128"
    seg_data = _labels_from_boxes(src, tmp_path / "seg", "segment")
    detector = evaluate(zoo_onnx("yolov8n.yaml", weights=yolo_pt, imgsz=320), seg_data, imgsz=320)
    seg = evaluate(zoo_onnx("yolov8n-seg.yaml", weights=yolo_pt, nc=80, imgsz=320), seg_data, imgsz=320)
    assert (detector["task"], detector["metric"]) == ("detect", "box") and "box" not in detector
    assert (seg["task"], seg["metric"]) == ("segment", "mask")
    # the transplanted detection head finds the same boxes as the detector: same box mAP
    assert seg["box"]["map50_95"] == pytest.approx(detector["map50_95"], abs=1e-6) and detector["map50_95"] > 0.2
    assert 0 < seg["map50_95"] < seg["box"]["map50_95"]  # rectangles are poor masks of real objects
    obb = evaluate(
        zoo_onnx("yolov8n-obb.yaml", weights=yolo_pt, nc=80, imgsz=320), _labels_from_boxes(src, tmp_path / "obb", "obb"), imgsz=320
    )
    assert (obb["task"], obb["metric"]) == ("obb", "obb") and obb["map50"] > 0.1
    pose = evaluate(
        zoo_onnx("yolov8n-pose.yaml", weights=yolo_pt, nc=80, imgsz=320), _labels_from_boxes(src, tmp_path / "pose", "pose"), imgsz=320
    )
    assert (pose["task"], pose["metric"]) == ("pose", "pose")
    assert pose["box"]["map50_95"] == pytest.approx(detector["map50_95"], abs=1e-3)


def test_cli_eval_of_a_pose_model_on_detection_labels_says_why(tmp_path: Path, val_yaml: Path) -> None:
    import onnx

    from tests.unit.test_runtime_models import make_tiny_yolo_onnx

    model = onnx.load(str(make_tiny_yolo_onnx(tmp_path / "tiny.onnx")))
    for prop in model.metadata_props:
        if prop.key == "task":
            prop.value = "pose"
    onnx.save(model, str(tmp_path / "pose.onnx"))
    _one_line_failure(["eval", str(tmp_path / "pose.onnx"), "--data", str(val_yaml)], "no keypoint labels")
