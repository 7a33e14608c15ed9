"""Reference I/O in Polygraphy's formats (trtq.reference) and verification (trtq.verify, `trtq verify`)."""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from tests.fakes import fake_tensorrt, make_qdq_onnx, write_images
from tests.fakes.fake_device import FakeDevice
from tests.unit.test_runtime_engine import ort_compute, write_fake_engine
from tests.unit.test_runtime_models import make_tiny_yolo_onnx
from trtq.agreement import DEFAULT_TOLERANCE, compare_outputs, parse_tolerance
from trtq.engine_meta import engine_record_path, read_engine
from trtq.errors import TrtqError
from trtq.reference import (
    INPUTS_SUFFIX,
    OUTPUTS_SUFFIX,
    Reference,
    load_inputs,
    load_outputs,
    reference_paths,
    simulate_implicit,
    write_reference,
)
from trtq.verify import (
    VerificationFailed,
    polygraphy_debug_commands,
    polygraphy_run_engine_command,
    verify,
    verify_built_engine,
)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return write_images(tmp_path / "images", 8, size=(32, 32))


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return make_tiny_yolo_onnx(tmp_path / "tiny.onnx", batch=1)


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"images": x})[0])


def _zero_weight(src: Path, dst: Path, weight: str) -> Path:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    for init in model.graph.initializer:
        if init.name == weight:
            init.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(init)), weight))
    onnx.save(model, str(dst))
    return dst


# ------------------------------------------------------------------------------------------ reference files
def test_reference_files_load_with_polygraphy_load_json(tiny: Path, images: Path) -> None:
    from polygraphy.comparator import IterationResult, RunResults
    from polygraphy.json import load_json

    ref = write_reference(tiny, images, num_images=3, seed=1)
    assert ref.inputs_path == tiny.with_name("tiny" + INPUTS_SUFFIX)
    assert ref.outputs_path == tiny.with_name("tiny" + OUTPUTS_SUFFIX)
    feeds = load_json(str(ref.inputs_path))
    assert isinstance(feeds, list) and len(feeds) == 3
    for feed in feeds:
        assert isinstance(feed, dict) and list(feed) == ["images"]
        x = feed["images"]
        assert isinstance(x, np.ndarray) and x.dtype == np.float32 and x.shape == (1, 3, 32, 32)
        assert 0.0 <= x.min() and x.max() <= 1.0
    results = load_json(str(ref.outputs_path))
    assert isinstance(results, RunResults)
    (runner, iterations), = list(results.items())
    assert runner.startswith("onnxrt-runner") and len(iterations) == 3
    for feed, it in zip(feeds, iterations, strict=True):
        assert isinstance(it, IterationResult)
        out = it["output0"]
        assert isinstance(out, np.ndarray) and out.shape == (1, 6, 32 * 32)
        np.testing.assert_array_equal(out, _ort(tiny, feed["images"]))  # independently recomputed
    # trtq's own loaders agree
    assert len(load_inputs(ref.inputs_path)) == 3
    outs, name = load_outputs(ref.outputs_path)
    assert name == runner and np.array_equal(outs[0]["output0"], iterations[0]["output0"])


