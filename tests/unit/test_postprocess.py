"""YOLOv8 decode / NMS / box mapping against ultralytics' and torchvision's own implementations."""

from __future__ import annotations

import numpy as np
import pytest

from trtq.postprocess import clip_boxes, decode, nms, scale_boxes, xywh2xyxy


def _clustered_prediction(
    rng: np.random.Generator, batch: int = 2, nc: int = 5, anchors: int = 600
) -> np.ndarray:
    """Raw head output (N, 4 + nc, A) with overlapping clusters of boxes, like a real detector's."""
    pred = np.zeros((batch, 4 + nc, anchors), dtype=np.float32)
    for b in range(batch):
        centers = rng.uniform(50, 590, size=(25, 2))
        sizes = rng.uniform(20, 200, size=(25, 2))
        which = rng.integers(0, 25, size=anchors)
        pred[b, 0:2] = (centers[which] + rng.normal(0, 6, size=(anchors, 2))).T
        pred[b, 2:4] = (sizes[which] * rng.uniform(0.85, 1.15, size=(anchors, 2))).T
        pred[b, 4:] = rng.beta(0.6, 3.0, size=(nc, anchors))
    return pred


def _ultralytics_nms(pred: np.ndarray, conf: float, iou: float, max_det: int = 300) -> list[np.ndarray]:
    torch = pytest.importorskip("torch")
    nms_mod = pytest.importorskip("ultralytics.utils.nms")
    out = nms_mod.non_max_suppression(torch.from_numpy(pred.copy()), conf, iou, max_det=max_det)
    return [o.numpy() for o in out]


@pytest.mark.parametrize(
    ("conf", "iou", "seed"), [(0.25, 0.7, 0), (0.25, 0.45, 1), (0.5, 0.7, 2), (0.05, 0.6, 3)]
)
def test_decode_matches_ultralytics_non_max_suppression(conf: float, iou: float, seed: int) -> None:
    pred = _clustered_prediction(np.random.default_rng(seed))
    ours = decode(pred, conf=conf, iou=iou)
    ref = _ultralytics_nms(pred, conf, iou)
    assert len(ours) == len(ref) == pred.shape[0]
    for o, r in zip(ours, ref, strict=True):
        assert o.shape == r.shape and o.shape[0] > 0
        np.testing.assert_allclose(o[:, :4], r[:, :4], atol=1e-3)
        np.testing.assert_allclose(o[:, 4], r[:, 4], atol=1e-6)
        np.testing.assert_array_equal(o[:, 5], r[:, 5])


def test_decode_respects_max_det_and_empty_images() -> None:
    pred = _clustered_prediction(np.random.default_rng(5), batch=1)
    full = decode(pred, conf=0.05, iou=0.9)[0]
    assert full.shape[0] > 10
    capped = decode(pred, conf=0.05, iou=0.9, max_det=7)[0]
    np.testing.assert_array_equal(capped, full[:7])
    empty = decode(np.zeros((1, 9, 100), np.float32), conf=0.25)[0]
    assert empty.shape == (0, 6)


def test_decode_is_class_aware() -> None:
    # two identical boxes of different classes both survive; of the same class only the best does
    pred = np.zeros((1, 4 + 3, 3), dtype=np.float32)
    pred[0, :4, :] = np.array([[100, 100, 50, 50]] * 3, dtype=np.float32).T
    pred[0, 4, 0], pred[0, 5, 1], pred[0, 4, 2] = 0.9, 0.8, 0.7
    det = decode(pred, conf=0.25, iou=0.5)[0]
    assert det[:, 5].tolist() == [0.0, 1.0]
    assert det[:, 4].tolist() == pytest.approx([0.9, 0.8])
    agnostic = decode(pred, conf=0.25, iou=0.5, agnostic=True)[0]
    assert agnostic.shape[0] == 1


def test_decode_rejects_non_detection_output() -> None:
    with pytest.raises(ValueError, match="YOLO output"):
        decode(np.zeros((1, 3, 10), np.float32))


@pytest.mark.parametrize("seed", range(4))
def test_nms_matches_torchvision(seed: int) -> None:
    torch = pytest.importorskip("torch")
    tv_ops = pytest.importorskip("torchvision.ops")
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 300, size=(400, 2)).astype(np.float32)
    wh = rng.uniform(5, 120, size=(400, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + wh], axis=1)
    scores = rng.random(400).astype(np.float32)
    for thr in (0.3, 0.5, 0.7):
        ref = tv_ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr).numpy()
        np.testing.assert_array_equal(nms(boxes, scores, thr), ref)


def test_nms_brute_force_property() -> None:
    rng = np.random.default_rng(9)
    xy = rng.uniform(0, 100, size=(120, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, size=(120, 2))], axis=1)
    scores = rng.random(120)
    keep = nms(boxes, scores, 0.5)

    def iou(a: np.ndarray, b: np.ndarray) -> float:
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    kept = set(keep.tolist())
    assert list(scores[keep]) == sorted(scores[keep], reverse=True)
    for i in range(len(boxes)):  # every dropped box overlaps a better kept one; kept boxes never do
        better = [k for k in kept if scores[k] > scores[i]]
        overl = [k for k in better if iou(boxes[i], boxes[k]) > 0.5]
        assert (i not in kept) == bool(overl)


def test_xywh2xyxy() -> None:
    np.testing.assert_allclose(xywh2xyxy(np.array([[10.0, 20.0, 4.0, 6.0]])), [[8.0, 17.0, 12.0, 23.0]])


@pytest.mark.parametrize("orig", [(480, 640), (1080, 810), (333, 1000), (640, 640), (17, 900)])
def test_scale_boxes_matches_ultralytics(orig: tuple[int, int]) -> None:
    ops = pytest.importorskip("ultralytics.utils.ops")
    rng = np.random.default_rng(0)
    xy = rng.uniform(-20, 600, size=(50, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 200, size=(50, 2))], axis=1).astype(np.float32)
    ref = ops.scale_boxes((640, 640), boxes.copy(), orig)
    ours = scale_boxes(boxes.copy(), (640, 640), orig)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-4)
    assert ours[:, [0, 2]].max() <= orig[1] and ours[:, [1, 3]].max() <= orig[0] and ours.min() >= 0


def test_clip_boxes() -> None:
    b = np.array([[-5.0, -1.0, 700.0, 300.0]])
    np.testing.assert_array_equal(clip_boxes(b, (200, 640)), [[0.0, 0.0, 640.0, 200.0]])
