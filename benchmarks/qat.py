#!/usr/bin/env python3
"""Quantization-aware fine-tuning on the shared YOLOv8n: trtq QAT against FP32, trtq PTQ and Ultralytics' QAT.

Every row is made in its own child process (wall time and peak RSS of that process and its children), then
evaluated in this process with ultralytics' validator on coco128 val2017 (128 images, imgsz 640, batch 1,
ONNX Runtime CPU). Calibration and fine-tuning use coco128 train2017 only. Rows:

  fp32              the FP32 ONNX export of the .pt
  ptq               `trtq quantize` (default: percentile 99.99, head final convs float)
  ptq-head          `trtq quantize --quantize-head` (all convs INT8, DFL float)
  qat-head          `trtq qat --quantize-head` (ultralytics trainer, label loss)
  qat-head-distill  `trtq qat --quantize-head --distill` (FP32 outputs as targets, no labels)
  ultralytics-qat   `yolo train quantize=8` (ModelOpt, head final convs float), exported to Q/DQ ONNX
                    (needs nvidia-modelopt and huggingface_hub; skipped with a note where absent)

Writes benchmarks/results/qat.md and qat.json. Usage:
  python benchmarks/qat.py [--shared ../shared/assets] [--epochs 3] [--batch 8] [--only ROW ...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("YOLO_OFFLINE", "1")

ROWS: dict[str, str] = {
    "fp32": "FP32 ONNX (reference)",
    "ptq": "trtq PTQ default (head final convs float)",
    "ptq-head": "trtq PTQ, head quantized (`trtq quantize --quantize-head`)",
    "qat-head": "trtq QAT, head quantized, labels (`trtq qat --quantize-head`)",
    "qat-head-distill": "trtq QAT, head quantized, distillation (`trtq qat --quantize-head --distill`)",
    "ultralytics-qat": "Ultralytics QAT (`yolo train quantize=8`, ModelOpt; head final convs float), exported Q/DQ ONNX",
}
MEM_LIMIT_GB = 16.0  # address-space cap per child: RSS stays near 4 GB, but torch and ModelOpt reserve virtual memory


class Child:
    """A ``python args...`` child process; :meth:`wait` gives its wall time, CPU time, peak RSS and exit status."""

    def __init__(self, args: list[str]) -> None:
        def limit() -> None:
            cap = int(MEM_LIMIT_GB * (1 << 30))
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

        self.t0 = time.perf_counter()
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, *args], cwd=REPO, preexec_fn=limit, stdout=self.log,
                                     stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONPATH": str(REPO), "YOLO_OFFLINE": "1"})

    def wait(self, timeout: float = 4 * 3600) -> dict[str, Any]:
        status = None
        while status is None:
            pid, st, ru = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                status = (st, ru)
                break
            if time.perf_counter() - self.t0 > timeout:
                self.proc.kill()
                _, st, ru = os.wait4(self.proc.pid, 0)
                status = (st, ru)
                break
            time.sleep(0.5)
        wall = time.perf_counter() - self.t0
        self.log.seek(0)
        text = self.log.read()
        st, ru = status
        return {"seconds": round(wall, 1), "cpu_seconds": round(ru.ru_utime + ru.ru_stime, 1),
                "peak_rss_mb": round(ru.ru_maxrss / 1024, 1), "rc": os.waitstatus_to_exitcode(st),
                "tail": text.strip().splitlines()[-15:]}


def run_child(args: list[str]) -> dict[str, Any]:
    return Child(args).wait()


# ------------------------------------------------------------------------------------------- child steps
def make_ptq(shared: Path, work: Path, out_json: Path) -> None:
    """Both PTQ rows from one calibration pass (as `trtq quantize` does it, with and without --quantize-head)."""
    import onnx

    from calibrators.ranges import DEFAULT_ALGO
    from trtq.amax import activation_amax, collect_statistics
    from trtq.headpolicy import head_keep_float
    from trtq.qdq import plan_qdq
    from trtq.quantize import write_qdq
    from trtq.quantize_options import QuantizeOptions

    model = shared / "models" / "yolov8n-coco.onnx"
    calib = shared / "coco128" / "images" / "train2017"
    fm = onnx.load(str(model))
    tensors = list(dict.fromkeys(
        plan_qdq(fm, keep_float=head_keep_float(fm)).activation_tensors
        + plan_qdq(fm, keep_float=head_keep_float(fm, quantize_head=True)).activation_tensors
    ))
    t0 = time.perf_counter()
    hists, batcher = collect_statistics(model, calib, tensors, progress=False)
    calib_s = time.perf_counter() - t0
    amax, chosen = activation_amax(hists, tensors, DEFAULT_ALGO, graph_inputs=[i.name for i in fm.graph.input])
    calibration = {"source": str(calib), "num_images": batcher.num_used, "images_sha256": batcher.images_sha256()}
    result: dict[str, Any] = {"calibration_seconds": round(calib_s, 1)}
    for name, head in (("ptq", False), ("ptq-head", True)):
        res = write_qdq(model, amax, QuantizeOptions(quantize_head=head), output=work / f"{name}.onnx", chosen=chosen,
                        calibration=calibration)
        result[name] = {"onnx": str(res.path), "quantized_weights": res.report["counts"]["quantized_weights"],
                        "float_weighted_ops": res.report["counts"]["float_weighted_ops"]}
    out_json.write_text(json.dumps(result))


def make_ultralytics_qat(shared: Path, work: Path, out_json: Path, epochs: int, batch: int) -> None:
    """Ultralytics' own QAT recipe on the same training images, then its own Q/DQ ONNX export."""
    from ultralytics import YOLO

    from trtq.qat import stage_dataset

    pt = work / "ultralytics" / "yolov8n-coco.pt"
    pt.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(shared / "models" / "yolov8n-coco.pt", pt)
    # the staged yaml names the train split for train and val: no val2017 image is seen before evaluation
    data = stage_dataset(shared / "coco128" / "data.yaml", work / "ultralytics" / "data")
    model = YOLO(str(pt))
    t0 = time.perf_counter()
    model.train(data=str(data), epochs=epochs, batch=batch, imgsz=640, optimizer="AdamW", lr0=1e-5, cos_lr=True,
                mosaic=0.0, close_mosaic=0, warmup_epochs=0, quantize=8, device="cpu", workers=0, amp=False, plots=False,
                val=False, project=str(work / "ultralytics" / "runs"), name="train", exist_ok=True, seed=0)
    train_s = time.perf_counter() - t0
    trainer: Any = model.trainer
    weights = Path(trainer.last) if Path(trainer.last).exists() else Path(trainer.best)
    onnx_path = YOLO(str(weights)).export(format="onnx", imgsz=640, device="cpu", opset=17)
    import onnx

    m = onnx.load(str(onnx_path))
    pairs = sum(1 for n in m.graph.node if n.op_type == "QuantizeLinear")
    out_json.write_text(json.dumps({"onnx": str(onnx_path), "finetune_seconds": round(train_s, 1), "quantize_linear": pairs,
                                    "weights": str(weights)}))


