"""Accuracy of what ``trtq deploy deepstream`` ships, on the shared YOLOv8n (ONNX Runtime, CPU).

Rows (mAP50-95 / mAP50 by ``trtq eval``, ultralytics' validator on coco128 val2017):

- FP32 ONNX, trtq's default Q/DQ and trtq's implicit INT8 simulation (both calibrated with ultralytics'
  letterbox): the references;
- implicit INT8 as DeepStream gets it: the FP32 ONNX with the bundle's ``calib.table`` ranges simulated
  (``trtq.reference.simulate_implicit``; the calibration used nvinfer's preprocessing);
- explicit INT8 as DeepStream gets it: the bundle's Q/DQ graph (before the layout nodes, which are float).

Detection agreement (precision / recall at IoU 0.5, same class) of each INT8 bundle against the FP32 bundle,
all three run as DeepStream would: nvinfer's preprocessing, DeepStream-Yolo's parser, cluster-mode=2 NMS. And
the cost of nvinfer's preprocessing itself: the FP32 bundle under nvinfer preprocessing (0 padding, truncated
geometry) against ``trtq predict`` (ultralytics' letterbox, 114 padding) on the same val images.

    PYTHONPATH=. YOLO_OFFLINE=1 .venv/bin/python -m benchmarks.deploy [--shared ../shared/assets]

Writes ``benchmarks/results/deploy.json`` and ``deploy.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

RESULTS = Path(__file__).resolve().parent / "results"


def _agreement(ref: list[np.ndarray], test: list[np.ndarray]) -> dict[str, float]:
    from trtq.agreement import match_detections

    tot: dict[str, float] = {"reference": 0, "candidate": 0, "same_class": 0}
    for r, t in zip(ref, test, strict=True):
        m = match_detections(r, t)
        for k in tot:
            tot[k] += m[k]
    return {"recall": tot["same_class"] / max(tot["reference"], 1),
            "precision": tot["same_class"] / max(tot["candidate"], 1), "detections": tot["reference"]}


def _ds_detections(model: onnx.ModelProto, images: list[Path]) -> list[np.ndarray]:
    import onnxruntime as ort

    from trtq.deploy import nvinfer
    from trtq.images import load_image

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = []
    for p in images:
        x, conv = nvinfer.preprocess_frames([load_image(p)], (640, 640))
        y = np.asarray(sess.run(["output"], {"input": x})[0])
        out.append(nvinfer.detections(y[0], conv[0], (640, 640), num_classes=80, pre_cluster_threshold=0.25,
                                      nms_iou=0.7, topk=300, cluster_mode=2).astype(np.float32))
    return out


# ---------------------------------------------------------------------------------------------------------------
# mAP of the same network under nvinfer's preprocessing and under ultralytics' letterbox
# ---------------------------------------------------------------------------------------------------------------
IOUV = np.linspace(0.5, 0.95, 10)


def _labels(image: Path, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    from trtq.evaluate import label_path

    path = label_path(image)
    rows = np.loadtxt(path, ndmin=2) if path.is_file() and path.stat().st_size else np.zeros((0, 5))
    h, w = shape
    cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
    return rows[:, 0].astype(int), boxes


def _match(pred_cls: np.ndarray, true_cls: np.ndarray, iou: np.ndarray) -> np.ndarray:
    """ultralytics' ``BaseValidator.match_predictions`` (8.4, greedy branch, engine/validator.py 336-358)."""
    correct = np.zeros((pred_cls.shape[0], len(IOUV)), dtype=bool)
    iou = iou * (true_cls[:, None] == pred_cls)
    matched = np.zeros((iou.shape[0], len(IOUV)), dtype=bool)
    for j in np.flatnonzero((iou >= IOUV.min()).any(0)):
        available = np.where(matched, 0, iou[:, j, None])
        k = available.argmax(0)
        correct[j] = available[k, range(len(IOUV))] >= IOUV
        matched[k, range(len(IOUV))] |= correct[j]
    return correct


def _candidates(y: np.ndarray, conf: float = 0.001, iou: float = 0.7, max_det: int = 300) -> np.ndarray:
    """ultralytics' val-time filtering of the [N, 6] rows: score > conf, class-aware NMS, max_det."""
    from trtq.postprocess import nms

    y = y[y[:, 4] > conf]
    keep = nms(y[:, :4] + y[:, 5:6] * 7680.0, y[:, 4], iou)[:max_det]
    return y[keep]


