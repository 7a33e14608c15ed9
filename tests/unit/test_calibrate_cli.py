"""`trtq calibrate` end to end on a tiny model and synthetic images: outputs, determinism, bad input."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from calibrators.table import CalibrationTable, parse_trt_cache
from trtq.cli import main


@pytest.fixture
def images(tmp_path: Path) -> Path:
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        img = rng.integers(0, 255, (40 + 7 * i, 50, 3), dtype=np.uint8)
        cv2.imwrite(str((d / "sub" if i % 2 else d) / f"im{i}.jpg"), img)
    return d


def run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, list(args))
    return res.exit_code, res.output


def test_calibrate_writes_cache_and_sidecar(tiny_conv_onnx: Path, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "tiny.cache"
    code, text = run("calibrate", str(tiny_conv_onnx), "--calib", str(images), "-o", str(out), "--trt-version", "8.6.1")
    assert code == 0, text
    assert "calibrated" in text and "6 images" in text
    header, scales = parse_trt_cache(out.read_bytes())
    assert header == "TRT-8601-EntropyCalibration2"
    graph = onnx.load(str(tiny_conv_onnx)).graph
    tensors = {t for n in graph.node for t in n.output} | {i.name for i in graph.input}
    assert set(scales) <= tensors and "images" in scales and "output0" in scales
    table = CalibrationTable.load(out)
    assert table.num_images == 6 and table.algorithm == "percentile"  # the default
    for name, scale in scales.items():
        assert scale == pytest.approx(table.amax[name] / 127, rel=1e-6)
    # The input is in [0, 1]: its range can be no more than 1.
    assert table.amax["images"] <= 1.0 + 1e-6
    assert not list(out.parent.glob("*.trtq-tmp*"))


def test_same_inputs_give_byte_identical_cache(tiny_conv_onnx: Path, images: Path, tmp_path: Path) -> None:
    caches = []
    for i in range(2):
        out = tmp_path / f"c{i}.cache"
        code, text = run("calibrate", str(tiny_conv_onnx), "--calib", str(images), "--algo", "percentile", "-o", str(out))
        assert code == 0, text
        caches.append(out.read_bytes())
    assert caches[0] == caches[1]
    # A different seed with a subset picks other images: the ranges change.
    out = tmp_path / "c2.cache"
    code, _ = run("calibrate", str(tiny_conv_onnx), "--calib", str(images), "--algo", "percentile", "--num-images", "2", "--seed", "5", "-o", str(out))
    assert code == 0 and out.read_bytes() != caches[0]


@pytest.mark.parametrize("algo", ["entropy", "minmax", "percentile", "mse"])
def test_every_algorithm_runs(tiny_conv_onnx: Path, images: Path, tmp_path: Path, algo: str) -> None:
    out = tmp_path / f"{algo}.cache"
    code, text = run("calibrate", str(tiny_conv_onnx), "--calib", str(images), "--algo", algo, "-o", str(out))
    assert code == 0, text
    header, _ = parse_trt_cache(out.read_bytes())
    assert header.endswith("MinMaxCalibration" if algo == "minmax" else "EntropyCalibration2")


def _assert_one_line_error(code: int, text: str, *needles: str) -> None:
    assert code != 0
    errors = [ln for ln in text.replace("\r", "\n").splitlines() if "trtq: error:" in ln]
    assert len(errors) == 1, text  # warnings may precede it; the error itself is one line
    assert "Traceback" not in text
    for n in needles:
        assert n in text, text


def test_bad_inputs_give_one_line_errors_and_no_file(tiny_conv_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.cache"
    empty = tmp_path / "empty"
    empty.mkdir()
    code, text = run("calibrate", str(tiny_conv_onnx), "--calib", str(empty), "-o", str(out))
    _assert_one_line_error(code, text, "no images", str(empty))

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    (junk / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code, text = run("calibrate", str(tiny_conv_onnx), "--calib", str(junk), "-o", str(out))
    _assert_one_line_error(code, text, "usable")

    fake_model = tmp_path / "model.onnx"
    fake_model.write_text("not an onnx file")
    code, text = run("calibrate", str(fake_model), "--calib", str(junk), "-o", str(out))
    _assert_one_line_error(code, text, "not a readable ONNX")

    code, text = run("calibrate", str(tmp_path / "missing.onnx"), "--calib", str(junk), "-o", str(out))
    _assert_one_line_error(code, text, "not found")

    code, text = run("calibrate", str(tmp_path / "yolo.pt"), "--calib", str(junk), "-o", str(out))
    _assert_one_line_error(code, text, "trtq export")

    code, text = run("calibrate", str(tiny_conv_onnx), "--calib", str(junk), "--trt-version", "ten", "-o", str(out))
    _assert_one_line_error(code, text)
    assert not out.exists() and not Path(str(out) + ".json").exists()
    assert not list(tmp_path.glob("**/*.trtq-tmp*"))


def test_corrupt_images_are_skipped_and_counted(tiny_conv_onnx: Path, images: Path, tmp_path: Path) -> None:
    (images / "corrupt.jpg").write_bytes(b"garbage")
    out = tmp_path / "c.cache"
    code, text = run("calibrate", str(tiny_conv_onnx), "--calib", str(images), "-o", str(out))
    assert code == 0, text
    assert "1 unreadable skipped" in text and "6 images" in text


def test_model_with_two_inputs_is_refused(tmp_path: Path, images: Path) -> None:
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"])],
        "two",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 8, 8]) for n in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    p = tmp_path / "two.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(p))
    code, text = run("calibrate", str(p), "--calib", str(images), "-o", str(tmp_path / "t.cache"))
    _assert_one_line_error(code, text, "2 inputs")


def test_quantize_refuses_a_cache_made_from_another_model(tiny_conv_onnx: Path, images: Path, tmp_path: Path) -> None:
    """Like build, quantize refuses a foreign cache (one line, non-zero exit) unless --force-cache."""
    from tests.conftest import make_tiny_conv_onnx

    cache = tmp_path / "tiny.cache"
    code, text = run("calibrate", str(tiny_conv_onnx), "--calib", str(images), "-o", str(cache))
    assert code == 0, text
    other = make_tiny_conv_onnx(tmp_path / "other.onnx", seed=7)  # same tensor names, other weights
    code, text = run("quantize", str(other), "--cache", str(cache), "-o", str(tmp_path / "o.onnx"))
    assert code == 2 and "model sha256 differs" in text and "--force-cache" in text, text
    assert [line for line in text.splitlines() if "error" in line][0].startswith("trtq: error: calibration cache")
    assert "Traceback" not in text
    assert not (tmp_path / "o.onnx").exists()
    code, text = run("quantize", str(other), "--cache", str(cache), "--force-cache", "-o", str(tmp_path / "o.onnx"))
    assert code == 0 and (tmp_path / "o.onnx").is_file(), text
    code, text = run("quantize", str(tiny_conv_onnx), "--cache", str(cache), "-o", str(tmp_path / "t.onnx"))
    assert code == 0, text


@pytest.mark.parametrize("version", ["11.0.0", "7.2.3"])
def test_calibrate_refuses_a_tensorrt_without_implicit_int8(tiny_conv_onnx: Path, version: str) -> None:
    result = CliRunner().invoke(main, ["calibrate", str(tiny_conv_onnx), "--calib", "x", "--trt-version", version])
    assert result.exit_code == 2 and "implicit INT8" in result.output and "Traceback" not in result.output
