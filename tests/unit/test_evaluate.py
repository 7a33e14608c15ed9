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
