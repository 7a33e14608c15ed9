"""trtq.runtime decodes every task and head form like ultralytics' own predict on the same ONNX file.

Structures come from ultralytics' yaml files (yolov8n / yolo11n / yolo26n x detect, segment, pose, OBB, at
imgsz 320; YOLO26 also with its end-to-end head, ``nms=False``). The YOLOv8 ones carry the shared COCO
weights (nc=80). The others are untrained: their activations vanish through the random layers, so every
anchor would get the same score (ties make any order valid, so no comparison would mean anything). Their
convolution weights are therefore re-drawn in the ONNX (He-normal, seeded) and the class convolutions
scaled, so that scores, boxes, masks, keypoints and angles depend on the image.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from trtq.postprocess import nms_rotated, probiou, process_masks, resize_bilinear, scale_masks
from trtq.runtime import Detector
from trtq.runtime.decode import mask_to_rle, rle_to_mask

BOX_PX = 1.0
KPT_PX = 1.0
ANGLE_RAD = 0.01
MASK_IOU = 0.99
MAX_DET = 100  # untrained models fill max_det: fewer rows keep the mask comparison quick
CLS_CONV = re.compile(r"cv3\.\d+\.2/Conv$")  # the last class convolution of each head level


def _liven(src: Path, dst: Path, seed: int = 0) -> Path:
    """Re-draw the convolution weights of an untrained export (see the module docstring); DFL stays."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    rng = np.random.default_rng(seed)
    weights, cls_weights, cls_biases = set(), set(), set()
    for node in model.graph.node:
        if node.op_type == "Conv" and "dfl" not in node.name.lower():
            weights.add(node.input[1])
            if CLS_CONV.search(node.name):
                cls_weights.add(node.input[1])
                cls_biases.add(node.input[2])
    for init in model.graph.initializer:
        if init.name in weights:
            w = numpy_helper.to_array(init)
            new = rng.standard_normal(w.shape) * np.sqrt(2.0 / np.prod(w.shape[1:]))
            new *= 100.0 if init.name in cls_weights else 1.0
            init.CopyFrom(numpy_helper.from_array(new.astype(w.dtype), init.name))
        elif init.name in cls_biases:
            b = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(np.full(b.shape, -4.0, b.dtype), init.name))
    onnx.save(model, str(dst))
    return dst


def _images(shared_assets: Path) -> list[Path]:
    import ultralytics

    val = sorted((shared_assets / "coco128" / "images" / "val2017").glob("*.jpg"))[:2]
    return [*val, Path(ultralytics.__file__).parent / "assets" / "bus.jpg"]


