"""Output agreement: how close a candidate's outputs are to a reference's, the one comparison in trtq.

Used by ``trtq verify``, the check after ``trtq build`` (:mod:`trtq.verify`), ``trtq compare`` and the
sensitivity ranking (:mod:`trtq.fidelity`) through :func:`compare_outputs`:

* per output: cosine similarity and SQNR computed by Polygraphy's comparators
  (``polygraphy.comparator.CosineSimilarityCompareFunc`` / ``SnrCompareFunc`` over all images at once),
  and the largest absolute error;
* detection agreement for YOLO head outputs: both sides decoded for the model's task and head form
  (``trtq.postprocess.decode_layout``: confidence filter + class-aware NMS, or none for end-to-end heads),
  reference detections matched one-to-one to candidate detections of the same class at IoU >= 0.5
  (highest IoU first), reported as precision, recall and mean IoU; class agreement is the share of
  detections matched by place alone (any class) that agree on the class. A detection above the confidence
  threshold on one side is looked for among the other side's detections above ``conf - score_band``, so a
  score that crosses the threshold by a little is not a miss;
* per task, over the matched detections: keypoint OKS and mean pixel error (pose), mask IoU (segment,
  masks made from each side's own coefficients and prototypes), angle error (OBB).

A model passes when every output reaches :class:`Tolerance`'s cosine and SQNR (end-to-end outputs are
judged by their detections, mask prototypes by the mask IoU) and the detections reach its recall,
precision, class agreement and task thresholds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from trtq.errors import TrtqError
from trtq.tasks import TaskLayout


class ReferenceMismatch(TrtqError):
    """The candidate cannot be compared with the reference (an output missing, another shape, inputs it does
    not take): a failed verification, not one that did not run."""


MATCH_IOU = 0.5
DETECT_CONF = 0.25
DETECT_IOU = 0.7
SCORE_BAND = 0.1


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


def _greedy_pairs(ious: np.ndarray, iou: float, allowed: np.ndarray | None = None) -> list[tuple[int, int]]:
    """One-to-one pairs ``(i, j)`` with IoU >= ``iou`` (and ``allowed[i, j]``), highest IoU first."""
    if not ious.size:
        return []
    ok = ious >= iou
    if allowed is not None:
        ok &= allowed
    cand = np.argwhere(ok)
    order = np.argsort(-ious[cand[:, 0], cand[:, 1]], kind="stable")
    used_r: set[int] = set()
    used_t: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for k in order:
        i, j = int(cand[k, 0]), int(cand[k, 1])
        if i in used_r or j in used_t:
            continue
        used_r.add(i)
        used_t.add(j)
        pairs.append((i, j))
    return pairs


def match_detections(ref: np.ndarray, test: np.ndarray, iou: float = MATCH_IOU) -> dict[str, float]:
    """Greedy one-to-one matching (highest IoU first) of ``(k, 6)`` detections of the same class; counts per
    image. ``same_class`` / ``located`` count the class-blind matches that agree on the class."""
    ious = box_iou(ref[:, :4], test[:, :4])
    same = ref[:, None, 5] == test[None, :, 5] if ious.size else None
    pairs = _greedy_pairs(ious, iou, same)
    blind = _greedy_pairs(ious, iou)
    return {"reference": int(ref.shape[0]), "candidate": int(test.shape[0]), "matched": len(pairs),
            "located": len(blind), "same_class": sum(int(ref[i, 5] == test[j, 5]) for i, j in blind),
            "iou_sum": float(sum(ious[i, j] for i, j in pairs))}


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
    Q/DQ ONNX vs the FP32 ONNX's reference          0.99900   26.93    0.971   1.000
    implicit simulation vs the FP32 reference       0.99905   27.16    0.943   1.000
    Q/DQ ONNX, 1 backbone conv zeroed               0.98755   15.88    0.000   (none)
    Q/DQ ONNX, 3 backbone convs zeroed              0.98143   14.31    0.000   (none)
    Q/DQ ONNX, 1 residual bottleneck conv zeroed    0.99599   20.94    0.562   0.947
    ==============================================  ========  =======  ======  =========

    ``python -m benchmarks.verify_tolerance`` reproduces it (``benchmarks/results/verify_tolerance.json``
    and ``.md``, which also hold the task rows behind ``class_agreement``, ``oks``, ``mask_iou`` and
    ``angle_deg``: a good INT8 model gives class agreement 1.0, OKS 0.78, mask IoU 0.79 and 0.23 degrees on
    YOLOv8n structures whose keypoint, mask and angle branches keep their initial weights; reversed class
    channels give class agreement and recall 0, keypoints shifted 64 px OKS 0.01, zeroed mask-coefficient
    convs mask IoU 0.59, an angle offset of 10 degrees 10.1 degrees). SQNR 20 dB sits 6.3 dB below the worst
    passing case and 4.1 dB above the zeroed backbone convs. Damage the residual shortcut hides (last row)
    keeps SQNR and cosine at the threshold; recall catches it, so verification is a check for broken
    engines, not a guarantee against every small error. A zeroed backbone conv leaves no detection at all,
    so precision (0.5) only catches spurious detections.
    """

    cosine: float = 0.995
    snr_db: float = 20.0
    recall: float = 0.6
    precision: float = 0.5
    class_agreement: float = 0.8
    oks: float = 0.5
    mask_iou: float = 0.7
    angle_deg: float = 5.0
    conf: float = DETECT_CONF
    match_iou: float = MATCH_IOU
    score_band: float = SCORE_BAND

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
        if key == "angle_deg" and not 0.0 <= values[key] <= 90.0:
            raise TrtqError(f"--tolerance {item!r}: angle_deg lies between 0 and 90")
        if key not in ("snr_db", "angle_deg") and not low <= values[key] <= 1.0:
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
        raise ReferenceMismatch(f"output {name!r}: shapes differ ({list(ref.shape)} vs {list(cand.shape)})")
    diff = np.abs(ref.astype(np.float64) - cand.astype(np.float64))
    return {
        "cosine": float(cos.cosine_similarity),
        "sqnr_db": float(snr.snr),
        "max_abs_error": float(np.max(diff)) if diff.size else 0.0,
        "passed": bool(cos) and bool(snr),
    }


