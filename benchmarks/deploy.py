"""Accuracy of what ``trtq deploy deepstream`` ships, on the shared YOLOv8n (ONNX Runtime, CPU).

Rows (mAP50-95 / mAP50 by ``trtq eval``, ultralytics' validator on coco128 val2017):

- FP32 ONNX and trtq's default Q/DQ (calibrated with ultralytics' letterbox): the references;
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared/assets")
    args = ap.parse_args()
    shared = Path(args.shared).resolve()
    onnx_path = shared / "models" / "yolov8n-coco.onnx"
    calib = shared / "coco128" / "images" / "train2017"
    val_images = sorted((shared / "coco128" / "images" / "val2017").glob("*.jpg"))
    data = shared / "coco128" / "data.yaml"

    from calibrators.ranges import DEFAULT_PERCENTILE
    from trtq.deploy import layout as ds_layout
    from trtq.deploy.bundle import calibrate_nvinfer, quantize_explicit
    from trtq.evaluate import evaluate
    from trtq.modelinfo import read_model_info
    from trtq.quantize import DEFAULT_ALGO, quantize
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
        default_qdq = work / "default.int8.qdq.onnx"
        quantize(onnx_path, str(calib), output=default_qdq, progress=False)
        for label, path in (("FP32 ONNX", onnx_path), ("trtq default Q/DQ (letterbox calibration)", default_qdq),
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
    result = {"rows": rows, "agreement": agree, "seconds": round(time.time() - t0, 1),
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
    md += ["", f"Reproduce: `make bench-deploy` ({result['seconds']} s; load average {result['load'][0]:.1f} "
           "on a 2-core AMD EPYC, AVX2, no VNNI)."]
    (RESULTS / "deploy.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
