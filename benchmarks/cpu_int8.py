"""INT8 on ONNX Runtime's CPU provider: trtq --target cpu per CPU ISA against FP32 (and alternatives).

    .venv/bin/python benchmarks/cpu_int8.py --shared ../shared/assets [--alternatives]

One run prepares (into ``build/cpu-int8/``) and measures, on the shared YOLOv8n:

- FP32 ONNX;
- trtq ``--target cpu`` in the weight layout of every ``--cpu-isa`` (same calibration ranges):
  ``avx2`` (8-bit weights, adjacent same-sign pairs limited so x86 without VNNI cannot saturate), the
  ``s8-data`` alternative (pairs limited by the largest input codes of the calibration images instead),
  ``avx-vnni`` / ``avx512-vnni`` / ``arm64`` (full 8-bit weights), and ``--reduce-range`` (7-bit weights);
- with ``--alternatives``: trtq ``--target tensorrt`` (simulated INT8), the CPU layout with SiLU left float,
  and ONNX Runtime ``quantize_static`` (Conv only, QDQ, u8/s8 per channel, minmax and percentile; the
  percentile one in a child process capped with ``prlimit --as``: its memory grows with the images).

mAP50-95 on coco128 val2017 two ways: on this CPU's integer kernels, and with exact Q/DQ arithmetic
(``session.disable_quant_qdq``: what CPUs that accumulate in int32, VNNI and Arm64, compute). Latency and
throughput at batch 1 and 8 with 2 intra-op threads, the models timed round-robin (interleaved) so that
load on the machine hits every row alike; a layout made for another ISA is timed here only where it runs
the same kernels as this CPU's own layout (otherwise: "speed not measured here"). Writes
``benchmarks/results/cpu-int8.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

log = logging.getLogger("benchmarks.cpu_int8")

# key, label, the layout option of quantize_cpu: (cpu_isa, reduce_range)
CPU_ROWS = (
    ("trtq-cpu-avx2", "trtq --target cpu --cpu-isa avx2", ("avx2", False)),
    ("trtq-cpu-data", "trtq --target cpu --cpu-isa avx2, pairs bounded by calibrated input codes (s8-data)",
     ("avx2", False)),
    ("trtq-cpu-vnni", "trtq --target cpu --cpu-isa avx-vnni / avx512-vnni / arm64", ("avx512-vnni", False)),
    ("trtq-cpu-7bit", "trtq --target cpu --reduce-range (any ISA)", ("avx2", True)),
)
ALT_ROWS = (
    ("trtq-tensorrt", "trtq --target tensorrt (simulated INT8)"),
    ("trtq-cpu-silu-float", "trtq --target cpu (host layout), SiLU left float"),
    ("ort-minmax", "ORT quantize_static Conv, per-channel, minmax"),
    ("ort-percentile", "ORT quantize_static Conv, per-channel, percentile"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "assets", help="shared assets folder")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cpu-int8.md")
    p.add_argument("--work", type=Path, default=REPO / "build" / "cpu-int8", help="prepared models")
    p.add_argument("--calib-images", type=int, default=128, help="calibration images (trtq, ORT minmax)")
    p.add_argument("--percentile-images", type=int, default=16, help="calibration images for ORT percentile")
    p.add_argument("--percentile-mem-gb", type=float, default=6.0, help="address-space cap for ORT percentile")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds per batch size")
    p.add_argument("--per-round", type=int, default=5, help="timed runs per model and round at batch 1")
    p.add_argument("--no-map", action="store_true", help="skip the mAP evaluation")
    p.add_argument("--alternatives", action="store_true",
                   help="also the TensorRT layout, SiLU-float layout and ORT quantize_static rows")
    p.add_argument("--fresh", action="store_true", help="rebuild prepared models")
    # internal: ORT quantize_static in a child process
    p.add_argument("--ort-child", nargs=4, metavar=("MODEL", "OUT", "METHOD", "IMAGES"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


class _Reader:
    """ONNX Runtime CalibrationDataReader over trtq's letterboxed calibration batches."""

    def __init__(self, model: Path, calib: Path, num_images: int) -> None:
        from trtq.images import ImageBatcher
        from trtq.modelinfo import read_model_info

        self.batcher = ImageBatcher.from_model(calib, read_model_info(model), batch=1, num_images=num_images, seed=0)
        self.it = iter(self.batcher)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.it, None)

    def rewind(self) -> None:
        self.it = iter(self.batcher)


