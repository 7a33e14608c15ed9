"""Measure both sides of ``trtq verify``'s default tolerance on the shared YOLOv8n (ONNX Runtime, CPU).

Passing side: the Q/DQ ONNX against its own reference and against the FP32 ONNX's reference, and the
implicit-INT8 simulation against the FP32 reference. Failing side: copies of the Q/DQ ONNX with the
weights of one or three backbone convs set to zero, and of one conv inside a residual bottleneck (the
shortcut keeps most of the signal), against the Q/DQ and FP32 references.

    PYTHONPATH=. YOLO_OFFLINE=1 .venv/bin/python -m benchmarks.verify_tolerance [--work DIR] [--calib-images N]

Writes ``benchmarks/results/verify_tolerance.json`` and prints a table with the margins.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ASSETS = Path("/work/shared/assets")
MODEL = ASSETS / "models" / "yolov8n-coco.onnx"
CALIB = ASSETS / "coco128" / "images" / "train2017"
# backbone convs whose weights are zeroed (the stem conv and two C2f convs)
TAMPER_1 = ["/model.2/cv1/conv/Conv"]
TAMPER_3 = ["/model.1/conv/Conv", "/model.4/cv1/conv/Conv", "/model.6/cv2/conv/Conv"]
# one conv inside a residual bottleneck: the shortcut keeps most of the signal (the subtle case)
TAMPER_RESIDUAL = ["/model.6/m.1/cv2/conv/Conv"]


def tamper(src: Path, dst: Path, convs: list[str]) -> Path:
    """A copy of ``src`` with the weights of ``convs`` set to zero (Q/DQ weights: the float input of the
    weight's QuantizeLinear)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    done = 0
    for node in model.graph.node:
        if node.name not in convs:
            continue
        w = node.input[1]
        while w not in inits and w in producers:  # walk back through DequantizeLinear / QuantizeLinear
            w = producers[w].input[0]
        arr = numpy_helper.to_array(inits[w])
        inits[w].CopyFrom(numpy_helper.from_array(np.zeros_like(arr), w))
        done += 1
    if done != len(convs):
        raise SystemExit(f"found {done} of {len(convs)} convs in {src}")
    onnx.save(model, str(dst))
    return dst


def _row(label: str, res: dict[str, Any]) -> dict[str, Any]:
    (name, out), = res["outputs"].items()
    d = res.get("detections") or {}
    return {"case": label, "cosine": out["cosine"], "sqnr_db": out["sqnr_db"], "max_abs_error": out["max_abs_error"],
            "recall": d.get("recall"), "precision": d.get("precision"), "mean_iou": d.get("mean_iou"),
            "passed": res["passed"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--calib-images", type=int, default=64)
    ap.add_argument("--ref-images", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--output", type=Path, default=Path("benchmarks/results/verify_tolerance.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from calibrators.calibrate import calibrate
    from calibrators.table import CalibrationTable
    from trtq.agreement import DEFAULT_TOLERANCE, compare_outputs
    from trtq.quantize import quantize
    from trtq.reference import load_inputs, load_outputs, write_reference
    from trtq.verify import run_artifact

    work = args.work or Path(tempfile.mkdtemp(prefix="trtq-verify-tol-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "yolov8n.percentile.cache"
    if not cache.is_file():
        calibrate(MODEL, str(CALIB), algo="percentile", num_images=args.calib_images, batch=1, seed=0,
                  output=cache, progress=False)
    table = CalibrationTable.load(cache)
    qdq = work / "yolov8n.int8.onnx"
    if not qdq.is_file():
        quantize(MODEL, str(CALIB), table=table, output=qdq, progress=False)
    # references on images the calibration did not see first (another seed)
    kw = {"num_images": args.ref_images, "seed": args.seed}
    ref_qdq = write_reference(qdq, str(CALIB), **kw)
    ref_fp32 = write_reference(MODEL, str(CALIB), artifact=work / "yolov8n.fp32.onnx", **kw)
    ref_sim = write_reference(MODEL, str(CALIB), artifact=cache, folder=work, table=table, **kw)
    t1 = tamper(qdq, work / "yolov8n.int8.tampered1.onnx", TAMPER_1)
    t3 = tamper(qdq, work / "yolov8n.int8.tampered3.onnx", TAMPER_3)
    tr = tamper(qdq, work / "yolov8n.int8.tampered-residual.onnx", TAMPER_RESIDUAL)

    feeds = load_inputs(ref_qdq.inputs_path)
    qdq_ref, _ = load_outputs(ref_qdq.outputs_path)
    fp32_ref, _ = load_outputs(ref_fp32.outputs_path)
    sim_ref, _ = load_outputs(ref_sim.outputs_path)
    t1_out, _ = run_artifact(t1, feeds)
    t3_out, _ = run_artifact(t3, feeds)
    tr_out, _ = run_artifact(tr, feeds)
    qdq_out, _ = run_artifact(qdq, feeds)
    rows = [
        _row("Q/DQ ONNX vs its own reference", compare_outputs(qdq_ref, qdq_out)),
        _row("Q/DQ ONNX vs FP32 ONNX reference", compare_outputs(fp32_ref, qdq_out)),
        _row("implicit simulation vs FP32 reference", compare_outputs(fp32_ref, sim_ref)),
        _row("Q/DQ reference vs implicit simulation", compare_outputs(qdq_ref, sim_ref)),
        _row("Q/DQ, 1 backbone conv zeroed vs Q/DQ ref", compare_outputs(qdq_ref, t1_out)),
        _row("Q/DQ, 3 backbone convs zeroed vs Q/DQ ref", compare_outputs(qdq_ref, t3_out)),
        _row("Q/DQ, 1 backbone conv zeroed vs FP32 ref", compare_outputs(fp32_ref, t1_out)),
        _row("Q/DQ, 3 backbone convs zeroed vs FP32 ref", compare_outputs(fp32_ref, t3_out)),
        _row("Q/DQ, 1 residual bottleneck conv zeroed", compare_outputs(qdq_ref, tr_out)),
    ]
    tol = DEFAULT_TOLERANCE
    print(f"{'case':44s} {'cosine':>9s} {'SQNR dB':>8s} {'max|err|':>9s} {'recall':>7s} {'prec':>6s} {'IoU':>6s} verdict")
    for r in rows:
        sq = "inf" if math.isinf(r["sqnr_db"]) else f"{r['sqnr_db']:.2f}"
        print(f"{r['case']:44s} {r['cosine']:9.6f} {sq:>8s} {r['max_abs_error']:9.3g} {r['recall']:7.3f} "
              f"{r['precision']:6.3f} {r['mean_iou']:6.3f} {'pass' if r['passed'] else 'FAIL'}")
    good = [r for r in rows if "zeroed" not in r["case"]]
    bad = [r for r in rows if "zeroed" in r["case"]]
    margins = {
        "sqnr_db_pass_margin": min(r["sqnr_db"] for r in good) - tol.snr_db,
        "sqnr_db_fail_margin": tol.snr_db - max(r["sqnr_db"] for r in bad),
        "recall_pass_margin": min(r["recall"] for r in good) - tol.recall,
        "recall_fail_margin": tol.recall - max(r["recall"] for r in bad),
        "precision_pass_margin": min(r["precision"] for r in good) - tol.precision,
        "cosine_pass_margin": min(r["cosine"] for r in good) - tol.cosine,
        "cosine_fail_margin": tol.cosine - max(r["cosine"] for r in bad),
    }
    print("tolerance", tol.to_dict())
    print("margins", {k: round(v, 4) for k, v in margins.items()})
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"tolerance": tol.to_dict(), "rows": rows, "margins": margins,
                                       "calib_images": args.calib_images, "ref_images": args.ref_images,
                                       "seed": args.seed}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
