#!/usr/bin/env python3
"""Calibration cost on the shared YOLOv8n: `trtq calibrate` vs plain FP32 inference vs ONNX Runtime's
`quantize_static` entropy calibration. Wall time and peak RSS of each, measured in one run.

Targets: total <= 1.5x the plain inference time, peak RSS <= 1 GB, memory flat when the image count
doubles. Usage: python benchmarks/calibration.py [--shared ../shared/assets] [--images 128]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_child(code: str, *, mem_limit_gb: float | None = None, timeout: float = 900) -> dict:
    """Run Python code in a child process; return its wall time, peak RSS and exit status."""

    def limit() -> None:
        if mem_limit_gb:
            cap = int(mem_limit_gb * (1 << 30))
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, preexec_fn=limit,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    status = None
    deadline = t0 + timeout
    while status is None:
        pid, st, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            status = (st, ru)
            break
        if time.perf_counter() > deadline:
            proc.kill()
            _, st, ru = os.wait4(proc.pid, 0)
            status = (st, ru)
            break
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    out = proc.stdout.read() if proc.stdout else ""
    st, ru = status
    rc = os.waitstatus_to_exitcode(st)
    return {"seconds": wall, "peak_rss_mb": ru.ru_maxrss / 1024, "rc": rc, "tail": out.strip().splitlines()[-3:],
            "timed_out": wall >= timeout}


def secs(r: dict) -> float:
    for line in r["tail"]:
        if line.startswith("RESULT"):
            return float(line.split()[1])
    return float("nan")


def fastest(runs: list[dict]) -> dict:
    """The fastest run's record, with the largest peak RSS of all runs."""
    best = min(runs, key=lambda r: secs(r) if secs(r) == secs(r) else float("inf"))
    return {**best, "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "all_seconds": [secs(r) for r in runs]}


PLAIN = """
import time, sys
from trtq.images import ImageBatcher
from trtq.modelinfo import read_model_info
from calibrators.collect import make_session
m, src, n = {model!r}, {calib!r}, {n}
info = read_model_info(m)
s = make_session(m, ["CPUExecutionProvider"])
t = time.perf_counter()
for feed in ImageBatcher.from_model(src, info, num_images=n):
    s.run(None, feed)
print("RESULT", time.perf_counter() - t)
"""

# entropy, not the default percentile: the slowest range algorithm, and the one the ORT run uses
TRTQ = """
import time
from calibrators.calibrate import calibrate
t = time.perf_counter()
r = calibrate({model!r}, {calib!r}, algo="entropy", num_images={n}, output={out!r}, progress=False,
              providers=["CPUExecutionProvider"])
print("RESULT", time.perf_counter() - t, len(r.table.amax))
"""

ORT = """
import time
import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, quantize_static
from trtq.images import ImageBatcher
from trtq.modelinfo import read_model_info
info = read_model_info({model!r})
class Reader(CalibrationDataReader):
    def __init__(self):
        self.it = iter(ImageBatcher.from_model({calib!r}, info, num_images={n}))
    def get_next(self):
        return next(self.it, None)
t = time.perf_counter()
quantize_static({model!r}, {out!r}, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                calibrate_method=CalibrationMethod.Entropy)
print("RESULT", time.perf_counter() - t)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "assets"))
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--skip-ort", action="store_true", help="skip ONNX Runtime's quantize_static (slow, memory-hungry)")
    ap.add_argument("--ort-mem-gb", type=float, default=8.0, help="address-space cap for the ORT run")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each timing, interleaved; the fastest is kept")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args()
    shared = Path(args.shared)
    model = shared / "models" / "yolov8n-coco.onnx"
    calib = shared / "coco128" / "images" / "train2017"
    if not model.is_file():
        print(f"shared assets not found at {shared}: nothing to benchmark", file=sys.stderr)
        return 2
    n = args.images
    rows = []
    with tempfile.TemporaryDirectory(prefix="trtq-bench-") as tmp:
        fmt = {"model": str(model), "calib": str(calib), "n": n}
        # Interleave the runs and keep each one's fastest: a shared machine's noise hits them alike.
        runs: dict[str, list[dict]] = {"plain": [], "full": [], "half": []}
        for _ in range(max(1, args.repeat)):
            runs["plain"].append(run_child(PLAIN.format(**fmt)))
            runs["full"].append(run_child(TRTQ.format(**fmt, out=f"{tmp}/a.cache")))
            runs["half"].append(run_child(TRTQ.format(**{**fmt, "n": max(1, n // 2)}, out=f"{tmp}/b.cache")))
        plain, t_full, t_half = (fastest(runs[k]) for k in ("plain", "full", "half"))
        rows.append((f"plain FP32 inference (ORT CPU, incl. decode+letterbox, {n} images)", plain))
        rows.append((f"trtq calibrate --algo entropy ({n} images)", t_full))
        rows.append((f"trtq calibrate --algo entropy ({max(1, n // 2)} images)", t_half))
        if not args.skip_ort:
            o = run_child(ORT.format(**fmt, out=f"{tmp}/ort.onnx"), mem_limit_gb=args.ort_mem_gb, timeout=900)
            rows.append((f"ORT quantize_static entropy (all ops, {args.ort_mem_gb:g} GB cap)", o))


    base = secs(plain)
    host = socket.gethostname()
    today = dt.date.today().isoformat()
    lines = [
        f"# Calibration benchmark ({host}, {today})",
        "",
        f"Model `{model.name}`, {n} images from `{calib.name}`, CPU: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores. Times are of the work itself (process start and imports excluded), the fastest "
        f"of {max(1, args.repeat)} interleaved runs; RSS is the largest child-process peak.",
        "",
        "| run | seconds | x plain | peak RSS (MB) | status |",
        "|---|---:|---:|---:|---|",
    ]
    for name, r in rows:
        s = secs(r)
        status = "ok" if r["rc"] == 0 else ("timed out" if r["timed_out"] else f"failed (rc {r['rc']}): {' '.join(r['tail'])[-120:]}")
        lines.append(f"| {name} | {s:.1f} | {s / base:.2f} | {r['peak_rss_mb']:.0f} | {status} |")
    ratio = secs(t_full) / base
    flat = t_full["peak_rss_mb"] / max(t_half["peak_rss_mb"], 1)
    lines += [
        "",
        f"- trtq calibrate / plain inference: **{ratio:.2f}x** (target <= 1.5x)",
        f"- trtq peak RSS: **{t_full['peak_rss_mb']:.0f} MB** (target <= 1024 MB)",
        f"- RSS with {n} vs {max(1, n // 2)} images: **{flat:.2f}x** (flat = 1.0)",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"calibration-{host}-{today}.md"
    path.write_text(report)
    (path.with_suffix(".json")).write_text(json.dumps({"rows": [{"name": k, **v} for k, v in rows]}, indent=2))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