def ort_quantize_static(model: Path, out: Path, method: str, calib: Path, num_images: int) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(model),
        str(out),
        _Reader(model, calib, num_images),  # type: ignore[arg-type]
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["Conv"],
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax if method == "minmax" else CalibrationMethod.Percentile,
    )


def rebatch(qmodel_path: Path, fp32_batch_model: Path, out: Path) -> None:
    """The batch-1 quantized model with the shape constants and I/O shapes of a batch-N export (same ranges)."""
    import onnx

    q = onnx.load(str(qmodel_path))
    ref = onnx.load(str(fp32_batch_model))
    ref_inits = {i.name: i for i in ref.graph.initializer if i.data_type == onnx.TensorProto.INT64}
    ref_consts = {n.output[0]: n for n in ref.graph.node if n.op_type == "Constant"}
    for init in q.graph.initializer:
        if init.name in ref_inits:
            init.CopyFrom(ref_inits[init.name])
    for node in q.graph.node:
        if node.op_type == "Constant" and node.output[0] in ref_consts:
            node.CopyFrom(ref_consts[node.output[0]])
    for dst, src in ((q.graph.input, ref.graph.input), (q.graph.output, ref.graph.output)):
        for d, s in zip(dst, src, strict=True):
            d.type.CopyFrom(s.type)
    del q.graph.value_info[:]
    onnx.save(q, str(out))


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def prepare(args: argparse.Namespace) -> tuple[dict[str, dict[int, Path]], dict[str, str], dict[str, Any]]:
    import onnx

    from trtq.amax import collect_statistics
    from trtq.cpu_target import plan_cpu, quantize_cpu
    from trtq.cpuisa import WEIGHTS_S8_DATA
    from trtq.export import export_onnx
    from trtq.headpolicy import float_nodes
    from trtq.quantize_options import QuantizeOptions

    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    calib = args.shared / "coco128" / "images" / "train2017"
    # batch 1 and 8 exported by the same exporter from the shared weights: identical graphs but for the batch
    fp32, b8 = work / "yolov8n-b1.onnx", work / "yolov8n-b8.onnx"
    for path, batch in ((fp32, 1), (b8, 8)):
        if args.fresh or not path.is_file():
            export_onnx(args.shared / "models" / "yolov8n-coco.pt", batch=batch, output=path)
    models: dict[str, dict[int, Path]] = {"fp32": {1: fp32, 8: b8}}
    notes: dict[str, str] = {}
    info: dict[str, Any] = {}

    fm = onnx.load(str(fp32))
    t0 = time.perf_counter()
    head = float_nodes(fm)
    cpu_tensors = list(dict.fromkeys(
        plan_cpu(fm, keep_float=head).range_tensors + plan_cpu(fm, keep_float=head, silu="float").range_tensors
    ))
    h_cpu, _ = collect_statistics(fp32, calib, cpu_tensors, num_images=args.calib_images, progress=False, fused_silu=False)
    info["statistics_seconds"] = round(time.perf_counter() - t0, 1)
    for key, _label, (isa, reduce) in CPU_ROWS:
        out = work / f"{key}.onnx"
        options = QuantizeOptions(target="cpu", cpu_isa=isa, reduce_range=reduce, num_images=args.calib_images,
                                  progress=False)
        with _avx2_layout(WEIGHTS_S8_DATA if key == "trtq-cpu-data" else None):
            r = quantize_cpu(fp32, calib, options, output=out, histograms=h_cpu)
        info[f"{key}_kernels"] = r.report["ort_kernels"]
        models[key] = {1: out}
        o = r.report["options"]
        notes[key] = (f"{args.calib_images} images, {r.report['algorithm']} (default), weights {o['weights']}, "
                      f"{o['weights_8bit_channels']} conv channels full 8-bit"
                      + (f", headroom {o['weights_headroom']}" if "weights_headroom" in o else ""))
    if args.alternatives:
        _prepare_alternatives(args, fp32, h_cpu, models, notes, info)
    for key, paths in models.items():
        if 8 not in paths:
            p8 = work / f"{key}-b8.onnx"
            rebatch(paths[1], b8, p8)
            paths[8] = p8
    return models, notes, info