def test_reference_images_are_seeded_and_no_partial_file_on_failure(tiny: Path, images: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    a = load_inputs(write_reference(tiny, images, num_images=2, seed=3, folder=tmp_path / "a").inputs_path)
    b = load_inputs(write_reference(tiny, images, num_images=2, seed=3, folder=tmp_path / "b").inputs_path)
    c = load_inputs(write_reference(tiny, images, num_images=2, seed=4, folder=tmp_path / "c").inputs_path)
    assert all(np.array_equal(x["images"], y["images"]) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x["images"], y["images"]) for x, y in zip(a, c, strict=True))

    import trtq.reference

    def boom(*args: Any, **kw: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(trtq.reference, "save_outputs", boom)
    with pytest.raises(KeyboardInterrupt):
        write_reference(tiny, images, num_images=2, folder=tmp_path / "d")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["tiny" + INPUTS_SUFFIX]  # no temp file left


def test_bad_reference_files_are_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.ref-inputs.json"
    bad.write_text("{not json")
    with pytest.raises(TrtqError, match="not a Polygraphy inputs file"):
        load_inputs(bad)
    with pytest.raises(TrtqError, match="reference outputs not found"):
        load_outputs(tmp_path / "missing.json")


def test_reference_paths_are_shared_by_engine_and_qdq_onnx() -> None:
    assert reference_paths("engines/m.int8.engine") == reference_paths("engines/m.int8.onnx")
    assert reference_paths("engines/m.percentile.cache").inputs_path == Path("engines/m.percentile.ref-inputs.json")


# ------------------------------------------------------------------------------------------ implicit simulation
def test_implicit_simulation_quantizes_every_calibrated_layer_output(tmp_path: Path) -> None:
    import onnx

    from calibrators.table import CalibrationTable
    from tests.conftest import make_tiny_conv_onnx

    path = make_tiny_conv_onnx(tmp_path / "c.onnx")
    model = onnx.load(str(path))
    tensors = ["images", "c0", "s0", "a0", "c1", "r1", "p1", "cat", "output0"]
    table = CalibrationTable(amax={t: 4.0 for t in tensors}, algorithm="minmax")
    sim = simulate_implicit(model, table, head_policy=False)
    quantized = {n.input[0] for n in sim.graph.node if n.op_type == "QuantizeLinear"}
    # every layer output that TensorRT materialises; c0 / s0 are inside the fused Conv + SiLU
    assert {"images", "a0", "c1", "r1", "p1", "cat"} <= quantized
    assert not {"c0", "s0", "output0"} & quantized  # output0 has no reader
    assert {"w0", "w1", "w2"} <= quantized  # weights, per channel
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, 32, 32)).astype(np.float32)
    import onnxruntime as ort

    got = ort.InferenceSession(sim.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    ref = _ort(path, x)
    assert not np.array_equal(got, ref)  # quantization changed something ...
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.95  # ... but not much


# ------------------------------------------------------------------------------------------ ORT against ORT
def test_ort_verification_passes_own_and_fp32_reference_fails_tampered(tiny: Path, images: Path,
                                                                       tmp_path: Path) -> None:
    qdq = make_qdq_onnx(tiny, tmp_path / "tiny.int8.onnx", scale=1 / 127)
    own = write_reference(qdq, images, num_images=6)
    fp32 = write_reference(tiny, images, num_images=6, folder=tmp_path / "fp32")

    same = verify(qdq)  # finds its own reference beside it
    assert same.passed and same.backend == "onnxruntime" and same.images == 6
    assert same.outputs["output0"]["sqnr_db"] == float("inf") and same.outputs["output0"]["max_abs_error"] == 0.0
    assert same.detections is not None and same.detections["reference"] > 0 and same.detections["recall"] == 1.0

    vs_fp32 = verify(qdq, inputs=fp32.inputs_path, outputs=fp32.outputs_path)
    assert vs_fp32.passed and 20.0 < vs_fp32.outputs["output0"]["sqnr_db"] < float("inf")

    boxes_gone = _zero_weight(qdq, tmp_path / "nobox.onnx", "w_box")
    bad = verify(boxes_gone, inputs=own.inputs_path, outputs=own.outputs_path)
    assert not bad.passed and bad.outputs["output0"]["sqnr_db"] < DEFAULT_TOLERANCE.snr_db
    # scores are tiny next to box pixels: SQNR alone would pass; detection agreement catches it
    scores_gone = _zero_weight(qdq, tmp_path / "nocls.onnx", "w_cls")
    bad2 = verify(scores_gone, inputs=own.inputs_path, outputs=own.outputs_path)
    assert bad2.outputs["output0"]["passed"] and bad2.detections is not None
    assert bad2.detections["recall"] == 0.0 and not bad2.passed


def test_verify_cli_exit_codes(tiny: Path, images: Path, tmp_path: Path) -> None:
    from trtq.cli import main

    qdq = make_qdq_onnx(tiny, tmp_path / "tiny.int8.onnx", scale=1 / 127)
    write_reference(qdq, images, num_images=4)
    tampered = _zero_weight(qdq, tmp_path / "tiny.int8.bad.onnx", "w_box")
    runner = CliRunner()
    ok = runner.invoke(main, ["verify", str(qdq), "--json", str(tmp_path / "v.json")])
    assert ok.exit_code == 0, ok.output
    assert "PASSED" in ok.output and "output0" in ok.output and "recall" in ok.output
    assert json.loads((tmp_path / "v.json").read_text())["status"] == "passed"
    ins = reference_paths(qdq).inputs_path
    bad = runner.invoke(main, ["verify", str(tampered), "--inputs", str(ins)])
    assert bad.exit_code == 1 and "FAIL" in bad.output
    loose = runner.invoke(main, ["verify", str(tampered), "--inputs", str(ins), "--tolerance", "snr_db=-100",
                                 "--tolerance", "cosine=-1", "--tolerance", "recall=0", "--tolerance", "precision=0"])
    assert loose.exit_code == 0, loose.output
    missing = runner.invoke(main, ["verify", str(tiny)])
    assert missing.exit_code == 2 and "no reference recorded" in missing.output
    typo = runner.invoke(main, ["verify", str(qdq), "--tolerance", "snr=3"])
    assert typo.exit_code == 2 and "KEY=VALUE" in typo.output


def test_compare_outputs_independent_math() -> None:
    rng = np.random.default_rng(0)
    ref = [{"y": rng.standard_normal((1, 3, 4)).astype(np.float32)} for _ in range(3)]
    cand = [{"y": r["y"] + 0.1 * rng.standard_normal((1, 3, 4)).astype(np.float32)} for r in ref]
    res = compare_outputs(ref, cand)["outputs"]["y"]
    a = np.concatenate([r["y"].ravel() for r in ref]).astype(np.float64)
    b = np.concatenate([c["y"].ravel() for c in cand]).astype(np.float64)
    assert res["sqnr_db"] == pytest.approx(10 * np.log10(np.sum(a**2) / np.sum((a - b) ** 2)), rel=1e-5)
    assert res["cosine"] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), rel=1e-6)
    assert res["max_abs_error"] == pytest.approx(np.max(np.abs(a - b)), rel=1e-6)
    assert parse_tolerance(["snr-db=7"]).snr_db == 7.0


