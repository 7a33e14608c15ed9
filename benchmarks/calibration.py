#!/usr/bin/env python3
"""Calibration cost on the shared YOLOv8n: `trtq calibrate --algo entropy` against plain FP32 ONNX Runtime
inference on the same images, on N and N/2 images, runs interleaved.

Two figures, each with its target:

- per additional image: (calibrate(N) - calibrate(N/2)) / (plain(N) - plain(N/2)) <= 1.25x. Fixed costs
  (process start, imports, graph preparation) cancel; what is left is the cost of one more image.
- in total: the whole `trtq calibrate` command on N images, process start included, / plain inference of
  the same N images (decode, letterbox and run, session already open) <= 1.5x.

Plus peak RSS (<= 1 GB) and its growth from N/2 to N images (flat = 1.0). Every configuration runs
``--repeat`` times, interleaved, and the fastest run counts; the spread of the runs and the load average
are recorded, because a shared machine's noise hits the configurations unevenly.

Usage: python benchmarks/calibration.py [--shared ../shared/assets] [--images 128] [--repeat 3]
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
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def run_child(argv: list[str], *, mem_limit_gb: float | None = None, timeout: float = 900) -> dict[str, Any]:
    """Run a child process; return its wall time (process start included), peak RSS and exit status."""

    def limit() -> None:
        if mem_limit_gb:
            cap = int(mem_limit_gb * (1 << 30))
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    env = {**os.environ, "PYTHONPATH": str(REPO), "YOLO_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO, preexec_fn=limit, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = t0 + timeout
    while True:
        pid, st, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            _, st, ru = os.wait4(proc.pid, 0)
            break
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    out = proc.stdout.read() if proc.stdout else ""
    rc = os.waitstatus_to_exitcode(st)
    work = next((float(line.split()[1]) for line in out.splitlines() if line.startswith("RESULT")), float("nan"))
    return {"wall": wall, "work": work, "peak_rss_mb": ru.ru_maxrss / 1024, "rc": rc,
            "tail": out.strip().splitlines()[-3:], "timed_out": wall >= timeout}


PLAIN = """
import time
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