def _decoded(batch: np.ndarray, layout: TaskLayout | None, conf: float) -> list[np.ndarray]:
    """Rows ``x1 y1 x2 y2 score class ...`` per image; OBB boxes become the axis-aligned box around the corners,
    with ``angle w h`` after the class."""
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
        aligned = np.concatenate([r[:, :7], r[:, 2:4]], axis=1)
        aligned[:, :2], aligned[:, 2:4] = corners.min(axis=1), corners.max(axis=1)
        out.append(aligned)
    return out


#: COCO's per-keypoint OKS sigmas (person keypoints); other keypoint sets weigh every keypoint alike
COCO_KPT_SIGMAS = np.array([0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87,
                            0.87, 0.89, 0.89]) / 10.0


def keypoint_agreement(ref: np.ndarray, cand: np.ndarray, kpt_shape: tuple[int, int]) -> tuple[float, float] | None:
    """OKS and mean pixel error of one detection's keypoints against the reference's (COCO's OKS with the
    reference box's area, ``0.53 w h`` as ultralytics' validator takes it): only keypoints the reference
    sees (visibility > 0.5) count. None when the reference sees none."""
    k, d = kpt_shape
    r = ref[6 : 6 + k * d].reshape(k, d).astype(np.float64)
    c = cand[6 : 6 + k * d].reshape(k, d).astype(np.float64)
    seen = r[:, 2] > 0.5 if d == 3 else np.ones(k, dtype=bool)
    if not seen.any():
        return None
    dist2 = np.sum((r[:, :2] - c[:, :2]) ** 2, axis=1)
    area = max(float((ref[2] - ref[0]) * (ref[3] - ref[1])) * 0.53, 1e-9)
    sigmas = COCO_KPT_SIGMAS if k == len(COCO_KPT_SIGMAS) else np.full(k, 1.0 / k)
    oks = np.exp(-dist2 / ((2 * sigmas) ** 2 * area * 2))
    return float(oks[seen].mean()), float(np.sqrt(dist2[seen]).mean())


def mask_iou(ref: np.ndarray, cand: np.ndarray, ref_protos: np.ndarray, cand_protos: np.ndarray, nm: int) -> float:
    """IoU of the two detections' masks (each from its own coefficients, prototypes and box, at the input's
    resolution, as ``trtq.postprocess.process_masks`` makes them for predict)."""
    from trtq.postprocess import process_masks

    shape = (ref_protos.shape[1] * 4, ref_protos.shape[2] * 4)
    a = process_masks(ref_protos, ref[None, 6 : 6 + nm], ref[None, :4], shape)[0]
    b = process_masks(cand_protos, cand[None, 6 : 6 + nm], cand[None, :4], shape)[0]
    union = int(np.count_nonzero(a | b))
    return float(np.count_nonzero(a & b)) / union if union else 1.0


