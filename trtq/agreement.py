"""Output agreement: how close a candidate's outputs are to a reference's, the one comparison in trtq.

Used by ``trtq verify``, the check after ``trtq build`` (:mod:`trtq.verify`), ``trtq compare`` and the
sensitivity ranking (:mod:`trtq.fidelity`) through :func:`compare_outputs`:

* per output: cosine similarity and SQNR computed by Polygraphy's comparators
  (``polygraphy.comparator.CosineSimilarityCompareFunc`` / ``SnrCompareFunc`` over all images at once),
  and the largest absolute error;
* detection agreement for YOLO head outputs: both sides decoded for the model's task and head form
  (``trtq.postprocess.decode_layout``: confidence filter + class-aware NMS, or none for end-to-end heads),
  reference detections matched one-to-one to candidate detections of any class at IoU >= 0.5 (highest
  IoU first), reported as precision, recall, class agreement and mean IoU.

A model passes when every output reaches :class:`Tolerance`'s cosine and SQNR and the detections reach its
recall and precision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from trtq.errors import TrtqError
from trtq.tasks import TaskLayout

MATCH_IOU = 0.5
DETECT_CONF = 0.25
DETECT_IOU = 0.7


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of xyxy boxes ``(n, 4)`` x ``(m, 4)``."""
    if a.size == 0 or b.size == 0:
        return np.zeros((a.shape[0], b.shape[0]), dtype=np.float64)
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:4] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:4] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_detections(ref: np.ndarray, test: np.ndarray, iou: float = MATCH_IOU) -> dict[str, float]:
    """Greedy one-to-one matching (highest IoU first) of ``(k, 6)`` detections; counts per image."""
    ious = box_iou(ref[:, :4], test[:, :4])
    matched = same_class = 0
    iou_sum = 0.0
    if ious.size:
        pairs = np.argwhere(ious >= iou)
        order = np.argsort(-ious[pairs[:, 0], pairs[:, 1]], kind="stable")
        used_r: set[int] = set()
        used_t: set[int] = set()
        for k in order:
            i, j = int(pairs[k, 0]), int(pairs[k, 1])
            if i in used_r or j in used_t:
                continue
            used_r.add(i)
            used_t.add(j)
            matched += 1
            iou_sum += float(ious[i, j])
            same_class += int(ref[i, 5] == test[j, 5])
    return {"reference": int(ref.shape[0]), "candidate": int(test.shape[0]), "matched": matched, "same_class": same_class, "iou_sum": iou_sum}


def is_yolo_output(shape: Sequence[int]) -> bool:
    return len(shape) == 3 and shape[1] >= 5 and shape[2] > shape[1]


@dataclass(frozen=True)
class Tolerance:
    """Pass thresholds, measured on the shared YOLOv8n (COCO) with 8 coco128 images on ONNX Runtime (CPU),
    ranges from 64 images (percentile):

    ==============================================  ========  =======  ======  =========
    candidate vs reference                          cosine    SQNR dB  recall  precision
    ==============================================  ========  =======  ======  =========
    Q/DQ ONNX vs its own reference                  1.0       inf      1.000   1.000
    Q/DQ ONNX vs the FP32 ONNX's reference          0.99900   26.93    0.886   0.969
    implicit simulation vs the FP32 reference       0.99905   27.16    0.800   0.966
    Q/DQ ONNX, 1 backbone conv zeroed               0.98755   15.88    0.000   (none)
    Q/DQ ONNX, 3 backbone convs zeroed              0.98143   14.31    0.000   (none)
    Q/DQ ONNX, 1 residual bottleneck conv zeroed    0.99599   20.94    0.562   0.947
    ==============================================  ========  =======  ======  =========

    ``python -m benchmarks.verify_tolerance`` reproduces it (``benchmarks/results/verify_tolerance.json``).
    SQNR 20 dB sits 6.9 dB below the worst passing case and 4.1 dB above the zeroed backbone convs; cosine
    0.995 has margins 0.004 / 0.0075. Damage the residual shortcut hides (last row) keeps SQNR and cosine
    at the threshold; recall catches it (0.6: 0.2 below the worst passing case, only 0.04 above that row on
    these 8 images, 0.22 on 16 other images), so verification is a check for broken engines, not a
    guarantee against every small error. A zeroed backbone conv leaves no detection at all, so precision
    (0.5) only catches spurious detections.
    """

    cosine: float = 0.995
    snr_db: float = 20.0
    recall: float = 0.6
    precision: float = 0.5
    conf: float = DETECT_CONF
    match_iou: float = MATCH_IOU

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


