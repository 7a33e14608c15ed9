#!/usr/bin/env python3
"""INT8 accuracy of trtq's explicit quantization on the shared YOLOv8n, with an ablation.

Calibrates once on coco128 train2017 (all 128 images), then writes one Q/DQ ONNX per configuration from
the same activation statistics and measures mAP50-95 / mAP50 on coco128 val2017 (128 images, imgsz 640,
batch 1) with ultralytics' validator on ONNX Runtime's CPU provider. Writes benchmarks/results/accuracy.md
and accuracy.json. Each evaluation takes about 20-45 s on 2 CPU cores; the whole run about 10 minutes.

Usage: python benchmarks/accuracy.py [--shared ../shared/assets] [--only NAME ...] [--calib-images N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("YOLO_OFFLINE", "1")

# name -> (description, write_qdq/amax options); "default" is exactly what `trtq quantize` does.
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("trtq default: percentile 99.99, head policy, per-channel, concat unified, residual Q/DQ", {}),
    "entropy": ("--algo entropy", {"algo": "entropy"}),
    "minmax": ("--algo minmax", {"algo": "minmax"}),
    "percentile-99.999": ("--algo percentile --percentile 99.999", {"algo": "percentile", "percentile": 99.999}),
    "mse": ("--algo mse", {"algo": "mse"}),
    "auto": ("--algo auto (per tensor: smallest histogram error of the four)", {"algo": "auto"}),
    "no-head-policy": ("default, but the six final head convs quantized too", {"head_policy": False}),
    "per-tensor-weights": ("default, but one scale per weight tensor", {"per_channel": False}),
    "no-concat-unify": ("default, but Concat inputs keep their own scales", {"unify_concat": False}),
    "no-residual-qdq": ("default, but no Q/DQ on residual Add shortcuts", {"residual_add": False}),
}

# Reported elsewhere on the same model and data (calibrate coco128 train2017, evaluate val2017, 640, batch 1).
PEERS = [
    ("NVIDIA ModelOpt 0.47 INT8, entropy", 0.407),
    ("NVIDIA ModelOpt 0.47 INT8, max", 0.403),
    ("ONNX Runtime quantize_static, Conv only, percentile", 0.406),
    ("ONNX Runtime quantize_static, Conv only, minmax / entropy", 0.403),
    ("ONNX Runtime quantize_static, defaults (all ops)", 0.000),
]
PEER_SOURCE = "peer measurements reported on the same data"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "assets"), help="shared assets folder")
    ap.add_argument("--only", nargs="*", default=None, help=f"configurations to run (default all: {', '.join(CONFIGS)})")
    ap.add_argument("--calib-images", type=int, default=None, help="calibration images (default: all 128)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="results folder")
    args = ap.parse_args()

    import onnx

    from trtq.amax import activation_amax, collect_statistics
    from trtq.evaluate import evaluate
    from trtq.fileio import write_json, write_text
    from trtq.headpolicy import float_nodes
    from trtq.qdq import plan_qdq
    from trtq.quantize import write_qdq
    from trtq.quantize_options import QuantizeOptions

    shared = Path(args.shared).resolve()
    model = shared / "models" / "yolov8n-coco.onnx"
    calib = shared / "coco128" / "images" / "train2017"
    data = shared / "coco128" / "data.yaml"
    if not model.is_file():
        print(f"shared assets not found at {shared}", file=sys.stderr)
        return 2
    names = args.only or list(CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        print(f"unknown configuration(s): {unknown}", file=sys.stderr)
        return 2

    fmodel = onnx.load(str(model))
    tensors = list(
        dict.fromkeys(
            plan_qdq(fmodel, keep_float=float_nodes(fmodel)).activation_tensors + plan_qdq(fmodel).activation_tensors
        )
    )
    t0 = time.perf_counter()
    hists, batcher = collect_statistics(model, calib, tensors, num_images=args.calib_images, progress=False)
    calib_seconds = time.perf_counter() - t0
    calibration = {"source": str(calib), "num_images": batcher.num_used, "images_sha256": batcher.images_sha256()}
    graph_inputs = [i.name for i in fmodel.graph.input]

    rows: list[dict[str, Any]] = []
    t1 = time.perf_counter()
    fp32 = evaluate(model, data)
    rows.append({"name": "fp32", "description": "FP32 ONNX (reference)", "map50_95": fp32["map50_95"], "map50": fp32["map50"],
                 "seconds": round(time.perf_counter() - t1, 1)})
    print(f"fp32: {fp32['map50_95']:.4f} / {fp32['map50']:.4f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="trtq-acc-") as tmp:
        for name in names:
            desc, opts = CONFIGS[name]
            options = QuantizeOptions(**opts)
            algo = options.algorithm
            amax, chosen = activation_amax(hists, tensors, algo, percentile=options.percentile, graph_inputs=graph_inputs)
            out = Path(tmp) / f"{name}.onnx"
            res = write_qdq(model, amax, options, output=out, chosen=chosen, calibration=calibration)
            t1 = time.perf_counter()
            r = evaluate(res.path, data)
            row = {
                "name": name,
                "description": desc,
                "map50_95": r["map50_95"],
                "map50": r["map50"],
                "seconds": round(time.perf_counter() - t1, 1),
                "quantized_activations": res.report["counts"]["quantized_activations"],
                "quantized_weights": res.report["counts"]["quantized_weights"],
            }
            if algo == "auto":
                picks: dict[str, int] = {}
                for how in chosen.values():
                    picks[how] = picks.get(how, 0) + 1
                row["auto_choices"] = picks
            rows.append(row)
            print(f"{name}: {r['map50_95']:.4f} / {r['map50']:.4f}", flush=True)

    base = rows[0]["map50_95"]
    env = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "calibration_seconds": round(calib_seconds, 1),
        **calibration,
    }
    try:
        import onnxruntime
        import ultralytics

        env["onnxruntime"] = onnxruntime.__version__
        env["ultralytics"] = ultralytics.__version__
    except ImportError:
        pass
    out_dir = Path(args.out)
    write_json(out_dir / "accuracy.json", {"environment": env, "results": rows, "peers": PEERS, "peer_source": PEER_SOURCE})
    lines = [
        "# INT8 accuracy: shared YOLOv8n (COCO), explicit Q/DQ on ONNX Runtime CPU",
        "",
        f"Calibration: {calibration['num_images']} images of coco128 train2017. Evaluation: coco128 val2017 "
        "(128 images, 898 boxes), imgsz 640, batch 1, ultralytics' validator (conf 0.001, IoU 0.7, max 300 det).",
        f"Generated by `python benchmarks/accuracy.py` on {env['date']} (onnxruntime {env.get('onnxruntime', '?')}, "
        f"ultralytics {env.get('ultralytics', '?')}, {env['cpu_count']} CPU cores). All configurations share one set of "
        "activation statistics; only the Q/DQ placement or the range algorithm changes.",
        "",
        "## trtq (measured here)",
        "",
        "| configuration | mAP50-95 | mAP50 | vs FP32 (points) | what changes |",
        "|---|---:|---:|---:|---|",
    ]
    for row in rows:
        delta = "-" if row["name"] == "fp32" else f"{(row['map50_95'] - base) * 100:+.2f}"
        desc = row["description"]
        if "auto_choices" in row:
            desc += " — chose " + ", ".join(f"{k} x{v}" for k, v in sorted(row["auto_choices"].items()))
        lines.append(f"| {row['name']} | {row['map50_95']:.4f} | {row['map50']:.4f} | {delta} | {desc} |")
    lines += [
        "",
        "## Peers (reported, not re-measured here)",
        "",
        f"Source: {PEER_SOURCE}. Same model, calibration and evaluation data; FP32 ONNX 0.419.",
        "",
        "| tool | mAP50-95 | vs FP32 0.419 (points) |",
        "|---|---:|---:|",
    ]
    for tool, value in PEERS:
        lines.append(f"| {tool} | {value:.3f} (reported) | {(value - 0.419) * 100:+.1f} |")
    lines += [
        "| Ultralytics' published TensorRT INT8 table, YOLOv8n | - | about -4 (reported) |",
        "",
        "## Notes",
        "",
        "- 128 validation images make mAP differences below about 0.3 points noise: configurations that differ by "
        "less than that are equivalent here.",
        *_measured_notes(rows),
        "- Concat scale unification and residual-Add Q/DQ are kept because TensorRT needs them to fuse and avoid "
        "requantization, whatever their effect on accuracy here.",
        "- ONNX Runtime runs the Q/DQ model as simulated INT8 (quantize-dequantize in float). A TensorRT engine built "
        "from the same Q/DQ ONNX uses the same scales; its accuracy is not measured here (no GPU).",
    ]
    write_text(out_dir / "accuracy.md", "\n".join(lines) + "\n")
    print(f"wrote {out_dir / 'accuracy.md'}")
    return 0


def _measured_notes(rows: list[dict[str, Any]]) -> list[str]:
    """Notes computed from this run's rows (only for the configurations that ran)."""
    by_name = {r["name"]: r for r in rows}
    default = by_name.get("default")
    if default is None:
        return []

    def gain(name: str) -> str | None:
        row = by_name.get(name)
        return None if row is None else f"{(default['map50_95'] - row['map50_95']) * 100:+.2f}"

    notes: list[str] = []
    ablations = {
        "per-tensor-weights": "per-channel weights",
        "no-head-policy": "the head policy",
        "minmax": "percentile over minmax",
        "entropy": "percentile over entropy",
        "percentile-99.999": "percentile 99.99 over 99.999",
        "no-concat-unify": "Concat scale unification",
        "no-residual-qdq": "residual-Add Q/DQ",
    }
    parts = [f"{what} {g}" for name, what in ablations.items() if (g := gain(name)) is not None]
    if parts:
        notes.append("- The default against each ablation (mAP50-95 points gained by the default): " + "; ".join(parts) + ".")
    return notes


if __name__ == "__main__":
    raise SystemExit(main())