def angle_error_deg(ref: np.ndarray, cand: np.ndarray) -> float:
    """Angle difference in degrees of two rotated boxes (rows ``... angle w h`` from :func:`_decoded`), each
    read with its long side first; near-square boxes (sides within 20%) are compared modulo 90 degrees."""

    def long_side(row: np.ndarray) -> tuple[float, float]:
        angle, w, h = (float(v) for v in row[6:9])
        if w < h:
            angle, w, h = angle + np.pi / 2, h, w
        return angle, w / max(h, 1e-9)

    a, ra = long_side(ref)
    b, rb = long_side(cand)
    period = np.pi / 2 if min(ra, rb) < 1.2 else np.pi
    diff = abs(a - b) % period
    return float(np.degrees(min(diff, period - diff)))


def _task_agreement(layout: TaskLayout | None, rd: np.ndarray, cd: np.ndarray, pairs: Sequence[tuple[int, int]],
                    protos: tuple[np.ndarray, np.ndarray] | None) -> dict[str, list[float]]:
    """Per matched pair: keypoint OKS and pixel error (pose), mask IoU (segment), angle error (OBB)."""
    out: dict[str, list[float]] = {}
    if layout is None or not pairs:
        return out
    for i, j in pairs:
        if layout.task == "pose" and layout.kpt_shape is not None:
            kp = keypoint_agreement(rd[i], cd[j], layout.kpt_shape)
            if kp is not None:
                out.setdefault("oks", []).append(kp[0])
                out.setdefault("keypoint_px", []).append(kp[1])
        elif layout.task == "segment" and protos is not None:
            out.setdefault("mask_iou", []).append(mask_iou(rd[i], cd[j], protos[0], protos[1], layout.nm))
        elif layout.task == "obb":
            out.setdefault("angle_deg", []).append(angle_error_deg(rd[i], cd[j]))
    return out