def preprocessing_map(model: onnx.ModelProto, images: list[Path]) -> dict[str, dict[str, float]]:
    """mAP50-95 / mAP50 of the DeepStream-layout FP32 model, images prepared three ways, decoded alike."""
    import onnxruntime as ort
    from ultralytics.utils.metrics import ap_per_class

    from trtq.agreement import box_iou
    from trtq.deploy import nvinfer
    from trtq.images import letterbox, load_image, to_tensor
    from trtq.postprocess import scale_boxes

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ways = ("ultralytics letterbox (bilinear, 114 padding)", "nvinfer, scaling-filter=1 (bilinear, 0 padding)",
            "nvinfer default scaling-filter (nearest, 0 padding)")
    stats: dict[str, list[tuple[np.ndarray, ...]]] = {w: [] for w in ways}
    for path in images:
        img = load_image(path)
        true_cls, true_boxes = _labels(path, img.shape[:2])
        for way in ways:
            if way.startswith("ultralytics"):
                x = to_tensor([letterbox(img, (640, 640))[0]])
                y = _candidates(np.asarray(sess.run(["output"], {"input": x})[0])[0])
                boxes = scale_boxes(y[:, :4].copy(), (640, 640), img.shape[:2])
            else:
                filt = nvinfer.SCALING_FILTER_BILINEAR if "=1" in way else nvinfer.SCALING_FILTER_DEFAULT
                x, conv = nvinfer.preprocess_frames([img], (640, 640), scaling_filter=filt)
                y = _candidates(np.asarray(sess.run(["output"], {"input": x})[0])[0])
                ltwh = np.concatenate([y[:, :2], y[:, 2:4] - y[:, :2], y[:, 4:]], axis=1)
                boxes = nvinfer.to_frame(ltwh, conv[0])[:, :4]
            iou = box_iou(true_boxes, boxes) if len(true_boxes) and len(boxes) else np.zeros((len(true_boxes), len(boxes)))
            stats[way].append((_match(y[:, 5].astype(int), true_cls, iou), y[:, 4], y[:, 5], true_cls))
    out: dict[str, dict[str, float]] = {}
    for way, rows in stats.items():
        tp, conf, pcls, tcls = (np.concatenate([r[i] for r in rows]) for i in range(4))
        ap = ap_per_class(tp, conf, pcls, tcls)[5]
        out[way] = {"map50_95": float(ap.mean()), "map50": float(ap[:, 0].mean())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared/assets")
    args = ap.parse_args()
    shared = Path(args.shared).resolve()
    onnx_path = shared / "models" / "yolov8n-coco.onnx"
    calib = shared / "coco128" / "images" / "train2017"
    val_images = sorted((shared / "coco128" / "images" / "val2017").glob("*.jpg"))
    data = shared / "coco128" / "data.yaml"

    from calibrators.ranges import DEFAULT_ALGO, DEFAULT_PERCENTILE
    from trtq.deploy import layout as ds_layout
    from trtq.deploy.bundle import calibrate_nvinfer, quantize_explicit
    from trtq.evaluate import evaluate
    from trtq.modelinfo import read_model_info
    from trtq.quantize import quantize
    from trtq.quantize_options import QuantizeOptions
    from trtq.reference import simulate_implicit
    from trtq.runtime.predict import predict

    t0 = time.time()
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="trtq-bench-deploy-") as tmp:
        work = Path(tmp)
        info = read_model_info(onnx_path)
        layout = info.layout
        table, _ = calibrate_nvinfer(onnx_path, str(calib), info, num_images=None, seed=0, algo=DEFAULT_ALGO,
                                     percentile=DEFAULT_PERCENTILE, trt_version="10.3.0")
        fp32 = onnx.load(str(onnx_path))
        from trtq.deploy.bundle import bundle_table

        bundle_fp32 = ds_layout.to_deepstream_layout(fp32, layout)
        onnx.save(bundle_fp32, str(work / "bundle.onnx"))
        btable = bundle_table(table, fp32, work / "bundle.onnx", {info.input.name: ds_layout.INPUT_NAME})
        # the bundle's calib.table, under the source ONNX's names, simulated on the source ONNX (same graph body)
        back = {ds_layout.INPUT_NAME: info.input.name}
        btable.amax = {back.get(k, k): v for k, v in btable.amax.items()}
        implicit = simulate_implicit(fp32, btable)
        onnx.save(implicit, str(work / "implicit.onnx"))
        explicit = quantize_explicit(onnx_path, table, work)
        onnx.save(explicit, str(work / "explicit.onnx"))
        from calibrators.calibrate import calibrate

        letterbox_table = calibrate(onnx_path, str(calib), write=False, progress=False).table
        onnx.save(simulate_implicit(fp32, letterbox_table), str(work / "implicit_letterbox.onnx"))
        default_qdq = work / "default.int8.qdq.onnx"
        quantize(onnx_path, str(calib), QuantizeOptions(progress=False), output=default_qdq)
        for label, path in (("FP32 ONNX", onnx_path), ("trtq default Q/DQ (letterbox calibration)", default_qdq),
                            ("trtq implicit INT8 (letterbox cache simulated)", work / "implicit_letterbox.onnx"),
                            ("DeepStream implicit INT8 (calib.table simulated)", work / "implicit.onnx"),
                            ("DeepStream explicit INT8 (bundle Q/DQ)", work / "explicit.onnx")):
            res = evaluate(path, data)
            rows[label] = {"map50_95": res["map50_95"], "map50": res["map50"]}
        ref = _ds_detections(bundle_fp32, val_images)
        agree = {
            "implicit": _agreement(ref, _ds_detections(
                ds_layout.to_deepstream_layout(implicit, layout), val_images)),
            "explicit": _agreement(ref, _ds_detections(
                ds_layout.to_deepstream_layout(explicit, layout), val_images)),
        }
        preds = {Path(p.path).name: p.detections for p in predict(onnx_path, str(shared / "coco128" / "images" / "val2017"))}
        letterbox = [np.concatenate([preds[p.name].boxes, preds[p.name].scores[:, None],
                                     preds[p.name].class_ids[:, None]], axis=1).astype(np.float32) for p in val_images]
        agree["nvinfer preprocessing vs ultralytics letterbox (FP32)"] = _agreement(letterbox, ref)
        prep = preprocessing_map(bundle_fp32, val_images)
    result = {"rows": rows, "agreement": agree, "preprocessing": prep, "seconds": round(time.time() - t0, 1),
              "load": os.getloadavg(), "images": len(val_images)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "deploy.json").write_text(json.dumps(result, indent=2) + "\n")
    ref_map = rows["trtq default Q/DQ (letterbox calibration)"]["map50_95"]
    md = ["# trtq deploy: accuracy of the DeepStream bundle (shared YOLOv8n, coco128 val2017, ONNX Runtime CPU)", "",
          "| model | mAP50-95 | mAP50 | vs trtq default Q/DQ |", "|---|---:|---:|---:|"]
    for label, r in rows.items():
        md.append(f"| {label} | {r['map50_95']:.4f} | {r['map50']:.4f} | {100 * (r['map50_95'] - ref_map):+.2f} |")
    md += ["", "Detection agreement, run as DeepStream runs them (nvinfer preprocessing, NvDsInferParseYolo, "
           "cluster-mode=2, score 0.25, IoU 0.7), reference first:", "",
           "| comparison | recall | precision | reference detections |", "|---|---:|---:|---:|"]
    for label, a in agree.items():
        name = label if " vs " in label else f"{label} INT8 bundle vs FP32 bundle"
        md.append(f"| {name} | {a['recall']:.3f} | {a['precision']:.3f} | {a['detections']} |")
    md += ["", "The same FP32 network (DeepStream layout) on the same images prepared three ways, decoded alike "
           "(score > 0.001, class-aware NMS 0.7, 300 per image; ultralytics' matching and `ap_per_class`; boxes "
           "mapped back to the image by each preprocessing's own geometry). The difference is what nvinfer's "
           "preprocessing itself costs:", "", "| preprocessing | mAP50-95 | mAP50 |", "|---|---:|---:|"]
    for label, r in prep.items():
        md.append(f"| {label} | {r['map50_95']:.4f} | {r['map50']:.4f} |")
    md += ["", f"Reproduce: `make bench-deploy` ({result['seconds']} s; load average {result['load'][0]:.1f} "
           "on a 2-core AMD EPYC, AVX2, no VNNI)."]
    (RESULTS / "deploy.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
