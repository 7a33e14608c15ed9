"""trtq.cpu_target: the INT8 layout ONNX Runtime's CPU provider runs as integer kernels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from tests.conftest import make_tiny_conv_onnx
from tests.fakes import write_images
from tests.fakes.fake_device import FakeDevice
from tests.fakes.fake_tensorrt import make_fake_tensorrt
from trtq.cpu_target import (
    TARGET_CPU,
    TARGET_TENSORRT,
    model_target,
    ort_optimized_ops,
    plan_cpu,
    qparams,
    quantize_cpu,
)
from trtq.errors import TrtqError
from trtq.quantize_options import QuantizeOptions

TINY_HEAD = {"/model.4/Conv": "final head conv (test)"}


def _run(path: Path | str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ---------------------------------------------------------------------------------------------------- math
def test_asymmetric_parameters_match_the_reference_example() -> None:
    # [-10, 10], 8 bits: S = 20/255, Z = 128 and 5.0 -> round(63.75) + 128 = 192 (calibration-math.md)
    p = qparams(-10.0, 10.0, "u8")
    assert p.scale == pytest.approx(20 / 255)
    assert p.zero_point == 128
    assert int(np.clip(np.rint(5.0 / p.scale) + p.zero_point, 0, 255)) == 192


def test_asymmetric_parameters_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        lo, hi = -rng.uniform(0, 3), rng.uniform(0.1, 20)
        p = qparams(lo, hi)
        x = np.linspace(lo, hi, 1001)
        q = np.clip(np.rint(x / p.scale) + p.zero_point, 0, 255)
        xr = (q - p.zero_point) * p.scale
        assert np.max(np.abs(xr - x)) <= p.scale * 0.5 + 1e-6 + abs(lo - (0 - p.zero_point) * p.scale)
        assert (0 - p.zero_point) * p.scale <= lo + p.scale  # the grid reaches lo
        assert abs((0 - p.zero_point) * p.scale - lo) <= p.scale  # and does not waste codes below it
        # zero is exactly representable (padding, ReLU-like zeros)
        assert ((np.rint(0.0 / p.scale) + p.zero_point) - p.zero_point) * p.scale == 0.0
    # a non-negative range uses every code for [0, hi]
    p = qparams(0.0, 1.0)
    assert p.zero_point == 0 and p.scale == pytest.approx(1 / 255)


# ---------------------------------------------------------------------------------------------------- layout
def test_plan_quantizes_the_body_and_keeps_the_head_float(tiny_conv_onnx: Path) -> None:
    m = onnx.load(str(tiny_conv_onnx))
    plan = plan_cpu(m, keep_float=TINY_HEAD)
    assert plan.float_nodes == TINY_HEAD
    assert plan.int_nodes["/model.0/conv/Conv"] == "QLinearConv"
    assert plan.int_nodes["/model.0/act/Sigmoid"] == "QLinearSigmoid"
    assert plan.int_nodes["/model.0/act/Mul"] == "QLinearMul"
    assert plan.int_nodes["/model.1/Add"] == "QLinearAdd"
    assert plan.int_nodes["/model.3/Concat"] == "QLinearConcat"
    # MaxPool runs on the 8-bit tensor: its output shares its input's parameters
    assert plan.tensors["p1"] == "r1"
    assert set(plan.weights.values()) == {"w0", "w1"}
    # SiLU left float: the Sigmoid/Mul stay float and the next conv's input is quantized on its own
    plan_f = plan_cpu(m, keep_float=TINY_HEAD, silu="float")
    assert "/model.0/act/Mul" in plan_f.float_nodes and "/model.0/act/Sigmoid" in plan_f.float_nodes
    assert plan_f.tensors["a0"] == "a0"


def test_quantized_convs_become_integer_kernels_and_stay_close(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trtq.headpolicy

    monkeypatch.setattr(trtq.headpolicy, "float_nodes", lambda model: dict(TINY_HEAD))
    model = make_tiny_conv_onnx(tmp_path / "tiny.onnx", hw=32)
    images = write_images(tmp_path / "images", 8, size=(32, 32))
    r = quantize_cpu(model, images, QuantizeOptions(target="cpu", progress=False), output=tmp_path / "tiny.cpu.onnx")
    # ONNX Runtime's optimized graph: every quantized conv is a QLinearConv, the head conv stays float
    ops = ort_optimized_ops(r.path)
    assert ops["QLinearConv"] == len(r.plan.weights) == 2
    assert ops["Conv"] == 1
    assert ops["QLinearSigmoid"] == 1 and ops["QLinearMul"] == 1 and ops["QLinearAdd"] == 1
    assert r.report["ort_kernels"]["QLinearConv"] == 2
    assert model_target(r.path) == TARGET_CPU
    rep = json.loads(r.report_path.read_text())
    assert rep["target"] == TARGET_CPU
    assert any(f["node"] == "/model.4/Conv" and f["reason"] for f in rep["float_nodes"])
    assert "Nodes kept in float" in r.markdown_path.read_text()
    x = np.random.default_rng(1).random((1, 3, 32, 32), dtype=np.float32)
    assert _cosine(_run(model, x), _run(r.path, x)) > 0.99


def test_tensorrt_target_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trtq.headpolicy
    from trtq.quantize import quantize

    monkeypatch.setattr(trtq.headpolicy, "float_nodes", lambda model: dict(TINY_HEAD))
    model = make_tiny_conv_onnx(tmp_path / "tiny.onnx", hw=32)
    r = quantize(model, write_images(tmp_path / "im", 4, size=(32, 32)), QuantizeOptions(progress=False),
                 output=tmp_path / "q.onnx")
    assert model_target(r.path) == TARGET_TENSORRT
    assert r.report["target"] == TARGET_TENSORRT
    assert model_target(model) is None


# ---------------------------------------------------------------------------------------------------- refusals
def test_tensorrt_builder_refuses_a_cpu_target_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trtq.headpolicy
    from trtq.trt.builder import build_engine

    monkeypatch.setattr(trtq.headpolicy, "float_nodes", lambda model: dict(TINY_HEAD))
    model = make_tiny_conv_onnx(tmp_path / "tiny.onnx", hw=32)
    images = write_images(tmp_path / "im", 4, size=(32, 32))
    r = quantize_cpu(model, images, QuantizeOptions(target="cpu", progress=False), output=tmp_path / "t.cpu.onnx")
    trt = make_fake_tensorrt("10.3.0")
    with pytest.raises(TrtqError, match="quantized for the CPU") as exc:
        build_engine(r.path, trt_module=trt, output=tmp_path / "e.engine", device=FakeDevice(), progress=False)
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "e.engine").exists()
    # the CLI says it in one line, and `trtq inspect` shows the target
    from trtq.cli import main

    res = CliRunner().invoke(main, ["build", str(r.path)])
    assert res.exit_code != 0 and "quantized for the CPU" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["inspect", str(r.path)])
    assert res.exit_code == 0 and "trtq_target    cpu" in res.output
    # the FP32 model still builds with the same fake
    build_engine(model, trt_module=make_fake_tensorrt("10.3.0"), output=tmp_path / "f.engine", device=FakeDevice(), progress=False)


def test_cli_target_cpu_writes_the_model_and_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trtq.headpolicy
    from trtq.cli import main

    monkeypatch.setattr(trtq.headpolicy, "float_nodes", lambda model: dict(TINY_HEAD))
    model = make_tiny_conv_onnx(tmp_path / "tiny.onnx", hw=32)
    images = write_images(tmp_path / "im", 4, size=(32, 32))
    res = CliRunner().invoke(main, ["quantize", str(model), "--calib", str(images), "--target", "cpu"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "tiny.int8.cpu.onnx"
    assert out.is_file() and "2 QLinearConv" in res.output
    rep = json.loads((tmp_path / "tiny.int8.cpu.report.json").read_text())
    assert rep["algorithm"] == "mse" and rep["target"] == TARGET_CPU
    # auto: this CPU, and the output says which ISA and why
    assert "CPU ISA " in res.output and "auto: this CPU" in res.output
    assert rep["options"]["cpu_isa"] in ("avx2", "avx-vnni", "avx512-vnni", "arm64")
    res = CliRunner().invoke(main, ["quantize", str(model), "--calib", str(images), "--target", "cpu",
                                    "--cpu-isa", "arm64", "-o", str(tmp_path / "arm.onnx"), "--ref-images", "0"])
    assert res.exit_code == 0, res.output
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "arm.onnx")).metadata_props}
    assert meta["trtq_cpu_isa"] == "arm64" and meta["trtq_cpu_weights"] == "s8"
    assert "CPU ISA arm64 (asked for (--cpu-isa))" in res.output
    res = CliRunner().invoke(main, ["quantize", str(model), "--calib", str(images), "--reduce-range"])
    assert res.exit_code != 0 and "--reduce-range applies to --target cpu only" in res.output
    res = CliRunner().invoke(main, ["quantize", str(model), "--calib", str(images), "--cpu-isa", "avx2"])
    assert res.exit_code != 0 and "--cpu-isa applies to --target cpu only" in res.output


def test_cli_target_cpu_rejects_tensorrt_only_options(tiny_conv_onnx: Path, tmp_path: Path) -> None:
    from trtq.cli import main

    res = CliRunner().invoke(main, ["quantize", str(tiny_conv_onnx), "--calib", str(tmp_path), "--target", "cpu", "--max-drop", "1"])
    assert res.exit_code != 0
    assert "--max-drop applies to --target tensorrt only" in res.output
    assert "Traceback" not in res.output


def test_refuses_an_already_quantized_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trtq.headpolicy

    monkeypatch.setattr(trtq.headpolicy, "float_nodes", lambda model: dict(TINY_HEAD))
    model = make_tiny_conv_onnx(tmp_path / "tiny.onnx", hw=32)
    images = write_images(tmp_path / "im", 4, size=(32, 32))
    r = quantize_cpu(model, images, QuantizeOptions(target="cpu", progress=False), output=tmp_path / "a.onnx")
    with pytest.raises(TrtqError, match="already quantized"):
        quantize_cpu(r.path, images, QuantizeOptions(target="cpu", progress=False), output=tmp_path / "b.onnx")
    assert not (tmp_path / "b.onnx").exists()


def test_conv_output_before_silu_is_measured_not_aliased(tiny_conv_onnx: Path, tmp_path: Path) -> None:
    from calibrators.collect import collect_histograms

    rng = np.random.default_rng(0)
    batches = [{"images": rng.random((1, 3, 32, 32), dtype=np.float32)} for _ in range(2)]
    ref = np.concatenate([_run_tensor(tiny_conv_onnx, b["images"], "c0") for b in batches])
    fused = collect_histograms(tiny_conv_onnx, batches, ["c0"])["c0"]
    measured = collect_histograms(tiny_conv_onnx, batches, ["c0"], fused_silu=False)["c0"]
    # TensorRT fuses the SiLU: the Conv output takes the SiLU output's range (min >= -0.2785)
    assert fused.min_value >= -0.2785 > float(ref.min())
    # the CPU target quantizes the Conv output itself: its real range
    assert measured.min_value == pytest.approx(float(ref.min()), rel=1e-5)
    assert measured.max_value == pytest.approx(float(ref.max()), rel=1e-5)


def _run_tensor(model: Path, x: np.ndarray, name: str) -> np.ndarray:
    import onnxruntime as ort

    m = onnx.load(str(model))
    m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run([name], {"images": x})[0]


# ---------------------------------------------------------------------------------------------------- real model
@pytest.mark.slow
def test_yolov8n_cpu_target_fuses_every_quantized_conv_and_stays_close(
    yolo_onnx: Path, calib_dir: Path, shared_assets: Path, tmp_path: Path
) -> None:
    from trtq.images import ImageBatcher
    from trtq.modelinfo import read_model_info

    out = tmp_path / "yolov8n.int8.cpu.onnx"
    r = quantize_cpu(yolo_onnx, calib_dir, QuantizeOptions(target="cpu", num_images=8, progress=False), output=out)
    convs = sum(1 for n in onnx.load(str(yolo_onnx)).graph.node if n.op_type == "Conv")
    assert len(r.plan.weights) == convs - 7  # six final head convs and the DFL conv stay float
    ops = ort_optimized_ops(out)  # via SessionOptions.optimized_model_filepath
    assert ops["QLinearConv"] == len(r.plan.weights)
    assert ops["Conv"] == 7
    val = shared_assets / "coco128" / "images" / "val2017"
    batcher = ImageBatcher.from_model(val, read_model_info(yolo_onnx), num_images=4, seed=0)
    for feed in batcher:
        x = next(iter(feed.values()))
        assert _cosine(_run(yolo_onnx, x), _run(out, x)) >= 0.98
    # the runtime's Detector runs it like any ONNX model and finds what FP32 finds
    import cv2

    from trtq.runtime import Detector

    img = cv2.imread(str(val / "000000000139.jpg"))
    with Detector(yolo_onnx) as ref, Detector(out) as cand:
        a, b = ref(img)[0], cand(img)[0]
    assert len(a) > 0
    strong = {n for n, s in zip(a.names, a.scores, strict=True) if s > 0.5}
    assert strong <= set(b.names)


def test_reduce_range_stores_7_bit_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from onnx import numpy_helper

    import trtq.headpolicy

    monkeypatch.setattr(trtq.headpolicy, "float_nodes", lambda model: dict(TINY_HEAD))
    model = make_tiny_conv_onnx(tmp_path / "tiny.onnx", hw=32)
    images = write_images(tmp_path / "im", 4, size=(32, 32))
    for reduce, bound in ((False, 127), (True, 63)):
        # full 8 bits: the layout of CPUs that accumulate in int32 (the avx2 one limits some pairs)
        options = QuantizeOptions(target="cpu", reduce_range=reduce, cpu_isa="avx512-vnni", progress=False)
        r = quantize_cpu(model, images, options, output=tmp_path / f"r{reduce}.onnx")
        q = onnx.load(str(r.path))
        w = [numpy_helper.to_array(i) for i in q.graph.initializer if i.name in ("w0_quantized", "w1_quantized")]
        assert len(w) == 2
        assert max(int(np.abs(a.astype(np.int32)).max()) for a in w) == bound
        assert ort_optimized_ops(r.path)["QLinearConv"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["shared-bias", "opset12", "fp16-float-io"])
def test_cpu_target_takes_every_model_the_tensorrt_target_takes(variant: str, zoo_onnx, yolo_pt, calib_dir, tmp_path) -> None:
    """A bias initializer shared by several convs (ultralytics' simplifier merges equal ones: the pose head),
    an opset-12 export (upgraded as for the TensorRT target), an FP16 model whose converter appended its
    Casts at the end of the graph (ONNX Runtime's float16 tool with float inputs)."""
    import onnx

    from trtq.cpu_target import quantize_cpu

    if variant == "opset12":
        model = zoo_onnx("yolov8n.yaml", weights=yolo_pt, imgsz=320, opset=12)
    else:
        model = zoo_onnx("yolov8n-pose.yaml", weights=yolo_pt, nc=80, imgsz=320)
    if variant == "shared-bias":
        m = onnx.load(str(model))
        readers: dict[str, int] = {}
        for n in m.graph.node:
            if n.op_type == "Conv" and len(n.input) > 2:
                readers[n.input[2]] = readers.get(n.input[2], 0) + 1
        assert max(readers.values()) > 1  # what this case is about
    if variant == "fp16-float-io":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        half = convert_float_to_float16(onnx.load(str(model)), keep_io_types=True)
        model = tmp_path / "half.onnx"
        onnx.save(half, str(model))
    result = quantize_cpu(model, calib_dir, QuantizeOptions(target="cpu", num_images=4, progress=False),
                          output=tmp_path / "q.cpu.onnx")
    onnx.checker.check_model(onnx.load(str(result.path)))
    assert result.plan.weights