def detection_agreement(
    reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], *, conf: float = DETECT_CONF,
    iou: float = MATCH_IOU, layout: TaskLayout | None = None, band: float = SCORE_BAND,
    reference_protos: Sequence[np.ndarray] | None = None, candidate_protos: Sequence[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Decoded detections of each reference batch matched to the candidate's (see the module docstring).

    ``layout`` says how to decode the head output (any task and head form); without it the output is read
    as a plain detector's ``(N, 4 + nc, anchors)``. Detections match only within their class. A detection
    scored above ``conf`` on one side is looked for among the other side's detections above ``conf - band``,
    so a score that crosses ``conf`` by less than ``band`` is not a miss. Segment models need the mask
    prototypes of both sides (``*_protos``, one array per batch).
    """
    low = max(conf - band, 0.0)
    tot = {"reference": 0, "candidate": 0, "matched": 0, "matched_candidates": 0, "located": 0, "same_class": 0,
           "iou_sum": 0.0}
    task: dict[str, list[float]] = {}
    for b, (rb, cb) in enumerate(zip(reference, candidate, strict=True)):
        for k, (r_low, c_low) in enumerate(zip(_decoded(rb, layout, low), _decoded(cb, layout, low), strict=True)):
            rd, cd = r_low[r_low[:, 4] > conf], c_low[c_low[:, 4] > conf]
            found = match_detections(rd, c_low, iou)  # recall: each reference detection found?
            kept = match_detections(cd, r_low, iou)  # precision: each candidate detection real?
            for key in ("reference", "matched", "located", "same_class", "iou_sum"):
                tot[key] += found[key]
            tot["candidate"] += kept["reference"]
            tot["matched_candidates"] += kept["matched"]
            protos = None
            if reference_protos is not None and candidate_protos is not None:
                protos = (np.asarray(reference_protos[b][k], np.float32), np.asarray(candidate_protos[b][k], np.float32))
            ious = box_iou(rd[:, :4], c_low[:, :4])
            pairs = _greedy_pairs(ious, iou, rd[:, None, 5] == c_low[None, :, 5] if ious.size else None)
            for key, values in _task_agreement(layout, rd, c_low, pairs, protos).items():
                task.setdefault(key, []).extend(values)
    matched = int(tot["matched"])
    result: dict[str, Any] = {
        "conf": conf,
        "match_iou": iou,
        "score_band": band,
        "reference": int(tot["reference"]),
        "candidate": int(tot["candidate"]),
        "matched": matched,
        "recall": matched / tot["reference"] if tot["reference"] else 1.0,
        "precision": tot["matched_candidates"] / tot["candidate"] if tot["candidate"] else 1.0,
        "class_agreement": tot["same_class"] / tot["located"] if tot["located"] else 1.0,
        "mean_iou": tot["iou_sum"] / matched if matched else 0.0,
    }
    for key, values in task.items():
        result[key] = float(np.mean(values))
    if "keypoint_px" in result:
        result["keypoint_px_max"] = float(np.max(task["keypoint_px"]))
    return result


def _task_passed(d: Mapping[str, Any], tol: Tolerance) -> bool:
    """The task's own agreement over matched detections (a metric with no matched detection is not judged)."""
    checks = [d.get("oks") is None or d["oks"] >= tol.oks,
              d.get("mask_iou") is None or d["mask_iou"] >= tol.mask_iou,
              d.get("angle_deg") is None or d["angle_deg"] <= tol.angle_deg]
    return all(checks)


def _detections_passed(d: Mapping[str, Any], tol: Tolerance) -> bool:
    if not d["reference"]:
        return d["candidate"] == 0 or d["precision"] >= tol.precision
    return (d["recall"] >= tol.recall and d["precision"] >= tol.precision
            and d["class_agreement"] >= tol.class_agreement and _task_passed(d, tol))


def _protos(reference: Sequence[Mapping[str, np.ndarray]], candidate: Sequence[Mapping[str, np.ndarray]],
            layout: TaskLayout | None, names: Sequence[str]) -> tuple[list[np.ndarray] | None, list[np.ndarray] | None]:
    """A segment model's mask prototypes (its 4-D output) per batch, on both sides."""
    if layout is None or layout.task != "segment":
        return None, None
    name = next((n for n in names if np.asarray(reference[0][n]).ndim == 4), None)
    if name is None or name not in candidate[0]:
        return None, None
    return [np.asarray(r[name]) for r in reference], [np.asarray(c[name]) for c in candidate]


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
        raise ReferenceMismatch(f"{len(reference)} reference iterations but {len(candidate)} candidate iterations")
    if not reference:
        raise TrtqError("nothing to compare: the reference holds no iteration")
    out_names = list(names) if names is not None else list(reference[0])
    missing = [n for n in out_names if n not in candidate[0]]
    if missing:
        raise ReferenceMismatch(f"the candidate has no output {missing[0]!r} (it has {list(candidate[0])}); "
                        "compare a model with its own reference")
    outputs: dict[str, Any] = {}
    detections: dict[str, Any] | None = None
    det_passed = True
    for name in out_names:
        ref, cand = _stack(reference, name), _stack(candidate, name)
        if ref.shape != cand.shape:
            raise ReferenceMismatch(f"output {name!r}: reference shape {list(ref.shape)} vs candidate {list(cand.shape)}")
        outputs[name] = _polygraphy_metrics(name, ref, cand, tol)
        if layout is not None and layout.end2end and name == out_names[0]:
            # an end-to-end head lists its top detections in rank order: near-tied candidates swap places
            # with tiny input changes, so element-wise metrics say little; the detections decide
            outputs[name]["judged_by"] = "detections"
            outputs[name]["passed"] = True
        if layout is not None and layout.task == "segment" and ref.ndim and np.asarray(reference[0][name]).ndim == 4:
            # mask prototypes are seen only through the masks (coefficients x prototypes > 0): mask IoU decides
            outputs[name]["judged_by"] = "mask IoU"
            outputs[name]["passed"] = True
        shape = np.asarray(reference[0][name]).shape
        head = name == out_names[0] if layout is not None else is_yolo_output(shape)
        if detections is None and head:
            ref_protos, cand_protos = _protos(reference, candidate, layout, out_names)
            detections = detection_agreement([r[name] for r in reference], [c[name] for c in candidate],
                                             conf=tol.conf, iou=tol.match_iou, layout=layout, band=tol.score_band,
                                             reference_protos=ref_protos, candidate_protos=cand_protos)
            det_passed = _detections_passed(detections, tol)
            detections["passed"] = det_passed
    result: dict[str, Any] = {"outputs": outputs}
    if detections is not None:
        result["detections"] = detections
    result["passed"] = all(o["passed"] for o in outputs.values()) and det_passed
    return result