CASES = [
    # (cfg, transplant COCO weights, export args, conf)
    *((f"yolov8n{s}.yaml", True, {}, 0.05) for s in ("", "-seg", "-pose", "-obb")),
    *((f"yolo11n{s}.yaml", False, {}, 0.05) for s in ("", "-seg", "-pose", "-obb")),
    *((f"yolo26n{s}.yaml", False, {}, 0.05) for s in ("", "-seg", "-pose", "-obb")),
    *((f"yolo26n{s}.yaml", False, {"nms": False}, 0.05) for s in ("", "-seg", "-pose", "-obb")),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("cfg", "coco", "export_args", "conf"),
    CASES,
    ids=[f"{c[0][:-5]}{'-e2e' if c[2] else ''}" for c in CASES],
)
def test_runtime_matches_ultralytics_predict(
    zoo_onnx, yolo_pt: Path, shared_assets: Path, tmp_path: Path, cfg: str, coco: bool, export_args: dict, conf: float
) -> None:
    ultralytics = pytest.importorskip("ultralytics")
    from ultralytics.utils import ops

    if coco:
        onnx_path = zoo_onnx(cfg, weights=yolo_pt, nc=80, imgsz=320, **export_args)
    else:
        onnx_path = _liven(zoo_onnx(cfg, imgsz=320, **export_args), tmp_path / "live.onnx")
    want_e2e = export_args.get("nms") is False
    with Detector(onnx_path, conf=conf, iou=0.7, max_det=MAX_DET) as det:
        assert det.layout.end2end == want_e2e
        model = ultralytics.YOLO(str(onnx_path), task=det.task)
        total, worst = 0, {"box_px": 0.0, "mask_iou": 1.0, "kpt_px": 0.0, "angle_rad": 0.0}
        for path in _images(shared_assets):
            ref = model.predict(str(path), imgsz=320, conf=conf, iou=0.7, max_det=MAX_DET, verbose=False, save=False)[0]
            (ours,) = det.detect(cv2.imread(str(path)))
            assert ours.task == det.task and ours.image_shape == ref.orig_shape
            if det.task == "obb":
                obb = ref.obb
                np.testing.assert_array_equal(ours.class_ids, obb.cls.numpy().astype(np.int64), err_msg=path.name)
                assert ours.xywhr is not None and ours.corners is not None
                xywhr = obb.xywhr.numpy()
                np.testing.assert_allclose(ours.xywhr[:, :4], xywhr[:, :4], atol=BOX_PX, err_msg=path.name)
                np.testing.assert_allclose(ours.xywhr[:, 4], xywhr[:, 4], atol=ANGLE_RAD, err_msg=path.name)
                np.testing.assert_allclose(ours.corners, obb.xyxyxyxy.numpy(), atol=BOX_PX, err_msg=path.name)
                np.testing.assert_allclose(ours.boxes, obb.xyxy.numpy(), atol=BOX_PX, err_msg=path.name)
                np.testing.assert_allclose(ours.scores, obb.conf.numpy(), atol=1e-4)
                if len(ours):
                    worst["box_px"] = max(worst["box_px"], float(np.abs(ours.corners - obb.xyxyxyxy.numpy()).max()))
                    worst["angle_rad"] = max(worst["angle_rad"], float(np.abs(ours.xywhr[:, 4] - xywhr[:, 4]).max()))
            else:
                boxes = ref.boxes
                np.testing.assert_array_equal(ours.class_ids, boxes.cls.numpy().astype(np.int64), err_msg=path.name)
                np.testing.assert_allclose(ours.boxes, boxes.xyxy.numpy(), atol=BOX_PX, err_msg=path.name)
                np.testing.assert_allclose(ours.scores, boxes.conf.numpy(), atol=1e-4)
                if len(ours):
                    worst["box_px"] = max(worst["box_px"], float(np.abs(ours.boxes - boxes.xyxy.numpy()).max()))
            if det.task == "segment" and len(ours):
                assert ours.masks is not None and ours.masks.shape == (len(ours), *ref.orig_shape)
                theirs = ops.scale_masks(ref.masks.data[None].float(), ref.orig_shape)[0].numpy() > 0.5
                inter = (theirs & ours.masks).sum(axis=(1, 2))
                union = (theirs | ours.masks).sum(axis=(1, 2))
                assert union.min() > 0
                assert (inter / union).min() >= MASK_IOU, path.name
                worst["mask_iou"] = min(worst["mask_iou"], float((inter / union).min()))
            if det.task == "pose" and len(ours):
                assert ours.keypoints is not None
                kpts = ref.keypoints.data.numpy()
                np.testing.assert_allclose(ours.keypoints[..., :2], kpts[..., :2], atol=KPT_PX, err_msg=path.name)
                np.testing.assert_allclose(ours.keypoints[..., 2], kpts[..., 2], atol=1e-4)
                worst["kpt_px"] = max(worst["kpt_px"], float(np.abs(ours.keypoints[..., :2] - kpts[..., :2]).max()))
            total += len(ours)
    assert total >= 5, f"only {total} detections: the comparison has no content"
    print(f"\n{cfg} {det.task} end2end={want_e2e} coco={coco}: {total} detections, worst {worst}")  # -s shows it


# ------------------------------------------------------------------------------------------ numpy parts vs torch
def test_bilinear_resize_matches_torch_interpolate() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    for (h0, w0), (h1, w1) in (((80, 80), (320, 320)), ((13, 17), (40, 9)), ((50, 60), (21, 33))):
        x = rng.standard_normal((h0, w0)).astype(np.float32)
        ours = resize_bilinear(x, (h1, w1))
        ref = torch.nn.functional.interpolate(torch.from_numpy(x)[None, None], (h1, w1), mode="bilinear")[0, 0]
        np.testing.assert_allclose(ours, ref.numpy(), atol=1e-5)


def test_masks_match_ultralytics_ops() -> None:
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("ultralytics.utils.ops")
    rng = np.random.default_rng(1)
    protos = rng.standard_normal((8, 40, 40)).astype(np.float32)
    coefs = rng.standard_normal((6, 8)).astype(np.float32)
    xy = rng.uniform(0, 120, (6, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 60, (6, 2))], axis=1).astype(np.float32)
    ours = process_masks(protos, coefs, boxes, (160, 160))
    ref = ops.process_mask(torch.from_numpy(protos), torch.from_numpy(coefs), torch.from_numpy(boxes), (160, 160), upsample=True)
    assert ours.any() and np.array_equal(ours, ref.numpy().astype(bool))
    big = scale_masks(ours, (300, 410))
    ref_big = ops.scale_masks(torch.from_numpy(ours.astype(np.float32))[None], (300, 410))[0].numpy() > 0.5
    assert big.any() and (big != ref_big).sum() <= 0.001 * big.size


