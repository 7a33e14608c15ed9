#!/usr/bin/env python3
"""INT8 Q/DQ quantization of every architecture and task: YOLOv8n / YOLO11n / YOLO26n x detect, segment,
pose, OBB (and YOLO26's end-to-end head), built offline from ultralytics' own yaml files.

Per model: the ONNX is built (imgsz 320; YOLOv8 structures get the shared COCO YOLOv8n weights transplanted,
nc=80, so their boxes are real; YOLO11 / YOLO26 structures keep random weights: structure and op counts only),
quantized with `trtq quantize`'s defaults on coco128 train2017, and compared with its FP32 ONNX on coco128
val2017:
- quantized / float ops: weighted ops (Conv, MatMul, ...) reading INT8 inputs vs kept in float;
- structure: no Q/DQ on any output, no head-policy node (branch last convs, DFL, decode, scores,
  end-to-end selection, attention) nor any Softmax reading a quantized tensor;
- cosine: of each raw output (FP32 vs INT8), ONNX Runtime CPU;
- agreement: INT8 detections scored as box mAP50-95 against the FP32 detections taken as ground truth
  (FP32 at conf 0.25, INT8 at conf 0.001), both decoded by ultralytics' own predictor on the ONNX files
  (rotated-box IoU for OBB), matched with ultralytics' validator and ap_per_class;
- quantize time: the whole `quantize()` call (statistics + Q/DQ + report).
Then the YOLOv8n COCO mAP table (benchmarks/accuracy.py, default configuration, imgsz 640).

Writes benchmarks/results/models.md and models.json. About 15 minutes on 2 CPU cores.

Usage: python benchmarks/models.py [--shared ../shared/assets] [--only yolov8n-pose ...] [--calib-images N]
       [--val-images N] [--no-coco]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("YOLO_OFFLINE", "1")

IMGSZ = 320
REF_CONF = 0.25  # FP32 detections kept as ground truth
CAND_CONF = 0.001  # INT8 detections scored (as ultralytics' validator does)


def model_list() -> list[tuple[str, str, str, bool]]:
    """(name, yaml, task, end2end) for every model of the table."""
    from trtq.zoo import zoo

    rows = [(m.name, m.cfg, m.task, False) for m in zoo()]
    rows += [(f"{m.name}-e2e", m.cfg, m.task, True) for m in zoo(archs=("yolo26n",))]
    return rows


def _predictions(model: Path, images: list[Path], task: str, conf: float) -> list[dict[str, Any]]:
    """Per image: boxes (xyxy or xywhr for OBB), confidences and classes from ultralytics' predictor."""
    from ultralytics import YOLO

    from trtq.export import _quiet_ultralytics

    out: list[dict[str, Any]] = []
    with _quiet_ultralytics():
        yolo = YOLO(str(model), task=task)
        results: list[Any] = [
            list(yolo.predict(str(im), imgsz=IMGSZ, conf=conf, iou=0.7, max_det=300, verbose=False, device="cpu"))[0]
            for im in images
        ]
    for r in results:
        b: Any = r.obb if task == "obb" else r.boxes
        xy = b.xywhr if task == "obb" else b.xyxy
        out.append({"boxes": xy.cpu().numpy(), "conf": b.conf.cpu().numpy(), "cls": b.cls.cpu().numpy()})
    return out


def agreement_map(ref: list[dict[str, Any]], cand: list[dict[str, Any]], task: str) -> tuple[float | None, int]:
    """mAP50-95 of ``cand`` against ``ref`` as ground truth (None when the reference found nothing)."""
    import numpy as np
    import torch
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.utils.metrics import ap_per_class, batch_probiou, box_iou

    validator = DetectionValidator()
    tps, confs, pcls, tcls = [], [], [], []
    for r, c in zip(ref, cand, strict=True):
        tcls.append(r["cls"])
        n = len(c["cls"])
        if n == 0:
            continue
        order = np.argsort(-c["conf"])
        boxes, cls_, conf = c["boxes"][order], c["cls"][order], c["conf"][order]
        if len(r["cls"]) == 0:
            tp = np.zeros((n, 10), dtype=bool)
        else:
            iou_fn = batch_probiou if task == "obb" else box_iou
            iou = iou_fn(torch.from_numpy(r["boxes"]).float(), torch.from_numpy(boxes).float())
            tp = validator.match_predictions(torch.from_numpy(cls_), torch.from_numpy(r["cls"]), iou).numpy()
        tps.append(tp)
        confs.append(conf)
        pcls.append(cls_)
    targets = np.concatenate(tcls) if tcls else np.zeros(0)
    if targets.size == 0:
        return None, 0
    if not tps:
        return 0.0, int(targets.size)
    res = ap_per_class(np.concatenate(tps), np.concatenate(confs), np.concatenate(pcls), targets)
    ap = res[5]
    return float(ap.mean()) if ap.size else 0.0, int(targets.size)