@contextlib.contextmanager
def _avx2_layout(layout: str | None) -> Iterator[None]:
    """Within the block, ``--cpu-isa avx2`` gets weight layout ``layout`` (None: its default)."""
    from trtq.cpuisa import ISA_AVX2, ISA_LAYOUT

    before = ISA_LAYOUT[ISA_AVX2]
    ISA_LAYOUT[ISA_AVX2] = layout or before
    try:
        yield
    finally:
        ISA_LAYOUT[ISA_AVX2] = before


def _prepare_alternatives(args: argparse.Namespace, fp32: Path, h_cpu: dict[str, Any], models: dict[str, dict[int, Path]],
                          notes: dict[str, str], info: dict[str, Any]) -> None:
    import onnx

    from trtq.amax import collect_statistics
    from trtq.cpu_target import quantize_cpu
    from trtq.headpolicy import float_nodes
    from trtq.qdq import plan_qdq
    from trtq.quantize import quantize
    from trtq.quantize_options import QuantizeOptions

    work: Path = args.work
    calib = args.shared / "coco128" / "images" / "train2017"
    fm = onnx.load(str(fp32))
    trt_tensors = plan_qdq(fm, keep_float=float_nodes(fm)).activation_tensors
    h_trt, _ = collect_statistics(fp32, calib, trt_tensors, num_images=args.calib_images, progress=False)
    out = work / "trtq-tensorrt.onnx"
    quantize(fp32, calib, QuantizeOptions(progress=False), output=out, histograms=h_trt)
    models["trtq-tensorrt"] = {1: out}
    notes["trtq-tensorrt"] = f"{args.calib_images} images, percentile 99.99 (default)"
    out = work / "trtq-cpu-silu-float.onnx"
    quantize_cpu(fp32, calib, QuantizeOptions(target="cpu", silu="float", progress=False), output=out, histograms=h_cpu)
    models["trtq-cpu-silu-float"] = {1: out}
    notes["trtq-cpu-silu-float"] = "same ranges as trtq --target cpu"

    for method, n in (("minmax", args.calib_images), ("percentile", args.percentile_images)):
        key = f"ort-{method}"
        out = work / f"{key}.onnx"
        cap = int(args.percentile_mem_gb * 1e9) if method == "percentile" else None
        cmd = [sys.executable, __file__, "--ort-child", str(fp32), str(out), method, str(n)]
        if cap is not None:
            cmd = ["prlimit", f"--as={cap}", *cmd]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        seconds = round(time.perf_counter() - t0, 1)
        if done.returncode != 0 or not out.is_file():
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            oom = "MemoryError" in done.stderr or "bad_alloc" in done.stderr or done.returncode in (-9, 137)
            notes[key] = (f"failed: out of memory under {args.percentile_mem_gb:g} GB" if oom else f"failed: {tail}") + f" ({n} images)"
            log.warning("%s: %s", key, notes[key])
            continue
        models[key] = {1: out}
        notes[key] = f"{n} images" + (f", address space capped at {args.percentile_mem_gb:g} GB" if cap else "") + f", {seconds} s"


def check_rebatch(models: dict[str, dict[int, Path]], calib: Path, threads: int) -> dict[str, float]:
    """Max |difference| between each batch-8 model on 8 images and its batch-1 model image by image."""
    from trtq.images import ImageBatcher
    from trtq.modelinfo import read_model_info

    batcher = ImageBatcher.from_model(calib, read_model_info(models["fp32"][8]), batch=8, num_images=8, seed=1)
    x = next(iter(batcher))
    name = next(iter(x))
    diffs: dict[str, float] = {}
    for key, paths in models.items():
        s1, s8 = _session(paths[1], threads), _session(paths[8], threads)
        y8 = s8.run(None, x)[0]
        y1 = np.concatenate([s1.run(None, {name: x[name][i : i + 1]})[0] for i in range(8)])
        diffs[key] = float(np.max(np.abs(y8 - y1)))
    return diffs


