"""What `trtq verify` judges beyond SQNR: classes, per-task agreement, few detections, failures that are
not "not run", and references that name their model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.fakes import make_qdq_onnx, write_images
from tests.unit.test_runtime_models import make_tiny_yolo_onnx
from tests.unit.test_verify import _Env, env  # noqa: F401  (the fake TensorRT fixture)
from trtq.agreement import DEFAULT_TOLERANCE, compare_outputs, detection_agreement
from trtq.reference import load_inputs, load_outputs, reference_paths, save_outputs, write_reference
from trtq.tasks import TaskLayout
from trtq.verify import verify


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return write_images(tmp_path / "images", 8, size=(32, 32))


@pytest.fixture
def qdq(tmp_path: Path) -> Path:
    tiny = make_tiny_yolo_onnx(tmp_path / "tiny.onnx", batch=1)
    return make_qdq_onnx(tiny, tmp_path / "tiny.int8.onnx", scale=1 / 127)


def _edit(src: Path, dst: Path, edit: dict[str, object]) -> Path:
    """A copy of ``src`` with initializers replaced: ``{name: function(array) -> array}``."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    for init in model.graph.initializer:
        if init.name in edit:
            fn = edit[init.name]
            init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(fn(numpy_helper.to_array(init))), init.name))  # type: ignore[operator]
    onnx.save(model, str(dst))
    return dst


def _reverse(a: np.ndarray) -> np.ndarray:
    return a[::-1]


# ------------------------------------------------------------------------------------------ classes
def test_reversed_class_channels_fail_verify(qdq: Path, images: Path, tmp_path: Path) -> None:
    """Scores are tiny next to box pixels: SQNR and cosine pass, every class is wrong."""
    own = write_reference(qdq, images, num_images=6)
    wrong = _edit(qdq, tmp_path / "wrong.onnx", {"w_cls": _reverse, "b_cls": _reverse})
    res = verify(wrong, inputs=own.inputs_path, outputs=own.outputs_path)
    assert res.outputs["output0"]["passed"]  # what let it through
    assert res.detections is not None and res.detections["reference"] > 0
    assert res.detections["class_agreement"] == 0.0 and res.detections["recall"] < 1.0
    assert not res.passed


def test_end_to_end_head_with_every_class_wrong_fails() -> None:
    layout = TaskLayout("detect", 80, end2end=True)
    rows = np.zeros((1, 300, 6), dtype=np.float32)
    rows[0, :5] = [[10 + 40 * i, 10, 40 + 40 * i, 60, 0.9, i] for i in range(5)]
    wrong = rows.copy()
    wrong[0, :5, 5] += 1  # same boxes and scores, every class id off by one
    res = compare_outputs([{"output0": rows}], [{"output0": wrong}], layout=layout)
    assert res["detections"]["class_agreement"] == 0.0 and res["detections"]["recall"] == 0.0
    assert not res["passed"]
    assert compare_outputs([{"output0": rows}], [{"output0": rows.copy()}], layout=layout)["passed"]


# ------------------------------------------------------------------------------------------ per task
def _pose_rows(shift: float) -> tuple[np.ndarray, np.ndarray]:
    layout = TaskLayout("pose", 1, kpt_shape=(17, 3))
    pred = np.zeros((1, layout.row_size, 64), dtype=np.float32)
    pred[0, :4, 5] = [200, 200, 80, 160]  # cx cy w h
    pred[0, 4, 5] = 0.9
    kpt = pred[0, 5:, 5].reshape(17, 3)
    kpt[:, 0] = np.linspace(170, 230, 17)
    kpt[:, 1] = np.linspace(130, 270, 17)
    kpt[:, 2] = 0.9
    moved = pred.copy()
    mk = moved[0, 5:, 5].reshape(17, 3)
    mk[:, :2] += shift
    return pred, moved


