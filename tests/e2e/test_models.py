"""Every architecture and task, built offline from ultralytics' yaml files: Q/DQ structure and fidelity,
and the export command for every task.

YOLOv8 structures carry the shared COCO YOLOv8n weights (nc=80), so their outputs are real and the INT8
outputs must stay close to FP32 (cosine >= 0.98 on coco128 val2017 images). YOLO11 / YOLO26 structures keep
random weights: only their structure is checked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from trtq.headpolicy import Branch, Reason, head_policy
from trtq.qdqcheck import output_cosines, qdq_problems, raw_outputs
from trtq.quantize_options import QuantizeOptions

pytestmark = pytest.mark.slow

SUFFIX = {"detect": "", "segment": "-seg", "pose": "-pose", "obb": "-obb"}
EXTRA_BRANCH = {"detect": set(), "segment": {"mask-coefficient", "mask-prototype"}, "pose": {"keypoint"}, "obb": {"angle"}}


@pytest.fixture(scope="module")
def val_batches(shared_assets: Path):  # noqa: ANN201
    def make(model: Path) -> list[dict]:
        from trtq.images import ImageBatcher
        from trtq.modelinfo import read_model_info

        info = read_model_info(model, with_hash=False)
        return list(ImageBatcher.from_model(shared_assets / "coco128" / "images" / "val2017", info, num_images=4, seed=1))

    return make


@pytest.mark.parametrize("arch", ["yolov8n", "yolo11n", "yolo26n"])
@pytest.mark.parametrize("task", ["detect", "segment", "pose", "obb"])
def test_qdq_structure_and_fidelity(zoo_onnx, yolo_pt: Path, calib_dir: Path, val_batches, tmp_path: Path,  # noqa: ANN001
                                    arch: str, task: str) -> None:
    from trtq.quantize import quantize

    real = arch == "yolov8n"
    fp32 = zoo_onnx(f"{arch}{SUFFIX[task]}.yaml", imgsz=320, **({"weights": yolo_pt, "nc": 80} if real else {}))
    res = quantize(fp32, calib_dir, QuantizeOptions(num_images=4, progress=False), output=tmp_path / "q.onnx")
    qmodel = onnx.load(str(res.path))
    policy = head_policy(onnx.load(str(fp32)))
    assert qdq_problems(qmodel, policy) == []
    finals = [k for k, r in policy.items() if r.code is Reason.FINAL_CONV]
    float_in_report = {f["node"] for f in res.report["float_nodes"]}
    assert set(finals) <= float_in_report
    branches = {b["branch"] for b in res.report["head_branches"]}
    assert {"box", "class"} | EXTRA_BRANCH[task] <= branches
    assert res.report["task"]["task"] == task
    attention = [k for k, r in policy.items() if r.code is Reason.ATTENTION]
    assert bool(attention) is (arch != "yolov8n")
    if real:
        batches = val_batches(fp32)
        cos = output_cosines(raw_outputs(str(fp32), batches), raw_outputs(str(res.path), batches))
        assert min(cos) >= 0.98, cos


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_yolo26_end_to_end_head_quantizes_with_selection_float(zoo_onnx, calib_dir: Path, tmp_path: Path,  # noqa: ANN001
                                                                 task: str) -> None:
    from trtq.quantize import quantize

    fp32 = zoo_onnx(f"yolo26n{SUFFIX[task]}.yaml", imgsz=320, nms=False)
    res = quantize(fp32, calib_dir, QuantizeOptions(num_images=2, progress=False), output=tmp_path / "q.onnx")
    policy = head_policy(onnx.load(str(fp32)))
    assert qdq_problems(onnx.load(str(res.path)), policy) == []
    assert res.report["task"]["end2end"] is True
    assert any(b["code"] == Reason.END2END_SELECT.value for b in res.report["head_branches"])
    assert "| box |" in res.markdown_path.read_text()  # the Markdown report lists what stayed float per branch
    assert {r.branch for r in policy.values() if r.code is Reason.FINAL_CONV} >= {Branch.BOX, Branch.CLASS}


def test_export_every_task_end2end_and_rectangular(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trtq.cli import main
    from trtq.modelinfo import read_model_info

    monkeypatch.chdir(tmp_path)
    run = CliRunner().invoke
    res = run(main, ["export", "yolo26n-pose.yaml", "--end2end", "--imgsz", "256", "320", "-o", "e2e.onnx"])
    assert res.exit_code == 0, res.output
    info = read_model_info(tmp_path / "e2e.onnx")
    assert info.input.shape == (1, 3, 256, 320)
    layout = info.layout
    assert (layout.task, layout.end2end, layout.kpt_shape) == ("pose", True, (17, 3))
    assert [p.name for p in tmp_path.iterdir()] == ["e2e.onnx"]  # nothing else left in the working folder
    res = run(main, ["export", "yolo11n-obb.yaml", "--imgsz", "320", "--opset", "12", "-o", "obb.onnx"])
    assert res.exit_code == 0, res.output
    info = read_model_info(tmp_path / "obb.onnx")
    assert info.opset == 12 and info.layout.task == "obb" and not info.layout.end2end
    for args, words in ((["yolov8n-cls.yaml"], "classify model"), (["yolov8n.yaml", "--end2end"], "no end-to-end")):
        res = run(main, ["export", *args, "-o", "x.onnx"])
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and words in res.output, res.output


@pytest.mark.parametrize("variant", ["opset12", "fp16", "dynamic", "rectangular"])
def test_intake_variants_quantize_with_fidelity(zoo_onnx, yolo_pt: Path, calib_dir: Path, val_batches,  # noqa: ANN001
                                                tmp_path: Path, variant: str) -> None:
    """A COCO-weighted YOLOv8n-pose as users bring it: opset 12, FP16, dynamic batch, rectangular input."""
    from trtq.modelinfo import read_model_info
    from trtq.quantize import quantize

    extra: dict = {"opset12": {"opset": 12}, "dynamic": {"dynamic": True}, "rectangular": {"imgsz": (256, 320)}}.get(variant, {})
    extra.setdefault("imgsz", 320)
    fp32 = zoo_onnx("yolov8n-pose.yaml", weights=yolo_pt, nc=80, **extra)
    model = fp32
    if variant == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = tmp_path / "fp16.onnx"
        onnx.save(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=False), str(model))
        assert read_model_info(model).float_dtype == "float16"
    batch = 2 if variant == "dynamic" else 1
    res = quantize(model, calib_dir, QuantizeOptions(num_images=4, batch=batch, progress=False),
                   output=tmp_path / "q.onnx")
    qmodel = onnx.load(str(res.path))
    assert qdq_problems(qmodel, head_policy(onnx.load(str(model)))) == []
    opset = next(o.version for o in qmodel.opset_import if o.domain in ("", "ai.onnx"))
    assert opset == {"opset12": 13, "fp16": 19}.get(variant, 17)
    assert res.report["source_opset"] == (12 if variant == "opset12" else 17)
    batches = val_batches(fp32)
    if variant == "dynamic":
        batches = [{"images": np.concatenate([b["images"] for b in batches[:2]])}]
    cos = output_cosines(raw_outputs(str(fp32), batches), raw_outputs(str(res.path), batches))
    assert min(cos) >= 0.98, cos


@pytest.mark.parametrize(("cfg", "described"), [
    ("yolov8n-pose.yaml", "pose, 1 classes, grid head, 17x3 keypoints"),  # the yaml's default: persons only
    ("yolo11n-obb.yaml", "obb, 80 classes, grid head"),
    ("yolo26n-seg.yaml", "segment, 80 classes, grid head, 32 mask coefficients"),
])
def test_layout_without_metadata_is_told_from_the_graph(zoo_onnx, calib_dir: Path, tmp_path: Path, cfg: str,  # noqa: ANN001
                                                        described: str) -> None:
    """Shapes alone read a pose model (4 + 80 + 51 rows) as a 131-class detector; the head's branches do not."""
    from trtq.modelinfo import check_model, read_model_info

    model = onnx.load(str(zoo_onnx(cfg, imgsz=320)))
    del model.metadata_props[:]
    path = tmp_path / "bare.onnx"
    onnx.save(model, str(path))
    layout = check_model(read_model_info(path))
    assert layout is not None and layout.inferred and layout.describe() == described
    if layout.task == "pose":  # the Q/DQ model records what was told, for readers of its metadata
        from trtq.quantize import quantize
        from trtq.tasks import task_layout

        res = quantize(path, calib_dir, QuantizeOptions(num_images=1, progress=False), output=tmp_path / "q.onnx")
        info = read_model_info(res.path)
        assert info.metadata["task"] == "pose" and info.metadata["kpt_shape"] == [17, 3]
        assert task_layout(info.metadata, [o.shape for o in info.outputs]).describe() == described