# ------------------------------------------------------------------------------------------ polygraphy commands
def _polygraphy_parse(cmd: str) -> argparse.Namespace:
    """Parse a command line with Polygraphy's own parser setup (as ``polygraphy.tools._main`` builds it)."""
    from polygraphy.tools.registry import TOOL_REGISTRY

    argv = shlex.split(cmd)
    assert argv[0] == "polygraphy"
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(title="Tools", dest="tools")
    sub.required = True
    for tool in TOOL_REGISTRY:
        tool.setup_parser(sub)
    args, unknown = parser.parse_known_args(argv[1:])
    assert unknown == [], unknown
    args.subcommand.parse(args)  # the tool's own argument groups validate the combination
    return args


def test_printed_polygraphy_commands_parse_with_polygraphys_parser(tmp_path: Path) -> None:
    ref = Reference(tmp_path / "m.int8.ref-inputs.json", tmp_path / "m.int8.ref-outputs.json")
    run = _polygraphy_parse(polygraphy_run_engine_command(tmp_path / "m.int8.engine", ref))
    assert run.model_file == str(tmp_path / "m.int8.engine") and run.model_type == "engine"
    assert run.load_inputs_paths == [str(ref.inputs_path)] and run.load_outputs_paths == [str(ref.outputs_path)]
    assert run.compare == ["cosine_similarity", "snr"] and run.check_average
    both, debug = polygraphy_debug_commands(tmp_path / "m.onnx", ref, cache=tmp_path / "m.cache")
    b = _polygraphy_parse(both)
    assert b.int8 and b.fp16 and b.calibration_cache == str(tmp_path / "m.cache")
    d = _polygraphy_parse(debug)
    assert type(d.subcommand).__name__ == "Precision"
    inner = _polygraphy_parse(shlex.join(d.check))
    assert inner.load_outputs_paths == [str(ref.outputs_path)]


# ------------------------------------------------------------------------------------------ TensorRT (fake)
class _Env:
    def __init__(self, trt: Any, device: FakeDevice) -> None:
        self.trt = trt
        self.device = device
        self._deserialize = trt.Runtime.deserialize_cuda_engine

    def compute_with(self, monkeypatch: pytest.MonkeyPatch, onnx_path: Path | None) -> None:
        """Every engine deserialized from now on computes ``onnx_path`` on ONNX Runtime (None: the fake's default)."""
        orig = self._deserialize

        def deserialize(runtime: Any, plan: Any) -> Any:
            engine = orig(runtime, plan)
            if engine is not None and onnx_path is not None:
                engine.compute = ort_compute(onnx_path)
            return engine

        monkeypatch.setattr(self.trt.Runtime, "deserialize_cuda_engine", deserialize)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Env]:
    trt = fake_tensorrt.install(monkeypatch, "10.3.0")
    dev = FakeDevice(compute_capability=(8, 7))
    import trtq.device

    monkeypatch.setattr(trtq.device, "get_device", lambda backend="auto", index=0: dev)
    yield _Env(trt, dev)