def test_keypoints_shifted_fail_and_oks_follows_cocos_formula() -> None:
    from trtq.agreement import COCO_KPT_SIGMAS

    layout = TaskLayout("pose", 1, kpt_shape=(17, 3))
    ref, far = _pose_rows(64.0 / np.sqrt(2))  # every keypoint 64 px away
    d = detection_agreement([ref], [far], layout=layout)
    assert d["recall"] == 1.0 and d["keypoint_px"] == pytest.approx(64.0, rel=1e-4)
    area = 80 * 160 * 0.53
    want = np.mean(np.exp(-(64.0**2) / ((2 * COCO_KPT_SIGMAS) ** 2 * area * 2)))
    assert d["oks"] == pytest.approx(want, rel=1e-5)
    assert not compare_outputs([{"o": ref}], [{"o": far}], layout=layout)["passed"]
    _, near = _pose_rows(1.0)
    assert compare_outputs([{"o": ref}], [{"o": near}], layout=layout)["passed"]


def _seg(coef_scale: float) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    layout = TaskLayout("segment", 1, nm=4)
    rng = np.random.default_rng(0)
    protos = rng.standard_normal((1, 4, 16, 16)).astype(np.float32)
    pred = np.zeros((1, layout.row_size, 64), dtype=np.float32)
    pred[0, :4, 3] = [32, 32, 40, 40]
    pred[0, 4, 3] = 0.9
    pred[0, 5:, 3] = [2.0, -1.0, 0.5, 1.5]
    cand = pred.copy()
    cand[0, 5:, 3] *= coef_scale
    return {"output0": pred, "output1": protos}, {"output0": cand, "output1": protos}


def test_zeroed_mask_coefficients_fail_and_mask_iou_is_the_masks_overlap() -> None:
    from trtq.postprocess import process_masks

    layout = TaskLayout("segment", 1, nm=4)
    ref, zeroed = _seg(0.0)
    zeroed["output0"][0, 5:, 3] = 0.05  # what a zeroed conv leaves: its bias
    res = compare_outputs([ref], [zeroed], layout=layout)
    protos = ref["output1"][0]
    a = process_masks(protos, ref["output0"][0, 5:, 3][None], np.array([[12, 12, 52, 52]]), (64, 64))[0]
    b = process_masks(protos, zeroed["output0"][0, 5:, 3][None], np.array([[12, 12, 52, 52]]), (64, 64))[0]
    assert res["detections"]["mask_iou"] == pytest.approx(np.sum(a & b) / np.sum(a | b))
    assert res["detections"]["mask_iou"] < DEFAULT_TOLERANCE.mask_iou and not res["passed"]
    same, scaled = _seg(1.05)  # a small change of the coefficients keeps the mask
    assert compare_outputs([same], [scaled], layout=layout)["passed"]
    # prototypes are seen only through the masks: noise that keeps the masks passes whatever its SQNR
    noisy = dict(scaled, output1=scaled["output1"] + np.random.default_rng(1).normal(0, 0.2, (1, 4, 16, 16)).astype(np.float32))
    res = compare_outputs([same], [noisy], layout=layout)
    assert res["outputs"]["output1"]["sqnr_db"] < DEFAULT_TOLERANCE.snr_db
    assert res["outputs"]["output1"]["judged_by"] == "mask IoU" and res["detections"]["mask_iou"] > 0.8 and res["passed"]