@pytest.mark.parametrize("cfg", ["yolov8n-pose.yaml", "yolov8n-obb.yaml"])
def test_bare_pose_and_obb_models_are_decoded_as_their_task_everywhere(zoo_onnx, tmp_path: Path, cfg: str) -> None:  # noqa: ANN001
    """Without metadata, predict / Detector / verify / compare read the task the graph tells, as quantize does."""
    from trtq.modelinfo import check_model, read_model_info
    from trtq.runtime import Detector
    from trtq.verify import artifact_layout

    src = zoo_onnx(cfg, imgsz=320)
    model = onnx.load(str(src))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    told = check_model(read_model_info(bare))
    with Detector(src) as det:
        meant = det.layout
    assert told is not None and (told.task, told.nc, told.kpt_shape) == (meant.task, meant.nc, meant.kpt_shape)
    image = np.random.default_rng(0).integers(0, 255, (320, 320, 3), dtype=np.uint8)
    with Detector(bare, conf=0.01) as det, Detector(src, conf=0.01) as ref:
        assert det.layout == told
        got, want = det.detect(image)[0], ref.detect(image)[0]
    assert len(got) == len(want) and np.array_equal(got.class_ids, want.class_ids)
    assert artifact_layout(bare, [o.shape for o in read_model_info(bare).outputs]) == told
    assert read_model_info(bare).layout_or_none == told
    # an engine built from it records the task the graph tells, and is read back as that task
    from tests.fakes.fake_device import FakeDevice
    from tests.fakes.fake_tensorrt import make_fake_tensorrt
    from trtq.engine_meta import read_engine
    from trtq.trt.builder import build_engine

    built = build_engine(bare, trt_module=make_fake_tensorrt("10.3.0"), output=tmp_path / "bare.fp16.engine",
                         device=FakeDevice(), progress=False, fp16=True)
    assert built.engine_path is not None
    _, meta = read_engine(built.engine_path)
    assert meta is not None and meta.task == told.task
    engine_layout = artifact_layout(built.engine_path, [o.shape for o in read_model_info(bare).outputs])
    assert engine_layout is not None and (engine_layout.task, engine_layout.nc, engine_layout.kpt_shape) == (
        told.task, told.nc, told.kpt_shape)