def test_rotated_nms_matches_ultralytics() -> None:
    torch = pytest.importorskip("torch")
    metrics = pytest.importorskip("ultralytics.utils.metrics")
    from ultralytics.utils.nms import TorchNMS

    rng = np.random.default_rng(2)
    n = 300
    boxes = np.concatenate(
        [rng.uniform(0, 200, (n, 2)), rng.uniform(5, 60, (n, 2)), rng.uniform(-np.pi / 4, 3 * np.pi / 4, (n, 1))], axis=1
    ).astype(np.float32)
    scores = rng.permutation(n).astype(np.float32) / n  # distinct scores: one valid order
    np.testing.assert_allclose(
        probiou(boxes, boxes), metrics.batch_probiou(torch.from_numpy(boxes), torch.from_numpy(boxes)).numpy(), atol=2e-4
    )
    ref = TorchNMS.fast_nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.3, iou_func=metrics.batch_probiou)
    ours = nms_rotated(boxes, scores, 0.3, block=64)  # several blocks
    assert 0 < len(ours) < n
    np.testing.assert_array_equal(ours, ref.numpy())


def test_mask_rle_round_trip() -> None:
    rng = np.random.default_rng(3)
    for mask in (rng.random((7, 5)) > 0.5, np.ones((3, 4), bool), np.zeros((2, 2), bool)):
        rle = mask_to_rle(mask)
        assert sum(rle["counts"]) == mask.size and rle["size"] == list(mask.shape)
        np.testing.assert_array_equal(rle_to_mask(rle), mask)
    assert mask_to_rle(np.array([[True, False], [True, True]]))["counts"] == [0, 2, 1, 1]  # column-major, zeros first


def test_end2end_rows_are_filtered_not_suppressed() -> None:
    from trtq.postprocess import decode_end2end

    rows = np.zeros((1, 5, 7), np.float32)
    rows[0, :, :4] = [10, 10, 50, 50]  # identical boxes: NMS would keep one, end-to-end keeps all
    rows[0, :, 4] = [0.9, 0.8, 0.3, 0.2, 0.6]  # the model's order is kept as it is
    rows[0, :, 6] = np.arange(5)
    (out,) = decode_end2end(rows, conf=0.25, max_det=3)
    np.testing.assert_array_equal(out[:, 6], [0, 1, 2])
    (out,) = decode_end2end(rows.astype(np.float16), conf=0.25, max_det=10)
    assert out.dtype == np.float32 and out[:, 6].tolist() == [0, 1, 2, 4]


def test_grid_decode_carries_extra_values_and_rotated_boxes() -> None:
    from trtq.postprocess import decode

    nc, a = 2, 4
    p = np.zeros((1, 4 + nc + 2, a), np.float32)
    p[0, :4] = np.array([[20, 20, 10, 10], [21, 20, 10, 10], [80, 80, 10, 10], [40, 40, 6, 6]], np.float32).T
    p[0, 4] = [0.9, 0.8, 0.1, 0.0]
    p[0, 5] = [0.0, 0.0, 0.7, 0.6]
    p[0, 6:] = np.arange(2 * a, dtype=np.float32).reshape(2, a)  # e.g. two keypoint values per anchor
    (out,) = decode(p, conf=0.25, iou=0.5, nc=nc)
    assert out.shape == (3, 8)  # anchor 1 suppressed by anchor 0
    np.testing.assert_array_equal(out[:, 5], [0, 1, 1])
    np.testing.assert_array_equal(out[:, 6:], [[0, 4], [2, 6], [3, 7]])
    np.testing.assert_allclose(out[0, :4], [15, 15, 25, 25])
    (rot,) = decode(p[:, :7], conf=0.25, iou=0.5, nc=nc, rotated=True)  # one extra value: the angle
    assert rot.shape == (3, 7) and np.allclose(rot[0, :4], [20, 20, 10, 10])  # xywh kept for OBB
    np.testing.assert_array_equal(rot[:, 6], [0, 2, 3])