# ------------------------------------------------------------------------------------------- orchestration
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "assets"), help="shared assets folder")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--only", nargs="*", default=None, help=f"rows to run (default all: {', '.join(ROWS)})")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="results folder")
    ap.add_argument("--child", nargs="+", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    shared = Path(args.shared).resolve()

    if args.child:  # one step in a child process
        kind, work, out_json = args.child[0], Path(args.child[1]), Path(args.child[2])
        if kind == "ptq":
            make_ptq(shared, work, out_json)
        elif kind == "ultralytics-qat":
            make_ultralytics_qat(shared, work, out_json, args.epochs, args.batch)
        return 0

    if not (shared / "models" / "yolov8n-coco.pt").is_file():
        print(f"shared assets not found at {shared}", file=sys.stderr)
        return 2
    names = args.only or list(ROWS)
    from trtq.evaluate import evaluate
    from trtq.fileio import write_json, write_text

    pt = shared / "models" / "yolov8n-coco.pt"
    data = shared / "coco128" / "data.yaml"
    calib = shared / "coco128" / "images" / "train2017"
    rows: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    t_run = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="trtq-bench-qat-") as tmp:
        work = Path(tmp)
        made: dict[str, dict[str, Any]] = {}
        if "fp32" in names:
            made["fp32"] = {"onnx": str(shared / "models" / "yolov8n-coco.onnx"), "seconds": None, "peak_rss_mb": None}
        if {"ptq", "ptq-head"} & set(names):
            r = run_child([__file__, "--shared", str(shared), "--child", "ptq", str(work), str(work / "ptq.json")])
            if r["rc"] != 0:
                raise SystemExit("PTQ step failed:\n" + "\n".join(r["tail"]))
            res = json.loads((work / "ptq.json").read_text())
            for name in ("ptq", "ptq-head"):
                made[name] = {**res[name], "calibration_seconds": res["calibration_seconds"], "seconds": r["seconds"],
                              "cpu_seconds": r["cpu_seconds"], "peak_rss_mb": r["peak_rss_mb"],
                              "note": "both PTQ rows from one process"}
        # the fine-tuning rows run side by side (the machine is shared; CPU seconds are reported beside wall time)
        children: dict[str, tuple[Child, Path, str]] = {}
        for name, extra in (("qat-head", ["--data", str(data)]), ("qat-head-distill", ["--distill", "--calib", str(calib)])):
            if name not in names:
                continue
            out = work / f"{name}.onnx"
            cmd = ["-m", "trtq", "qat", str(pt), *extra, "--quantize-head", "--epochs", str(args.epochs),
                   "--batch", str(args.batch), "-o", str(out)]
            shown = "trtq qat yolov8n-coco.pt " + " ".join(Path(a).name if a.startswith("/") else a for a in extra)
            children[name] = (Child(cmd), out, f"{shown} --quantize-head --epochs {args.epochs} --batch {args.batch}")
        ul_child = None
        if "ultralytics-qat" in names:
            try:
                import modelopt  # noqa: F401  # pyright: ignore[reportMissingImports]  (optional, not a dependency)
            except ImportError:
                notes.append("Ultralytics QAT row skipped: nvidia-modelopt is not installed (pip install nvidia-modelopt huggingface_hub).")
            else:
                ul_child = Child([__file__, "--shared", str(shared), "--epochs", str(args.epochs), "--batch", str(args.batch),
                                  "--child", "ultralytics-qat", str(work), str(work / "ul.json")])
        for name, (child, out, shown) in children.items():
            r = child.wait()
            if r["rc"] != 0:
                notes.append(f"{name} failed: " + " | ".join(r["tail"][-3:]))
                continue
            q = json.loads(out.with_suffix(".report.json").read_text())["qat"]
            made[name] = {"onnx": str(out), "seconds": r["seconds"], "cpu_seconds": r["cpu_seconds"],
                          "peak_rss_mb": r["peak_rss_mb"], "finetune_seconds": q["finetune_seconds"],
                          "iterations": q["iterations"], "first_losses": q["first_losses"], "last_loss": q["last_loss"],
                          "command": shown}
        if ul_child is not None:
            r = ul_child.wait()
            if r["rc"] != 0:
                notes.append("Ultralytics QAT row failed: " + " | ".join(r["tail"][-3:]))
            else:
                res = json.loads((work / "ul.json").read_text())
                made["ultralytics-qat"] = {**res, "seconds": r["seconds"], "cpu_seconds": r["cpu_seconds"],
                                           "peak_rss_mb": r["peak_rss_mb"]}

        for name in names:
            if name not in made:
                continue
            m = made[name]
            try:
                r = evaluate(m["onnx"], data)
            except Exception as exc:  # noqa: BLE001 - one failed row must not lose the others
                notes.append(f"{name}: evaluation failed: {exc}")
                continue
            rows[name] = {"name": name, "description": ROWS[name], "map50_95": r["map50_95"], "map50": r["map50"],
                          **{k: v for k, v in m.items() if k != "onnx"}}
            print(f"{name}: {r['map50_95']:.4f} / {r['map50']:.4f}", flush=True)

    env = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "run_seconds": round(time.perf_counter() - t_run, 1),
        "epochs": args.epochs,
        "batch": args.batch,
    }
    for mod in ("torch", "ultralytics", "onnxruntime", "modelopt"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional packages
            pass
    out_dir = Path(args.out)
    write_json(out_dir / "qat.json", {"environment": env, "results": list(rows.values()), "notes": notes})
    write_text(out_dir / "qat.md", render(rows, env, notes))
    print(f"wrote {out_dir / 'qat.md'}")
    return 0


def _share_notes(rows: dict[str, dict[str, Any]]) -> list[str]:
    """How much CPU each fine-tuning process got: wall times only judge the 10-minute target on a quiet machine."""
    parts = [f"{n} {r['cpu_seconds'] / r['seconds']:.0%}" for n, r in rows.items()
             if r.get("finetune_seconds") and r.get("cpu_seconds") and r.get("seconds")]
    if not parts:
        return []
    return ["- Average CPU share of each fine-tuning process (CPU time / wall time; 200 % is both cores): "
            + ", ".join(parts) + ". With the machine to itself, a process would take between its CPU time / 2 and its CPU time "
            "(not every step uses both cores)."]


def _num(v: Any) -> str:
    return "-" if v is None else f"{float(v):.0f}"


def render(rows: dict[str, dict[str, Any]], env: dict[str, Any], notes: list[str]) -> str:
    base = rows.get("fp32", {}).get("map50_95")
    lines = [
        "# Quantization-aware fine-tuning: shared YOLOv8n (COCO), Q/DQ ONNX on ONNX Runtime CPU",
        "",
        f"Calibration and fine-tuning: coco128 train2017 (128 images). Evaluation: coco128 val2017 (128 images), imgsz 640, "
        "batch 1, ultralytics' validator on each row's ONNX. Fine-tuning: "
        f"{env['epochs']} epochs, batch {env['batch']}, AdamW lr 1e-5 cosine, no warmup, mosaic off (both trtq and Ultralytics).",
        f"Generated by `make bench-qat` (`python benchmarks/qat.py`) on {env['date']} (torch {env.get('torch', '?')}, "
        f"ultralytics {env.get('ultralytics', '?')}, onnxruntime {env.get('onnxruntime', '?')}, modelopt {env.get('modelopt', '-')}, "
        f"{env['cpu_count']} CPU cores shared with other jobs: load average {env['load_average_at_end'][1]:.1f} "
        "at the end of the run, so wall times are inflated and only roughly comparable).",
        "",
        "| row | mAP50-95 | mAP50 | vs FP32 (points) | fine-tune wall (s) | process wall (s) | process CPU (s) | peak RSS (MB) | what |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in rows.items():
        delta = "-" if base is None or name == "fp32" else f"{(r['map50_95'] - base) * 100:+.2f}"
        ft, wall, cpu, rss = (_num(r.get(k)) for k in ("finetune_seconds", "seconds", "cpu_seconds", "peak_rss_mb"))
        lines.append(
            f"| {name} | {r['map50_95']:.4f} | {r['map50']:.4f} | {delta} | {ft} | {wall} | {cpu} | {rss} | {r['description']} |"
        )
    lines += ["", "## Targets", ""]
    qat = [rows[n] for n in ("qat-head", "qat-head-distill") if n in rows]
    if qat and base is not None:
        best = max(qat, key=lambda r: r["map50_95"])
        checks = [("QAT all-INT8 >= FP32 - 0.2 points", best["map50_95"] >= base - 0.002, f"{(best['map50_95'] - base) * 100:+.2f}")]
        if "ptq" in rows:
            d = (best["map50_95"] - rows["ptq"]["map50_95"]) * 100
            checks.append(("QAT >= trtq PTQ default - 0.1", d >= -0.1, f"{d:+.2f}"))
        if "ultralytics-qat" in rows:
            d = (best["map50_95"] - rows["ultralytics-qat"]["map50_95"]) * 100
            checks.append(("beats Ultralytics' QAT", d > 0, f"{d:+.2f}"))
        slow = max(r.get("finetune_seconds") or 0 for r in qat)
        checks.append(("fine-tuning within 10 minutes", slow <= 600, f"{slow:.0f} s (slowest trtq QAT row)"))
        lines += ["| target | met | measured |", "|---|---|---|"]
        lines += [f"| {t} | {'yes' if ok else 'no'} | {m} |" for t, ok, m in checks]
        lines.append(f"\nBest trtq QAT row: {best['name']}.")
    lines += ["", "## Details", ""]
    for name, r in rows.items():
        extra = {k: v for k, v in r.items() if k not in ("name", "description", "map50_95", "map50")}
        lines.append(f"- {name}: " + ", ".join(f"{k} {v}" for k, v in extra.items()))
    lines += [
        "",
        "## Notes",
        "",
        "- 128 validation images make mAP differences below about 0.3 points noise.",
        "- Fine-tune wall time is the training loop only (trtq: the report's `finetune_seconds`; Ultralytics: `train()`); "
        "process wall includes export, calibration and (trtq) the implicit-mode calibration cache.",
        "- Peak RSS is the child process's maximum resident set (with its data-loader workers, none here). Process CPU is "
        "its user + system time: the better measure of cost while other jobs share the cores.",
        "- The three fine-tuning rows ran at the same time, each in its own process, on the shared 2 cores.",
        *_share_notes(rows),
        *[f"- {n}" for n in notes],
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