def run_model(name: str, cfg: str, task: str, end2end: bool, *, shared: Path, work: Path, calib_images: int,
              val_images: int) -> dict[str, Any]:
    import onnx

    from trtq.headpolicy import head_policy
    from trtq.images import ImageBatcher, resolve_image_paths
    from trtq.modelinfo import read_model_info
    from trtq.qdqcheck import op_counts, output_cosines, qdq_problems, raw_outputs
    from trtq.quantize import quantize
    from trtq.quantize_options import QuantizeOptions
    from trtq.zoo import build_onnx

    pt = shared / "models" / "yolov8n-coco.pt"
    real = name.startswith("yolov8n")
    fp32 = build_onnx(cfg, work / f"{name}.onnx", weights=pt if real else None, nc=80 if real else None, imgsz=IMGSZ,
                      **({"nms": False} if end2end else {}))
    t0 = time.perf_counter()
    res = quantize(fp32, shared / "coco128" / "images" / "train2017", QuantizeOptions(num_images=calib_images, progress=False),
                   output=work / f"{name}.int8.onnx")
    seconds = time.perf_counter() - t0
    qmodel = onnx.load(str(res.path))
    problems = qdq_problems(qmodel, head_policy(onnx.load(str(fp32))))
    counts = op_counts(qmodel)
    val_dir = shared / "coco128" / "images" / "val2017"
    info = read_model_info(fp32, with_hash=False)
    batches = list(ImageBatcher.from_model(val_dir, info, num_images=val_images, seed=0))
    cos = output_cosines(raw_outputs(str(fp32), batches), raw_outputs(str(res.path), batches))
    images = resolve_image_paths(val_dir)[:val_images]
    ref = _predictions(fp32, images, task, REF_CONF)
    cand = _predictions(res.path, images, task, CAND_CONF)
    agree, n_ref = agreement_map(ref, cand, task)
    branches = {r["branch"] for r in res.report["head_branches"] if r["branch"] != "-"}
    return {
        "model": name, "task": task, "end2end": end2end, "weights": "COCO YOLOv8n (transplanted)" if real else "random",
        **counts, "structure_problems": problems, "cosine": cos, "agreement_map50_95": agree, "reference_detections": n_ref,
        "quantize_seconds": round(seconds, 1), "float_branches": sorted(branches),
        "float_nodes": res.report["counts"]["float_nodes"],
    }


def coco_table(shared: Path, calib_images: int | None) -> dict[str, Any] | None:
    """fp32 and default INT8 rows of benchmarks/accuracy.py (YOLOv8n COCO, imgsz 640)."""
    with tempfile.TemporaryDirectory(prefix="trtq-coco-") as tmp:
        cmd = [sys.executable, str(REPO / "benchmarks" / "accuracy.py"), "--shared", str(shared), "--only", "default", "--out", tmp]
        if calib_images:
            cmd += ["--calib-images", str(calib_images)]
        done = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)
            return None
        saved = json.loads((Path(tmp) / "accuracy.json").read_text())
        return {"environment": saved["environment"], "results": saved["results"]}


def _fmt(v: float | None, spec: str = ".4f") -> str:
    return "n/a" if v is None else format(v, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "assets"), help="shared assets folder")
    ap.add_argument("--only", nargs="*", default=None, help="model names (default: all)")
    ap.add_argument("--calib-images", type=int, default=64, help="calibration images per model")
    ap.add_argument("--val-images", type=int, default=32, help="val2017 images for cosine and agreement")
    ap.add_argument("--no-coco", action="store_true", help="skip the YOLOv8n COCO mAP table (about 4 minutes)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="results folder")
    ap.add_argument("--render", default=None, metavar="JSON", help="only re-render models.md from a saved models.json")
    args = ap.parse_args()

    from trtq.fileio import write_json, write_text

    if args.render:
        saved = json.loads(Path(args.render).read_text())
        write_text(Path(args.out) / "models.md", render(saved["environment"], saved["models"], saved["coco"]))
        return 0

    shared = Path(args.shared).resolve()
    if not (shared / "models" / "yolov8n-coco.pt").is_file():
        print(f"shared assets not found at {shared}", file=sys.stderr)
        return 2
    models = [m for m in model_list() if not args.only or m[0] in args.only]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="trtq-models-") as tmp:
        for name, cfg, task, e2e in models:
            row = run_model(name, cfg, task, e2e, shared=shared, work=Path(tmp), calib_images=args.calib_images,
                            val_images=args.val_images)
            rows.append(row)
            print(f"{name}: q {row['quantized_ops']} f {row['float_ops']} cos {min(row['cosine']):.5f} "
                  f"agree {_fmt(row['agreement_map50_95'])} {row['quantize_seconds']} s "
                  f"problems {len(row['structure_problems'])}", flush=True)
    coco = None if args.no_coco else coco_table(shared, None)
    env: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(), "cpu_count": os.cpu_count(), "imgsz": IMGSZ,
        "calib_images": args.calib_images, "val_images": args.val_images,
    }
    try:
        import onnxruntime
        import ultralytics

        env["onnxruntime"], env["ultralytics"] = onnxruntime.__version__, ultralytics.__version__
    except ImportError:
        pass
    out_dir = Path(args.out)
    write_json(out_dir / "models.json", {"environment": env, "models": rows, "coco": coco})
    write_text(out_dir / "models.md", render(env, rows, coco))
    print(f"wrote {out_dir / 'models.md'}")
    return 0