def time_models(models: dict[str, dict[int, Path]], batch: int, args: argparse.Namespace) -> dict[str, list[float]]:
    sessions = {k: _session(v[batch], args.threads) for k, v in models.items()}
    x = np.random.default_rng(0).random((batch, 3, 640, 640), dtype=np.float32)
    name = {k: s.get_inputs()[0].name for k, s in sessions.items()}
    for k, s in sessions.items():
        for _ in range(3):
            s.run(None, {name[k]: x})
    per_round = args.per_round if batch == 1 else max(1, args.per_round // 2)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(args.rounds):
        for k, s in sessions.items():
            for _ in range(per_round):
                t = time.perf_counter()
                s.run(None, {name[k]: x})
                times[k].append((time.perf_counter() - t) * 1e3)
    return times


def _cpu_name(isa: str) -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        out = ""
    model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                 platform.processor() or "?")
    return f"{model} ({os.cpu_count()} cores, ISA {isa})"


def row_isas(key: str) -> tuple[str, ...]:
    """The CPU ISAs a row's layout is made for (every ISA for FP32 and 7-bit weights)."""
    from trtq.cpuisa import ISA_ARM64, ISA_AVX2, ISA_AVX512_VNNI, ISA_AVX_VNNI, ISAS

    return {"trtq-cpu-avx2": (ISA_AVX2,), "trtq-cpu-data": (ISA_AVX2,), "trtq-cpu-vnni": (ISA_AVX_VNNI, ISA_AVX512_VNNI, ISA_ARM64)}.get(key, ISAS)


def _labels() -> list[tuple[str, str]]:
    return [("fp32", "FP32"), *((k, label) for k, label, _ in CPU_ROWS), *ALT_ROWS]


def evaluate_rows(models: dict[str, dict[int, Path]], data: Path) -> tuple[dict[str, float], dict[str, float]]:
    """mAP50-95 of every batch-1 model on this CPU's kernels, and with exact Q/DQ arithmetic (quantized rows)."""
    from trtq.evaluate import evaluate

    native, exact = {}, {}
    for key, paths in models.items():
        native[key] = float(evaluate(paths[1], data, exact_qdq=False)["map50_95"])
        if key != "fp32":
            exact[key] = float(evaluate(paths[1], data, exact_qdq=True)["map50_95"])
    return native, exact