DEFAULT_TOLERANCE = Tolerance()


def parse_tolerance(items: Sequence[str]) -> Tolerance:
    """``["snr_db=25", "recall=0.7"]`` -> :class:`Tolerance` with those thresholds changed."""
    values: dict[str, float] = {}
    known = list(DEFAULT_TOLERANCE.to_dict())
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in known:
            raise TrtqError(f"--tolerance {item!r}: expected KEY=VALUE with KEY one of {', '.join(known)}")
        try:
            values[key] = float(raw)
        except ValueError:
            raise TrtqError(f"--tolerance {item!r}: {raw!r} is not a number") from None
        low = -1.0 if key == "cosine" else 0.0  # a cosine similarity lies in [-1, 1]
        if key != "snr_db" and not low <= values[key] <= 1.0:
            raise TrtqError(f"--tolerance {item!r}: {key} lies between {low:g} and 1")
    return replace(DEFAULT_TOLERANCE, **values)


def _stack(runs: Sequence[Mapping[str, np.ndarray]], name: str) -> np.ndarray:
    arrays = [np.asarray(r[name]) for r in runs]
    if arrays and arrays[0].ndim == 0:
        return np.stack(arrays)
    return np.concatenate([a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(1, -1) for a in arrays])


def _polygraphy_metrics(name: str, ref: np.ndarray, cand: np.ndarray, tol: Tolerance) -> dict[str, Any]:
    """Cosine and SQNR from Polygraphy's comparators (one iteration holding every image)."""
    from polygraphy.comparator import CosineSimilarityCompareFunc, IterationResult, SnrCompareFunc
    from polygraphy.logger import G_LOGGER

    r = IterationResult({name: ref}, runner_name="reference")
    c = IterationResult({name: cand}, runner_name="candidate")
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):  # Polygraphy prints to stdout; trtq reports itself
        cos = CosineSimilarityCompareFunc(cosine_similarity_threshold=tol.cosine)(r, c)[name]
        snr = SnrCompareFunc(snr_threshold=tol.snr_db)(r, c)[name]
    if isinstance(cos, bool) or isinstance(snr, bool):  # shapes could not be aligned
        raise TrtqError(f"output {name!r}: shapes differ ({list(ref.shape)} vs {list(cand.shape)})")
    diff = np.abs(ref.astype(np.float64) - cand.astype(np.float64))
    return {
        "cosine": float(cos.cosine_similarity),
        "sqnr_db": float(snr.snr),
        "max_abs_error": float(np.max(diff)) if diff.size else 0.0,
        "passed": bool(cos) and bool(snr),
    }


def _decoded(batch: np.ndarray, layout: TaskLayout | None, conf: float) -> list[np.ndarray]:
    """Rows ``x1 y1 x2 y2 score class ...`` per image; OBB boxes become the axis-aligned box around the corners."""
    from trtq.postprocess import decode, decode_layout, xywhr2corners

    pred = np.asarray(batch, dtype=np.float32)
    if layout is None:
        return decode(pred, conf=conf, iou=DETECT_IOU)
    rows = decode_layout(pred, layout, conf=conf, iou=DETECT_IOU)
    if layout.task != "obb":
        return rows
    out = []
    for r in rows:
        corners = xywhr2corners(np.concatenate([r[:, :4], r[:, 6:7]], axis=1))  # (n, 4, 2)
        aligned = r.copy()
        aligned[:, :2], aligned[:, 2:4] = corners.min(axis=1), corners.max(axis=1)
        out.append(aligned)
    return out