@pytest.mark.parametrize(("offset_deg", "passes"), [(0.5, True), (10.0, False)])
def test_offset_angle_fails(offset_deg: float, passes: bool) -> None:
    from trtq.agreement import angle_error_deg

    layout = TaskLayout("obb", 1)
    pred = np.zeros((1, layout.row_size, 16), dtype=np.float32)
    pred[0, :4, 2] = [100, 100, 80, 20]  # a long thin box
    pred[0, 4, 2] = 0.9
    pred[0, 5, 2] = 0.3
    cand = pred.copy()
    cand[0, 5, 2] += np.radians(offset_deg)
    res = compare_outputs([{"o": pred}], [{"o": cand}], layout=layout)
    assert res["detections"]["angle_deg"] == pytest.approx(offset_deg, abs=1e-3)
    assert res["passed"] is passes
    # one box, two readings: w x h at theta is h x w at theta + 90 degrees
    a = np.array([0, 0, 0, 0, 0.9, 0, 0.3, 80, 20])
    b = np.array([0, 0, 0, 0, 0.9, 0, 0.3 + np.pi / 2, 20, 80])
    assert angle_error_deg(a, b) == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------------------------------ few detections
def test_a_score_crossing_the_threshold_by_a_little_is_not_a_miss() -> None:
    pred = np.zeros((1, 6, 16), dtype=np.float32)
    pred[0, :4, 1] = [100, 100, 40, 40]
    pred[0, 4, 1] = 0.27  # the only reference detection
    cand = pred.copy()
    cand[0, 4, 1] = 0.23
    res = compare_outputs([{"o": pred}], [{"o": cand}])
    assert res["detections"]["reference"] == 1 and res["detections"]["recall"] == 1.0 and res["passed"]
    cand[0, 4, 1] = 0.05  # gone: a miss
    assert not compare_outputs([{"o": pred}], [{"o": cand}])["passed"]


def test_reference_images_are_those_where_the_model_finds_something(tmp_path: Path) -> None:
    import cv2

    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(8):
        img = np.full((32, 32, 3), 128, np.uint8)  # gray: nothing for the tiny model
        if i in (2, 5):
            img[:] = (0, 0, 255)  # red (BGR): class 0 everywhere
        cv2.imwrite(str(folder / f"im{i}.png"), img)
    tiny = make_tiny_yolo_onnx(tmp_path / "tiny.onnx", batch=1)
    ref = write_reference(tiny, folder, num_images=2, seed=0)
    feeds = load_inputs(ref.inputs_path)
    red = [bool(f["images"][0, 0].mean() > 0.9) for f in feeds]  # RGB input: channel 0 is red
    assert red == [True, True]


# ------------------------------------------------------------------------------------------ errors are failures
def test_a_candidate_that_cannot_be_compared_fails(qdq: Path, images: Path, tmp_path: Path) -> None:
    from trtq.cli import main

    own = write_reference(qdq, images, num_images=2)
    expected, runner = load_outputs(own.outputs_path)
    extra = tmp_path / "extra.ref-outputs.json"
    save_outputs(extra, [{**e, "output1": np.zeros((1, 4), np.float32)} for e in expected], runner)
    res = verify(qdq, inputs=own.inputs_path, outputs=extra)
    assert not res.passed and "no output 'output1'" in res.error
    other = tmp_path / "other.ref-outputs.json"
    save_outputs(other, [{"output0": e["output0"][:, :5]} for e in expected], runner)
    res = verify(qdq, inputs=own.inputs_path, outputs=other)
    assert not res.passed and "shape" in res.error
    out = CliRunner().invoke(main, ["verify", str(qdq), "--inputs", str(own.inputs_path), "--outputs", str(other)])
    assert out.exit_code == 1 and "FAILED" in out.output and "cannot be compared" in out.output


# ------------------------------------------------------------------------------------------ references name the model
def test_references_of_another_model_fail_with_the_models_name(tmp_path: Path, images: Path) -> None:
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json

    tiny = make_tiny_yolo_onnx(tmp_path / "tiny.onnx", batch=1)
    qdq = make_qdq_onnx(tiny, tmp_path / "m.int8.onnx", scale=1 / 127)
    ref = write_reference(qdq, images, num_images=2)
    record = __import__("json").loads(ref.record_path.read_text())
    assert record["model"] == "m.int8.onnx" and len(record["model_sha256"]) == 64
    assert load_json(str(ref.inputs_path)) and RunResults.load(str(ref.outputs_path))  # pyright: ignore[reportAttributeAccessIssue]  Polygraphy still reads both
    assert verify(qdq).passed
    tiny.replace(qdq)  # a new model in its place (the FP32 one: its outputs would be close enough)
    stale = verify(qdq)
    assert not stale.passed and "belong to m.int8.onnx" in stale.error
    explicit = verify(qdq, inputs=ref.inputs_path, outputs=ref.outputs_path)  # the user's own choice: a warning
    assert explicit.passed