def _table(rows: list[dict[str, Any]], host: str) -> list[str]:
    fp32 = rows[0]
    base_map = fp32.get("map_native")
    lines = [
        f"| model | made for ISA | weights | mAP50-95 exact (int32 kernels) | Δ points | mAP50-95 on this CPU ({host}) "
        "| Δ points | b1 median ms | b1 speed-up | b8 median ms | b8 speed-up | calibration |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]

    def m(v: float | None) -> list[str]:
        if v is None:
            return ["-", "-"]
        return [f"{v:.4f}", f"{(v - base_map) * 100:+.2f}" if base_map is not None else "-"]

    for r in rows:
        cells = [r["label"], ", ".join(r["isas"]), r.get("weights", "float")]
        cells += m(r.get("map_exact")) + m(r.get("map_native"))
        for b in (1, 8):
            d = r.get(f"b{b}")
            if d:
                cells += [f"{d['median_ms']:.1f}", f"{d['throughput'] / fp32[f'b{b}']['throughput']:.2f}×"]
            else:
                cells += ["-", r.get("speed_note", "not measured")]
        cells.append(r["notes"])
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("ultralytics", "matplotlib", "PIL", "onnxslim", "trtq.images"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    calib = args.shared / "coco128" / "images" / "train2017"
    if args.ort_child:
        model, out, method, n = args.ort_child
        ort_quantize_static(Path(model), Path(out), method, calib, int(n))
        return 0
    import onnx
    import onnxruntime as ort

    from trtq.cpuisa import WEIGHTS_KEY, detect_isa

    host = detect_isa()
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    models, notes, info = prepare(args)
    diffs = check_rebatch(models, calib, args.threads)
    # a layout made for another ISA runs other kernels there: its speed here says nothing about that CPU
    timed = {k: v for k, v in models.items() if host.isa in row_isas(k)}
    timings = {b: time_models(timed, b, args) for b in (1, 8)}
    load_timed = os.getloadavg()
    native: dict[str, float] = {}
    exact: dict[str, float] = {}
    if not args.no_map:
        native, exact = evaluate_rows(models, args.shared / "coco128" / "data.yaml")
    load_after = os.getloadavg()

    rows = []
    for key, label in _labels():
        if key not in models and key not in notes:
            continue
        meta = {p.key: p.value for p in onnx.load(str(models[key][1]), load_external_data=False).metadata_props} \
            if key in models else {}
        row: dict[str, Any] = {"key": key, "label": label, "notes": notes.get(key, ""), "isas": list(row_isas(key)),
                               "weights": meta.get(WEIGHTS_KEY, "s8" if key.startswith(("ort-", "trtq-")) else "float"),
                               "map_native": native.get(key), "map_exact": exact.get(key)}
        if key not in timed:
            row["speed_note"] = f"speed not measured here (needs {' / '.join(row_isas(key))})"
        for b in (1, 8):
            t = timings[b].get(key)
            if t:
                med = float(np.median(t))
                row[f"b{b}"] = {"median_ms": med, "p99_ms": float(np.percentile(t, 99)), "samples": len(t),
                                "throughput": b * 1000.0 / med}
        rows.append(row)
    lines = [
        f"# INT8 on the CPU: YOLOv8n (COCO) on ONNX Runtime's CPU provider, ISA {host.isa}",
        "",
        f"Machine: {_cpu_name(host.isa)} ({host.reason}); ONNX Runtime {ort.__version__}; {args.threads} intra-op "
        f"threads; load average {load_before[0]:.1f} before, {load_timed[0]:.1f} after timing, {load_after[0]:.1f} at "
        "the end (the machine was shared: absolute times are noisy; the rows were timed round-robin in one run, so "
        "the ratios are comparable).",
        f"Timing: {args.rounds} interleaved rounds; per model {len(timings[1]['fp32'])} runs at batch 1 and "
        f"{len(timings[8]['fp32'])} at batch 8. mAP50-95: coco128 val2017 (128 images) with ultralytics' validator, "
        "batch-1 models, two ways: *exact* computes the Q/DQ arithmetic as written (ONNX Runtime's "
        "`session.disable_quant_qdq`): what CPUs whose integer kernels accumulate in int32 (AVX-VNNI, AVX512-VNNI, "
        f"Arm64) compute; *on this CPU* runs this machine's fused integer kernels ({host.isa}). On 128 images, "
        "differences under about 0.4 points are within the noise of the evaluation path (exact vs fused). "
        "Calibration: coco128 train2017. All models come from batch-1 and batch-8 ONNX exports of the shared "
        "yolov8n-coco.pt (opset 17, simplified); the quantized rows share one set of activation ranges.",
        "",
        *_table(rows, host.isa),
        "",
        "Kernels in ONNX Runtime's optimized graph: " + "; ".join(
            f"{k.removesuffix('_kernels')}: " + ", ".join(f"{v} {op}" for op, v in sorted(ops.items()))
            for k, ops in info.items() if k.endswith("_kernels")) + ".",
        "Batch-8 models are the batch-1 models with the batch-8 export's shape constants (same ranges); max |batch-8 - "
        "batch-1| output difference per model: " + ", ".join(f"{k} {v:.2g}" for k, v in diffs.items()) + ".",
        f"Reproduce: `make bench-cpu-int8` (`.venv/bin/python benchmarks/cpu_int8.py --shared SHARED`); this run took "
        f"{time.perf_counter() - t_start:.0f} s.",
    ]
    text = "\n".join(lines) + "\n"
    from trtq.fileio import write_json, write_text

    write_text(args.out, text)
    write_json(args.out.with_suffix(".json"), {"isa": host.isa, "isa_reason": host.reason, "rows": rows, "info": info,
                                               "rebatch_max_diff": diffs,
                                               "load_average": [load_before, load_timed, load_after]})
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
