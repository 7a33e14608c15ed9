"""Fidelity metrics (trtq compare): SQNR, cosine, detection matching, on synthetic outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trtq.agreement import box_iou, match_detections
from trtq.fidelity import cosine, error_score, fidelity_metrics, sqnr_db


def test_sqnr_and_cosine_against_closed_form() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(100000)
    noise = rng.standard_normal(100000) * 0.1
    assert sqnr_db(ref, ref + noise) == pytest.approx(10 * math.log10(np.sum(ref**2) / np.sum(noise**2)))
    assert sqnr_db(ref, ref) == math.inf
    assert cosine(ref, 3 * ref) == pytest.approx(1.0)
    assert cosine(ref, -ref) == pytest.approx(-1.0)


def test_box_iou_brute_force() -> None:
    a = np.array([[0, 0, 10, 10], [5, 5, 15, 15]], dtype=np.float32)
    b = np.array([[0, 0, 10, 10], [10, 10, 20, 20], [0, 0, 5, 5]], dtype=np.float32)
    iou = box_iou(a, b)
    assert iou[0, 0] == pytest.approx(1.0)
    assert iou[0, 1] == pytest.approx(0.0)
    assert iou[0, 2] == pytest.approx(25 / 100)
    assert iou[1, 1] == pytest.approx(25 / 175)


def test_match_detections_one_to_one() -> None:
    ref = np.array([[0, 0, 10, 10, 0.9, 1], [20, 20, 30, 30, 0.8, 2], [50, 50, 60, 60, 0.7, 3]], dtype=np.float32)
    test = np.array([[0, 0, 10, 11, 0.9, 1], [1, 0, 10, 10, 0.5, 1], [20, 20, 30, 30, 0.8, 5]], dtype=np.float32)
    m = match_detections(ref, test, 0.5)
    assert m["reference"] == 3 and m["candidate"] == 3
    # the duplicate candidate box cannot match twice; the third ref box has no partner; the second ref box
    # overlaps a candidate of another class: found where it is, but not a match
    assert m["located"] == 2 and m["same_class"] == 1
    assert m["matched"] == 1


def _yolo_output(rng: np.random.Generator, n: int = 2, nc: int = 3, anchors: int = 200) -> np.ndarray:
    out = np.zeros((n, 4 + nc, anchors), dtype=np.float32)
    out[:, 0:2] = rng.uniform(50, 500, (n, 2, anchors))
    out[:, 2:4] = rng.uniform(10, 60, (n, 2, anchors))
    out[:, 4:] = rng.uniform(0, 0.2, (n, nc, anchors))
    out[:, 4, :5] = 0.9  # five confident class-0 boxes per image
    return out


def test_fidelity_metrics_identical_and_perturbed() -> None:
    rng = np.random.default_rng(1)
    ref = _yolo_output(rng)
    same = fidelity_metrics([[ref]], [[ref.copy()]], ["output0"])
    assert same["outputs"]["output0"]["sqnr_db"] == math.inf
    d = same["detections"]
    assert d["recall"] == 1.0 and d["precision"] == 1.0 and d["class_agreement"] == 1.0
    assert error_score(same) == 0.0
    worse = ref.copy()
    worse[:, 4, :5] = 0.0
    worse[:, 5, :5] = 0.9  # same boxes, other class
    m = fidelity_metrics([[ref]], [[worse]], ["output0"])
    # the boxes are found where they are, but detections match only within their class
    assert m["detections"]["recall"] == 0.0 and m["detections"]["class_agreement"] == 0.0
    assert m["outputs"]["output0"]["boxes_sqnr_db"] == math.inf
    assert error_score(m) > 0