def test_engine_verification_through_fake_runtime_updates_the_record(env: _Env, tiny: Path, images: Path,
                                                                     tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    ref = write_reference(tiny, images, num_images=3, folder=tmp_path / "refs")
    engine = write_fake_engine(tmp_path / "tiny.int8.engine")
    env.compute_with(monkeypatch, tiny)
    record = verify_built_engine(engine, ref, onnx_path=tiny, precision="int8")
    assert record["status"] == "passed" and record["verified"] and record["backend"] == "tensorrt"
    assert len([c for c in env.trt.CALLS if c[0] == "context.execute_async_v3"]) == 3
    _, meta = read_engine(engine)
    assert meta is not None and meta.verification["status"] == "passed"
    assert meta.verification["reference"]["outputs"] == str(ref.outputs_path)
    # the engine finds the references recorded for it
    assert verify(engine).passed

    env.compute_with(monkeypatch, None)  # the fake's default output: per-image mean of the input
    before = engine.read_bytes()
    with pytest.raises(VerificationFailed) as exc:
        verify_built_engine(engine, ref, onnx_path=tiny, precision="int8", cache=tmp_path / "t.cache")
    msg = str(exc.value)
    assert exc.value.exit_code == 1
    assert "kept, recorded as unverified" in msg and "output0" in msg and "FAIL" in msg
    assert f"polygraphy run {engine} --model-type engine --trt --load-inputs {ref.inputs_path}" in msg
    assert "polygraphy debug precision" in msg and "--calibration-cache" in msg
    assert engine.read_bytes() == before  # kept
    record = json.loads(engine_record_path(engine).read_text())["verification"]
    assert record["status"] == "failed" and record["verified"] is False


def test_engine_without_reference_is_recorded_as_not_run(env: _Env, tmp_path: Path) -> None:
    engine = write_fake_engine(tmp_path / "e.engine")
    record = verify_built_engine(engine, None, onnx_path=tmp_path / "x.onnx", precision="fp16")
    assert record["status"] == "not run" and "--calib" in record["reason"]
    _, meta = read_engine(engine)
    assert meta is not None and meta.verification["status"] == "not run"


def test_build_writes_references_and_verifies_the_engine(env: _Env, tiny: Path, images: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from trtq.trt.builder import build_engine

    qdq = make_qdq_onnx(tiny, tmp_path / "tiny.int8.onnx", scale=1 / 127)
    env.compute_with(monkeypatch, qdq)
    out = tmp_path / "engines" / "tiny.int8.engine"
    result = build_engine(qdq, calib=images, trt_module=env.trt, output=out, device=env.device, progress=False,
                          reference_images=4)
    ref = reference_paths(qdq)
    assert ref.exists() and result.references["explicit"].outputs_path == ref.outputs_path
    assert result.verification is not None and result.verification["status"] == "passed"
    _, meta = read_engine(out)
    assert meta is not None and meta.verification["verified"] is True

    env.compute_with(monkeypatch, None)
    with pytest.raises(VerificationFailed):
        build_engine(qdq, calib=images, trt_module=env.trt, output=out, device=env.device, progress=False,
                     reference_images=4)
    assert out.is_file() and json.loads(engine_record_path(out).read_text())["verification"]["status"] == "failed"

    skipped = build_engine(qdq, calib=images, trt_module=env.trt, output=out, device=env.device, progress=False,
                           verify=False)
    assert skipped.verification is None
    assert json.loads(engine_record_path(out).read_text())["verification"]["status"] == "skipped"


def test_build_without_tensorrt_leaves_references_and_prints_the_polygraphy_command(
    tiny: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from trtq.errors import MissingDependencyError
    from trtq.trt.builder import build_engine

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingDependencyError) as exc:
        build_engine(tiny, int8=True, calib=images, num_images=4, output=tmp_path / "engines" / "tiny.int8.engine",
                     progress=False, reference_images=2)
    explicit = reference_paths(tmp_path / "engines" / "tiny.int8.onnx")
    implicit = reference_paths(tmp_path / "engines" / "tiny.percentile.cache")
    assert explicit.exists() and implicit.exists()
    assert len(load_inputs(explicit.inputs_path)) == 2
    msg = str(exc.value)
    assert f"polygraphy run {tmp_path / 'engines' / 'tiny.int8.engine'} --model-type engine --trt" in msg  # -o
    assert f"--load-inputs {explicit.inputs_path} --load-outputs {explicit.outputs_path}" in msg
    cmd = next(line.strip() for line in msg.splitlines() if line.strip().startswith("polygraphy run"))
    _polygraphy_parse(cmd)


def test_implicit_build_is_verified_against_the_simulated_ranges(tiny: Path, images: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from trtq.trt.builder import build_engine

    trt = fake_tensorrt.install(monkeypatch, "8.5.3")
    dev = FakeDevice(compute_capability=(8, 7))
    import trtq.device

    monkeypatch.setattr(trtq.device, "get_device", lambda backend="auto", index=0: dev)
    env = _Env(trt, dev)
    env.compute_with(monkeypatch, tiny)  # an engine that computes the FP32 model: INT8 noise only in the reference
    out = tmp_path / "engines" / "tiny.int8.engine"
    result = build_engine(tiny, int8=True, calib=images, algo="entropy", mode="implicit", trt_module=trt, output=out,
                          device=dev, progress=False, reference_images=4)
    assert result.mode == "implicit" and result.calibration_batches > 0  # TensorRT calibrated from the images
    ref = result.references["implicit"]
    assert ref.outputs_path == tmp_path / "engines" / "tiny.entropy.ref-outputs.json"
    assert "simulated" in ref.source
    record = json.loads(engine_record_path(out).read_text())["verification"]
    assert record["status"] == "passed" and record["reference"]["outputs"] == str(ref.outputs_path)
    sqnr = record["outputs"]["output0"]["sqnr_db"]
    assert DEFAULT_TOLERANCE.snr_db < sqnr < float("inf")  # the simulation is INT8, the fake engine FP32


def test_detection_agreement_decodes_the_task_layout() -> None:
    """A pose head's keypoint rows are not class scores: with the model's layout one person is one detection."""
    from trtq.agreement import detection_agreement
    from trtq.tasks import TaskLayout

    layout = TaskLayout("pose", 1, kpt_shape=(17, 3))
    pred = np.zeros((1, layout.row_size, 64), dtype=np.float32)
    pred[0, :4, 5] = [100, 100, 40, 80]  # one box, cx cy w h
    pred[0, 4, 5] = 0.9  # the person score
    pred[0, 5:, :] = 150.0  # keypoint x/y/visibility values everywhere: read as scores they look like classes
    moved = pred.copy()
    moved[0, 5:, 5] += 3.0  # keypoints differ a little; the box and score do not
    with_layout = detection_agreement([pred], [moved], layout=layout)
    assert (with_layout["reference"], with_layout["matched"], with_layout["class_agreement"]) == (1, 1, 1.0)
    plain = detection_agreement([pred], [moved])
    assert plain["reference"] != 1  # what decoding every model as a plain detector got wrong


def test_scores_are_the_class_rows_of_the_layout() -> None:
    """Keypoints follow the class scores in a pose head's rows: they are not scores."""
    from trtq.fidelity import fidelity_metrics
    from trtq.tasks import TaskLayout

    layout = TaskLayout("pose", 1, kpt_shape=(17, 3))
    rng = np.random.default_rng(0)
    ref = rng.random((1, layout.row_size, 64), dtype=np.float32)
    cand = ref.copy()
    cand[0, 5:] += rng.normal(0, 0.5, cand[0, 5:].shape).astype(np.float32)  # keypoints only
    m = fidelity_metrics([[ref]], [[cand]], ["output0"], layout=layout)["outputs"]["output0"]
    assert m["scores_sqnr_db"] == float("inf") or m["scores_sqnr_db"] > 100
    plain = fidelity_metrics([[ref]], [[cand]], ["output0"])["outputs"]["output0"]
    assert plain["scores_sqnr_db"] < 40  # what counting keypoint rows as scores reported


def test_end_to_end_outputs_are_judged_by_their_detections() -> None:
    """Rank-ordered end-to-end rows swap places between near-tied candidates; the detections decide."""
    from trtq.agreement import compare_outputs
    from trtq.tasks import TaskLayout

    layout = TaskLayout("detect", 80, end2end=True)
    rows = np.zeros((1, 300, 6), dtype=np.float32)
    rows[0, 0] = [10, 10, 50, 60, 0.9, 3]
    rows[0, 1:, 4] = np.linspace(0.02, 0.01, 299)  # junk candidates below conf
    rows[0, 1:, :4] = np.random.default_rng(1).random((299, 4)) * 300
    swapped = rows.copy()
    swapped[0, 1:] = rows[0, 1:][::-1]  # the junk in another order
    result = compare_outputs([{"output0": rows}], [{"output0": swapped}], layout=layout)
    assert result["outputs"]["output0"]["cosine"] < 0.99  # element-wise they differ ...
    assert result["passed"] and result["detections"]["recall"] == 1.0  # ... the detections do not


@pytest.mark.parametrize("item", ["cosine=1.5", "recall=-0.1", "conf=2"])
def test_tolerance_fractions_outside_0_1_are_refused(item: str) -> None:
    from trtq.agreement import parse_tolerance
    from trtq.errors import TrtqError

    with pytest.raises(TrtqError, match="lies between"):
        parse_tolerance([item])
    assert parse_tolerance(["snr_db=35", "cosine=-1"]).snr_db == 35.0  # -1: no cosine check