def detection_agreement(
    reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], *, conf: float = DETECT_CONF,
    iou: float = MATCH_IOU, layout: TaskLayout | None = None,
) -> dict[str, Any]:
    """Decoded detections of each reference batch matched to the candidate's (see the module docstring).

    ``layout`` says how to decode the head output (any task and head form); without it the output is read
    as a plain detector's ``(N, 4 + nc, anchors)``.
    """
    tot = {"reference": 0, "candidate": 0, "matched": 0, "same_class": 0, "iou_sum": 0.0}
    for rb, cb in zip(reference, candidate, strict=True):
        rdets = _decoded(rb, layout, conf)
        cdets = _decoded(cb, layout, conf)
        for rd, cd in zip(rdets, cdets, strict=True):
            m = match_detections(rd, cd, iou)
            for key in tot:
                tot[key] += m[key]
    matched = int(tot["matched"])
    return {
        "conf": conf,
        "match_iou": iou,
        "reference": int(tot["reference"]),
        "candidate": int(tot["candidate"]),
        "matched": matched,
        "recall": matched / tot["reference"] if tot["reference"] else 1.0,
        "precision": matched / tot["candidate"] if tot["candidate"] else 1.0,
        "class_agreement": tot["same_class"] / matched if matched else 1.0,
        "mean_iou": tot["iou_sum"] / matched if matched else 0.0,
    }


def compare_outputs(
    reference: Sequence[Mapping[str, np.ndarray]],
    candidate: Sequence[Mapping[str, np.ndarray]],
    *,
    names: Sequence[str] | None = None,
    tolerance: Tolerance | None = None,
    layout: TaskLayout | None = None,
) -> dict[str, Any]:
    """Compare per-iteration outputs ``[{name: array}]`` of a candidate with a reference.

    Returns ``{"outputs": {name: {cosine, sqnr_db, max_abs_error, passed}}, "detections": {...} (YOLO head
    outputs only), "passed": bool}``. With ``layout`` (the model's task layout) the first compared output is
    decoded as that task's head; without it, an output shaped like a detector's head is decoded as one.
    """
    tol = tolerance or DEFAULT_TOLERANCE
    if len(reference) != len(candidate):
        raise TrtqError(f"{len(reference)} reference iterations but {len(candidate)} candidate iterations")
    if not reference:
        raise TrtqError("nothing to compare: the reference holds no iteration")
    out_names = list(names) if names is not None else list(reference[0])
    missing = [n for n in out_names if n not in candidate[0]]
    if missing:
        raise TrtqError(f"the candidate has no output {missing[0]!r} (it has {list(candidate[0])}); "
                        "compare a model with its own reference")
    outputs: dict[str, Any] = {}
    detections: dict[str, Any] | None = None
    det_passed = True
    for name in out_names:
        ref, cand = _stack(reference, name), _stack(candidate, name)
        if ref.shape != cand.shape:
            raise TrtqError(f"output {name!r}: reference shape {list(ref.shape)} vs candidate {list(cand.shape)}")
        outputs[name] = _polygraphy_metrics(name, ref, cand, tol)
        if layout is not None and layout.end2end and name == out_names[0]:
            # an end-to-end head lists its top detections in rank order: near-tied candidates swap places
            # with tiny input changes, so element-wise metrics say little; the detections decide
            outputs[name]["judged_by"] = "detections"
            outputs[name]["passed"] = True
        shape = np.asarray(reference[0][name]).shape
        head = name == out_names[0] if layout is not None else is_yolo_output(shape)
        if detections is None and head:
            detections = detection_agreement([r[name] for r in reference], [c[name] for c in candidate],
                                             conf=tol.conf, iou=tol.match_iou, layout=layout)
            if detections["reference"]:
                det_passed = detections["recall"] >= tol.recall and detections["precision"] >= tol.precision
            else:
                det_passed = detections["candidate"] == 0 or detections["precision"] >= tol.precision
            detections["passed"] = det_passed
    result: dict[str, Any] = {"outputs": outputs}
    if detections is not None:
        result["detections"] = detections
    result["passed"] = all(o["passed"] for o in outputs.values()) and det_passed
    return result
