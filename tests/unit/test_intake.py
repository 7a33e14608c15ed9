"""Model intake: what trtq accepts (opset 11-12, FP16, external data, dynamic batch, rectangular input)
and what it refuses with one line (classification, > 2 GB), at the start of every command."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import make_tiny_conv_onnx
from tests.fakes import write_images
from trtq.cli import main
from trtq.errors import TrtqError
from trtq.modelinfo import check_model, model_sha256, read_model_info


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return write_images(tmp_path / "images", 4)


def make_classifier_onnx(path: Path, *, metadata: bool = True) -> Path:
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["images", "w"], ["c"], name="conv"),
        helper.make_node("GlobalAveragePool", ["c"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["output0"], name="flat"),
    ]
    graph = helper.make_graph(
        nodes, "cls",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(rng.standard_normal((10, 3, 3, 3)).astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata:
        for k, v in (("task", "classify"), ("names", str({i: f"c{i}" for i in range(10)}))):
            p = model.metadata_props.add()
            p.key, p.value = k, v
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("metadata", [True, False])
@pytest.mark.parametrize("command", ["calibrate", "quantize", "build"])
def test_classification_is_refused_with_one_line(tmp_path: Path, images: Path, command: str, metadata: bool,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    model = make_classifier_onnx(tmp_path / "cls.onnx", metadata=metadata)
    args = [command, str(model), "--calib", str(images)] + (["--int8"] if command == "build" else [])
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "classification" in lines[0] and "detect, segment, pose and obb" in lines[0]
    assert not list(tmp_path.glob("cls.*.cache")) and not list(tmp_path.glob("cls.int8*"))  # refused before any work


def test_layout_is_read_from_metadata_and_unknown_layouts_pass_with_a_warning(tmp_path: Path) -> None:
    tiny = read_model_info(make_tiny_conv_onnx(tmp_path / "t.onnx"))
    assert check_model(tiny) is None  # no task metadata, not a YOLO layout: calibration still works


def _with_external_data(src: Path, dst: Path) -> Path:
    model = onnx.load(str(src))
    onnx.save(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True, location=f"{dst.name}.data",
              size_threshold=0)
    return dst


def test_external_data_is_hashed_so_stale_caches_are_caught(tmp_path: Path, images: Path) -> None:
    model = _with_external_data(make_tiny_conv_onnx(tmp_path / "src.onnx"), tmp_path / "ext.onnx")
    data = tmp_path / "ext.onnx.data"
    info = read_model_info(model)
    assert info.external_data == (data,)
    before = info.sha256
    assert before == model_sha256(model) and before != model_sha256(tmp_path / "src.onnx")
    res = CliRunner().invoke(main, ["calibrate", str(model), "--calib", str(images), "-o", str(tmp_path / "ext.cache")])
    assert res.exit_code == 0, res.output
    from calibrators.table import CalibrationTable

    table = CalibrationTable.load(tmp_path / "ext.cache")
    assert table.model_sha256 == before
    raw = bytearray(data.read_bytes())
    raw[0] ^= 0xFF  # the weights changed, the .onnx did not
    data.write_bytes(bytes(raw))
    after = read_model_info(model).sha256
    assert after != before and table.differences(model_sha256=after)
    res = CliRunner().invoke(main, ["quantize", str(model), "--calib", str(images), "-o", str(tmp_path / "q.onnx")])
    assert res.exit_code == 0, res.output
    assert not onnx.load(str(tmp_path / "q.onnx"), load_external_data=False).graph.initializer[0].external_data


def test_missing_external_data_and_too_large_models_are_refused(tmp_path: Path, images: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    model = _with_external_data(make_tiny_conv_onnx(tmp_path / "src.onnx"), tmp_path / "ext.onnx")
    import trtq.modelinfo

    monkeypatch.setattr(trtq.modelinfo, "MAX_MODEL_BYTES", 1000)
    res = CliRunner().invoke(main, ["calibrate", str(model), "--calib", str(images)])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and "up to 2 GB" in res.output
    monkeypatch.undo()
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(TrtqError, match="is missing"):
        read_model_info(model)


def test_opset_12_calibrates_as_is_and_quantizes_at_13(tmp_path: Path, images: Path) -> None:
    m12 = onnx.load(str(make_tiny_conv_onnx(tmp_path / "t17.onnx")))
    m12.opset_import[0].version = 12  # its ops mean the same at opset 12
    onnx.checker.check_model(m12)
    onnx.save(m12, str(tmp_path / "t12.onnx"))
    res = CliRunner().invoke(main, ["calibrate", str(tmp_path / "t12.onnx"), "--calib", str(images)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["quantize", str(tmp_path / "t12.onnx"), "--calib", str(images), "-o", str(tmp_path / "q.onnx")])
    assert res.exit_code == 0, res.output
    q = onnx.load(str(tmp_path / "q.onnx"))
    assert next(o.version for o in q.opset_import if o.domain in ("", "ai.onnx")) == 13
    report = (tmp_path / "q.report.md").read_text()
    assert "opset 12 was upgraded to 13" in report


def test_fp16_model_gets_float32_statistics_and_fp16_scales(tmp_path: Path, images: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from trtq.qdqcheck import output_cosines, raw_outputs

    f32 = make_tiny_conv_onnx(tmp_path / "t.onnx")
    f16 = tmp_path / "t16.onnx"
    onnx.save(convert_float_to_float16(onnx.load(str(f32)), keep_io_types=False), str(f16))
    assert read_model_info(f16).float_dtype == "float16"
    for path, cache in ((f32, "a.cache"), (f16, "b.cache")):
        res = CliRunner().invoke(main, ["calibrate", str(path), "--calib", str(images), "-o", str(tmp_path / cache)])
        assert res.exit_code == 0, res.output
    from calibrators.table import CalibrationTable

    a, b = CalibrationTable.load(tmp_path / "a.cache"), CalibrationTable.load(tmp_path / "b.cache")
    assert set(a.amax) == set(b.amax)  # the same tensors, so the cache applies to the FP16 model
    assert all(b.amax[t] == pytest.approx(a.amax[t], rel=0.02, abs=1e-3) for t in a.amax)
    res = CliRunner().invoke(main, ["quantize", str(f16), "--calib", str(images), "-o", str(tmp_path / "q16.onnx")])
    assert res.exit_code == 0, res.output
    q = onnx.load(str(tmp_path / "q16.onnx"))
    assert next(o.version for o in q.opset_import if o.domain in ("", "ai.onnx")) == 19
    inits = {i.name: i for i in q.graph.initializer}
    scales = [inits[n.input[1]] for n in q.graph.node if n.op_type == "DequantizeLinear"]
    assert scales and all(s.data_type == TensorProto.FLOAT16 for s in scales)
    feeds = [{"images": np.random.default_rng(i).random((1, 3, 32, 32), dtype=np.float32)} for i in range(3)]
    assert min(output_cosines(raw_outputs(str(f32), feeds), raw_outputs(str(tmp_path / "q16.onnx"), feeds))) > 0.98