def test_a_mixed_reference_set_fails(qdq: Path, images: Path, tmp_path: Path) -> None:
    ref = write_reference(qdq, images, num_images=2, seed=0)
    later = write_reference(qdq, images, num_images=2, seed=5, folder=tmp_path / "later")
    later.outputs_path.replace(ref.outputs_path)  # outputs of one run beside the inputs of another
    res = verify(qdq)
    assert not res.passed and "mixed set" in res.error


def test_quantize_ref_images_0_removes_the_earlier_references_and_dynamic_batch_8_writes_them(
        tmp_path: Path, images: Path) -> None:

    from trtq.cli import main

    few = tmp_path / "few"
    few.mkdir()
    for i, p in enumerate(sorted(images.iterdir())[:4]):
        (few / f"{i}.jpg").write_bytes(p.read_bytes())
    (few / "broken.jpg").write_bytes(b"not an image")
    from tests.conftest import make_tiny_conv_onnx

    tiny = make_tiny_conv_onnx(tmp_path / "tiny.onnx", batch="N")  # dynamic batch
    out = tmp_path / "q.onnx"
    runner = CliRunner()
    res = runner.invoke(main, ["quantize", str(tiny), "--calib", str(few), "--batch", "8", "-o", str(out)])
    assert res.exit_code == 0, res.output
    ref = reference_paths(out)
    assert ref.exists() and ref.record_path.is_file()
    assert [f["images"].shape[0] for f in load_inputs(ref.inputs_path)] == [1] * 4  # 4 readable images
    same = runner.invoke(main, ["quantize", str(tiny), "--calib", str(few), "--ref-images", "0", "-o", str(out)])
    assert same.exit_code == 0 and ref.exists()  # the very same model: its references still hold
    res = runner.invoke(main, ["quantize", str(tiny), "--calib", str(few), "--num-images", "2", "--ref-images", "0",
                               "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert not any(p.exists() for p in ref.paths()) and "removed the earlier references" in res.output


def test_build_check_that_cannot_compare_is_a_failure_not_not_run(env: _Env, tmp_path: Path, images: Path,  # noqa: F811
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from tests.unit.test_runtime_engine import write_fake_engine
    from trtq.engine_meta import engine_record_path
    from trtq.reference import Reference
    from trtq.verify import VerificationFailed, verify_built_engine

    tiny = make_tiny_yolo_onnx(tmp_path / "tiny.onnx", batch=1)
    ref = write_reference(tiny, images, num_images=2, folder=tmp_path / "refs")
    expected, runner = load_outputs(ref.outputs_path)
    extra = tmp_path / "refs" / "extra.ref-outputs.json"
    save_outputs(extra, [{**e, "output1": np.zeros((1, 4), np.float32)} for e in expected], runner)
    (ref.inputs_path.parent / "tiny.ref.json").unlink(missing_ok=True)  # outputs from elsewhere, with no record to tell (a record would call it a mixed set)
    engine = write_fake_engine(tmp_path / "tiny.int8.engine")
    env.compute_with(monkeypatch, tiny)
    with pytest.raises(VerificationFailed, match="no output 'output1'"):
        verify_built_engine(engine, Reference(ref.inputs_path, extra), onnx_path=tiny, precision="int8")
    record = json.loads(engine_record_path(engine).read_text())["verification"]
    assert record["status"] == "failed" and record["verified"] is False and "output1" in record["error"]