# ------------------------------------------------------------------------------------------ TensorRT sessions
def _tiny_seg_onnx(path: Path, *, nc: int = 2, nm: int = 4, hw: int = 32) -> Path:
    """images [N,3,hw,hw] -> output0 [N, 4 + nc + nm, hw*hw] (boxes, class scores, mask coefficients) and
    output1 [N, nm, hw/4, hw/4] (prototypes), with ultralytics' segment metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    ch = 4 + nc + nm
    inits = [
        numpy_helper.from_array((rng.standard_normal((4, 3, 1, 1)) * 0.5).astype(np.float32), "w_box"),
        numpy_helper.from_array((rng.standard_normal((nc, 3, 1, 1)) * 8).astype(np.float32), "w_cls"),
        numpy_helper.from_array(rng.standard_normal((nm, 3, 1, 1)).astype(np.float32), "w_coef"),
        numpy_helper.from_array(rng.standard_normal((nm, 3, 4, 4)).astype(np.float32), "w_proto"),
        numpy_helper.from_array(np.array(10.0, np.float32), "scale"),
        numpy_helper.from_array(np.array([16.0, 16.0, 12.0, 12.0], np.float32).reshape(1, 4, 1, 1), "offset"),
        numpy_helper.from_array(np.array([0, ch, -1], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["images", "w_box"], ["box_raw"]),
        helper.make_node("Mul", ["box_raw", "scale"], ["box_scaled"]),
        helper.make_node("Add", ["box_scaled", "offset"], ["box_off"]),
        helper.make_node("Abs", ["box_off"], ["box"]),
        helper.make_node("Conv", ["images", "w_cls"], ["cls_raw"]),
        helper.make_node("Sigmoid", ["cls_raw"], ["cls"]),
        helper.make_node("Conv", ["images", "w_coef"], ["coef"]),
        helper.make_node("Concat", ["box", "cls", "coef"], ["cat"], axis=1),
        helper.make_node("Reshape", ["cat", "shape"], ["output0"]),
        helper.make_node("Conv", ["images", "w_proto"], ["output1"], strides=[4, 4]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_seg",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, hw, hw])],
        [
            helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["N", ch, hw * hw]),
            helper.make_tensor_value_info("output1", TensorProto.FLOAT, ["N", nm, hw // 4, hw // 4]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (("names", "{0: 'cat', 1: 'dog'}"), ("stride", "32"), ("imgsz", f"[{hw}, {hw}]"), ("task", "segment")):
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(model, str(path))
    return path


def test_engine_segment_detector_returns_the_onnx_masks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every engine output reaches the decoder (prototypes included) and the sidecar's task is used."""
    import json

    import onnxruntime as ort

    from tests.fakes import fake_tensorrt
    from tests.fakes.fake_device import FakeDevice
    from tests.unit.test_runtime_models import random_images
    from trtq.engine_meta import EngineMetadata, write_engine

    trt = fake_tensorrt.install(monkeypatch, "10.3.0")
    dev = FakeDevice(compute_capability=(8, 7))
    import trtq.device

    monkeypatch.setattr(trtq.device, "get_device", lambda backend="auto", index=0: dev)
    onnx_path = _tiny_seg_onnx(tmp_path / "seg.onnx")
    plan = {
        "version": "10.3.0",
        "inputs": [{"name": "images", "shape": [1, 3, 32, 32], "dtype": "FLOAT"}],
        # the prototypes first: the decoder finds the head output by its rank, not its position
        "outputs": [
            {"name": "output1", "shape": [1, 4, 8, 8], "dtype": "FLOAT"},
            {"name": "output0", "shape": [1, 10, 1024], "dtype": "FLOAT"},
        ],
        "profiles": [], "flags": [], "strongly_typed": False, "layers": [], "dla_core": None,
        "profiling_verbosity": "LAYER_NAMES_ONLY", "calibrated": False,
    }  # fmt: skip
    meta = EngineMetadata(
        tensorrt_version="10.3.0", gpu_name="Orin", compute_capability=(8, 7), precision="fp16",
        names={0: "cat", 1: "dog"}, stride=32, imgsz=(32, 32), task="segment", batch=1,
    )  # fmt: skip
    engine = write_engine(tmp_path / "seg.engine", fake_tensorrt.PLAN_MAGIC + json.dumps(plan).encode(), meta)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def compute(inputs: dict[str, np.ndarray], out_shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
        out0, out1 = sess.run(["output0", "output1"], {"images": inputs["images"]})
        return {"output0": out0, "output1": out1}

    imgs = random_images(3)
    with Detector(onnx_path, conf=0.3) as ref:
        expected = ref.detect(imgs)
    with Detector(engine, conf=0.3) as det:
        trt.STATE.engines[-1].compute = compute
        assert det.task == "segment" and det.layout.nm == 4
        got = det.detect(imgs)
    assert sum(len(d) for d in expected) > 0
    for a, b in zip(got, expected, strict=True):
        assert a.masks is not None and b.masks is not None and a.masks.shape == (len(a), *a.image_shape)
        np.testing.assert_array_equal(a.class_ids, b.class_ids)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
        np.testing.assert_array_equal(a.masks, b.masks)
    assert any(d.masks is not None and d.masks.any() for d in got)
