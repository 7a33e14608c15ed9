"""`trtq build` from the command line on a machine without TensorRT: CPU steps, then exit code 3."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from calibrators.table import CalibrationTable
from tests.conftest import make_tiny_conv_onnx
from tests.fakes import make_qdq_onnx, write_images
from trtq.cli import main
from trtq.errors import EXIT_MISSING_TENSORRT


@pytest.fixture
def no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)


def test_build_exits_3_with_finish_commands(tmp_path: Path, no_tensorrt: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import trtq.quantize

    monkeypatch.setattr(trtq.quantize, "quantize", lambda model, source, options, **kw: SimpleNamespace(
        path=make_qdq_onnx(Path(model), Path(kw["output"]))))
    tiny = make_tiny_conv_onnx(tmp_path / "tiny.onnx")
    images = write_images(tmp_path / "img", 4)
    out = tmp_path / "engines" / "tiny.int8.engine"
    res = CliRunner().invoke(main, ["build", str(tiny), "--int8", "--calib", str(images), "-o", str(out)])
    assert res.exit_code == EXIT_MISSING_TENSORRT, res.output
    text = res.output
    assert "trtq: error: TensorRT is needed to build the engine" in text
    assert f"trtq build {tmp_path}/engines/tiny.int8.onnx" in text
    assert "--int8 --cache" in text and "Traceback" not in text
    assert CalibrationTable.load(tmp_path / "engines" / "tiny.percentile.cache").num_images == 4
    assert not out.exists()


def test_build_fp16_without_tensorrt(tmp_path: Path, no_tensorrt: None) -> None:
    tiny = make_tiny_conv_onnx(tmp_path / "tiny.onnx")
    res = CliRunner().invoke(main, ["build", str(tiny), "--fp16", "-o", str(tmp_path / "t.engine")])
    assert res.exit_code == 3
    assert f"trtq build {tiny} --fp16 --output {tmp_path / 't.engine'}" in res.output  # keeps the user's -o


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["build", str(tmp_path / "nope.onnx")])
    assert res.exit_code == 2 and res.output.strip().startswith("trtq: error: model not found")


@pytest.mark.slow
def test_build_pt_end_to_end_without_tensorrt(tmp_path: Path, yolo_pt: Path, calib_dir: Path, no_tensorrt: None,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The main job on the shared model: export, CPU calibration (cache + record), Q/DQ ONNX, exit 3."""
    import onnx

    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["build", str(yolo_pt), "--int8", "--calib", str(calib_dir), "--num-images", "4"])
    assert res.exit_code == EXIT_MISSING_TENSORRT, res.output
    engines = tmp_path / "engines"
    cache = engines / "yolov8n-coco.percentile.cache"
    qdq = engines / "yolov8n-coco.int8.onnx"
    assert (engines / "yolov8n-coco.onnx").is_file() and cache.is_file() and qdq.is_file()
    table = CalibrationTable.load(cache)
    assert table.num_images == 4 and table.algorithm == "percentile" and len(table.amax) > 100
    assert sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(qdq)).graph.node) > 50
    assert f"trtq build {Path('engines') / 'yolov8n-coco.int8.onnx'}" in res.output