def render(env: dict[str, Any], rows: list[dict[str, Any]], coco: dict[str, Any] | None) -> str:
    """models.md from the measured rows (``--render JSON`` re-renders a saved models.json)."""
    lines = [
        "# INT8 Q/DQ on every architecture and task",
        "",
        f"Generated by `make bench-models` (`python benchmarks/models.py`) on {env['date']} (onnxruntime "
        f"{env.get('onnxruntime', '?')}, ultralytics {env.get('ultralytics', '?')}, {env['cpu_count']} CPU cores).",
        f"Models built offline from ultralytics' yaml files at imgsz {IMGSZ}; YOLOv8n structures carry the shared COCO "
        "YOLOv8n weights (nc=80), YOLO11n / YOLO26n structures random weights (their cosine and agreement say little "
        f"about accuracy). `trtq quantize` defaults, {env['calib_images']} calibration images of coco128 train2017; cosine "
        f"and agreement on {env['val_images']} images of coco128 val2017 (ONNX Runtime CPU).",
        "",
        "- quantized / float ops: weighted ops (Conv, MatMul) reading INT8 inputs / kept in float.",
        "- structure: no Q/DQ on an output; no head-policy node (branch last convs, DFL, decode, scores, end-to-end "
        "selection, attention) and no Softmax reads a quantized tensor.",
        f"- cosine: of each raw output, FP32 vs INT8 (lowest output shown). agreement: INT8 detections (conf {CAND_CONF}) "
        f"scored as box mAP50-95 against the FP32 detections (conf {REF_CONF}) as ground truth, both decoded by "
        "ultralytics' predictor on the ONNX files, matched by ultralytics' validator (rotated IoU for OBB). "
        "n/a: FP32 found nothing (random weights).",
        "- random weights: the head outputs of an untrained model hardly depend on the image (its biases dominate), "
        "so a cosine of 1.00000 there shows only that nothing is broken. The 0.48 of yolo26n-seg is its mask-prototype "
        "output, whose untrained values are about 0.002 (noise level after INT8); with trained YOLO26 weights this is "
        "not measured here.",
        "",
        "| model | task | head | weights | quantized ops | float ops | structure | cosine | agreement mAP50-95 "
        "(FP32 dets) | quantize s | float branches |",
        "|---|---|---|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in rows:
        structure = "ok" if not r["structure_problems"] else f"{len(r['structure_problems'])} problems"
        lines.append(
            f"| {r['model']} | {r['task']} | {'end-to-end' if r['end2end'] else 'grid'} | "
            f"{'COCO' if r['weights'] != 'random' else 'random'} | {r['quantized_ops']} | {r['float_ops']} | {structure} | "
            f"{min(r['cosine']):.5f} | {_fmt(r['agreement_map50_95'])} ({r['reference_detections']}) | "
            f"{r['quantize_seconds']:.1f} | {', '.join(r['float_branches'])} |"
        )
    if coco:
        res = {r["name"]: r for r in coco["results"]}
        f, d = res.get("fp32"), res.get("default")
        lines += [
            "",
            "## YOLOv8n COCO mAP (shared model, imgsz 640)",
            "",
            f"Calibration: {coco['environment'].get('num_images', '?')} images of coco128 train2017. Evaluation: coco128 "
            "val2017 with ultralytics' validator (`python benchmarks/accuracy.py --only default`; full ablation in "
            "accuracy.md).",
            "",
            "| model | mAP50-95 | mAP50 | vs FP32 (points) |",
            "|---|---:|---:|---:|",
        ]
        if f:
            lines.append(f"| FP32 ONNX | {f['map50_95']:.4f} | {f['map50']:.4f} | - |")
        if f and d:
            lines.append(f"| INT8 Q/DQ (trtq default) | {d['map50_95']:.4f} | {d['map50']:.4f} | "
                         f"{100 * (d['map50_95'] - f['map50_95']):+.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