def test_verify_catches_wrong_classes_and_broken_masks_of_a_real_segment_model(zoo_onnx, yolo_pt: Path,  # noqa: ANN001
                                                                             calib_dir: Path, tmp_path: Path) -> None:
    """SQNR and cosine pass both tampered copies; class agreement and mask IoU do not."""
    from benchmarks.verify_tolerance import reverse_channels, zero_branch
    from trtq.quantize import quantize
    from trtq.reference import write_reference
    from trtq.verify import verify

    fp32 = zoo_onnx("yolov8n-seg.yaml", imgsz=320, weights=yolo_pt, nc=80)
    qdq = quantize(fp32, calib_dir, QuantizeOptions(num_images=8, progress=False),
                   output=tmp_path / "seg.int8.onnx").path
    ref = write_reference(fp32, calib_dir, artifact=tmp_path / "seg.fp32.onnx", num_images=8, seed=1)
    good = verify(qdq, inputs=ref.inputs_path, outputs=ref.outputs_path)
    assert good.passed, good.table()
    assert good.detections is not None and good.detections["reference"] >= 8
    for tampered, why in ((reverse_channels(qdq, tmp_path / "cls.onnx"), "class_agreement"),
                          (zero_branch(qdq, tmp_path / "mask.onnx", "mask-coefficient"), "mask_iou")):
        res = verify(tampered, inputs=ref.inputs_path, outputs=ref.outputs_path)
        assert res.outputs["output0"]["passed"], res.table()  # what used to let it through
        assert res.detections is not None and not res.detections["passed"] and not res.passed, res.table()
        assert res.detections[why] < getattr(res.tolerance, why), res.table()