ORT = """
import time
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


def fastest(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The fastest successful run by ``key``, with every run's time, their spread and the largest peak RSS."""
    ok = [r for r in runs if r["rc"] == 0] or runs
    best = min(ok, key=lambda r: r[key] if r[key] == r[key] else float("inf"))
    times = [r[key] for r in runs]
    return {**best, "key": key, "all": times, "spread": max(times) / min(times) if min(times) > 0 else float("nan"),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "assets"))
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each configuration, interleaved; the fastest counts")
    ap.add_argument("--with-ort", action="store_true",
                    help="also run ONNX Runtime's quantize_static entropy calibration (slow, memory-hungry)")
    ap.add_argument("--ort-mem-gb", type=float, default=5.0, help="address-space cap for the quantize_static run")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args()
    shared = Path(args.shared)
    model = shared / "models" / "yolov8n-coco.onnx"
    calib = shared / "coco128" / "images" / "train2017"
    if not model.is_file():
        print(f"shared assets not found at {shared}: nothing to benchmark", file=sys.stderr)
        return 2
    n, half = args.images, max(1, args.images // 2)
    py = sys.executable
    load_before = os.getloadavg()
    runs: dict[str, list[dict[str, Any]]] = {"plain_n": [], "plain_half": [], "cli_n": [], "cli_half": []}
    with tempfile.TemporaryDirectory(prefix="trtq-bench-") as tmp:

        def cli(k: int) -> list[str]:
            return [py, "-m", "trtq", "-q", "calibrate", str(model), "--calib", str(calib), "--algo", "entropy",
                    "--num-images", str(k), "-o", f"{tmp}/c{k}.cache"]

        def plain(k: int) -> list[str]:
            return [py, "-c", PLAIN.format(model=str(model), calib=str(calib), n=k)]

        # Interleaved, so a burst of outside load hits every configuration, not one.
        for _ in range(max(1, args.repeat)):
            runs["plain_n"].append(run_child(plain(n)))
            runs["cli_n"].append(run_child(cli(n)))
            runs["plain_half"].append(run_child(plain(half)))
            runs["cli_half"].append(run_child(cli(half)))
        ort_run = None
        if args.with_ort:
            ort_run = run_child([py, "-c", ORT.format(model=str(model), calib=str(calib), n=n, out=f"{tmp}/ort.onnx")],
                                mem_limit_gb=args.ort_mem_gb)
    load_after = os.getloadavg()

    plain_n, plain_half = fastest(runs["plain_n"], "work"), fastest(runs["plain_half"], "work")
    cli_n, cli_half = fastest(runs["cli_n"], "wall"), fastest(runs["cli_half"], "wall")
    failed = [k for k, rs in runs.items() if any(r["rc"] != 0 for r in rs)]
    per_plain = (plain_n["work"] - plain_half["work"]) / (n - half)
    per_cli = (cli_n["wall"] - cli_half["wall"]) / (n - half)
    per_image_ratio = per_cli / per_plain
    total_ratio = cli_n["wall"] / plain_n["work"]
    fixed = cli_n["wall"] - per_cli * n
    rss_growth = cli_n["peak_rss_mb"] / max(cli_half["peak_rss_mb"], 1.0)

    host, today = socket.gethostname(), dt.date.today().isoformat()
    spread = max(r["spread"] for r in (plain_n, plain_half, cli_n, cli_half))
    lines = [
        f"# Calibration benchmark ({host}, {today})",
        "",
        f"Model `{model.name}`, {n} and {half} images from `{calib.name}`, CPU: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, load average {load_before[0]:.1f} before and {load_after[0]:.1f} after. Each "
        f"configuration ran {max(1, args.repeat)} times, interleaved; the fastest run counts.",
        "",
        "| run | seconds (fastest) | all runs (s) | spread | peak RSS (MB) |",
        "|---|---:|---|---:|---:|",
    ]
    for name, r in (
        (f"plain FP32 inference, {n} images (decode + letterbox + run; session open)", plain_n),
        (f"plain FP32 inference, {half} images", plain_half),
        (f"`trtq calibrate --algo entropy`, {n} images (whole command, process start included)", cli_n),
        (f"`trtq calibrate --algo entropy`, {half} images (whole command)", cli_half),
    ):
        lines.append(f"| {name} | {r[r['key']]:.2f} | {', '.join(f'{t:.2f}' for t in r['all'])} | "
                     f"{r['spread']:.2f} | {r['peak_rss_mb']:.0f} |")
    if ort_run is not None:
        status = "ok" if ort_run["rc"] == 0 else f"failed (rc {ort_run['rc']}): {' '.join(ort_run['tail'])[-120:]}"
        lines.append(f"| ONNX Runtime quantize_static entropy, {n} images ({args.ort_mem_gb:g} GB cap): {status} | "
                     f"{ort_run['work']:.2f} | | | {ort_run['peak_rss_mb']:.0f} |")
    lines += [
        "",
        f"- per additional image: calibrate {1000 * per_cli:.0f} ms, plain inference {1000 * per_plain:.0f} ms: "
        f"**{per_image_ratio:.2f}x** (target <= 1.25x)",
        f"- in total, {n} images, process start included: **{total_ratio:.2f}x** plain inference (target <= 1.5x); "
        + (f"fixed cost of the command (start, imports, graph preparation, ranges, writing) about {fixed:.1f} s"
           if fixed >= 0 else "the fixed cost of the command is below what this run's noise can resolve"),
        f"- peak RSS: **{cli_n['peak_rss_mb']:.0f} MB** (target <= 1024 MB); {n} vs {half} images: "
        f"**{rss_growth:.2f}x** (flat = 1.0)",
        f"- noise: the slowest run of a configuration took up to {spread:.2f}x its fastest",
    ]
    if failed:
        lines.append(f"- FAILED runs in: {', '.join(failed)}")
    report = "\n".join(lines) + "\n"
    print(report)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"calibration-{host}-{today}.md"
    path.write_text(report)
    record = {
        "images": [n, half], "repeat": args.repeat, "load_average": [load_before, load_after],
        "per_image_ratio": per_image_ratio, "total_ratio": total_ratio, "fixed_seconds": fixed,
        "peak_rss_mb": cli_n["peak_rss_mb"], "rss_growth": rss_growth, "runs": runs,
        "quantize_static": ort_run,
    }
    path.with_suffix(".json").write_text(json.dumps(record, indent=2))
    print(f"written {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
