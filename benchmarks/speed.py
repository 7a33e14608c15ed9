"""`make bench`: YOLOv8n in every form this machine can run, benchmarked side by side in one run.

    .venv/bin/python benchmarks/speed.py --shared ../shared/assets

Prepares, from the shared YOLOv8n ONNX (into ``build/bench/``, reused by later runs):

- always: the FP32 ONNX, an explicit INT8 Q/DQ ONNX (``trtq.quantize``, the TensorRT layout: simulated INT8
  on the CPU) and the CPU-target INT8 ONNX (``trtq.cpu_target``: integer kernels), all on ONNX Runtime;
- where TensorRT and a GPU exist: FP32, FP16, INT8 implicit (calibrator) and INT8 explicit (Q/DQ) engines.

Rows that cannot run here are listed as SKIPPED with the reason. Writes
``benchmarks/results/<host>-<date>.md``, ``.json`` and ``.png`` and prints the table. The run is time-boxed:
each row is timed for ``--duration`` seconds (default 10) after a short warm-up.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from trtq.bench import report  # noqa: E402
from trtq.bench.harness import BenchRow, BenchTarget, run_benchmark  # noqa: E402
from trtq.errors import TrtqError  # noqa: E402

log = logging.getLogger("benchmarks.speed")

ENGINE_KINDS: tuple[tuple[str, str], ...] = (
    ("fp32", "FP32"),
    ("fp16", "FP16"),
    ("int8-implicit", "INT8 (implicit)"),
    ("int8-explicit", "INT8 (explicit)"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument(
        "--shared", type=Path, default=REPO.parent / "shared" / "assets", help="shared assets folder"
    )
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="where the reports go")
    p.add_argument("--work", type=Path, default=REPO / "build" / "bench", help="prepared models (reused)")
    p.add_argument("--duration", type=float, default=10.0, help="timed seconds per row")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations per row")
    p.add_argument(
        "--batch", type=int, nargs="+", default=[1], help="batch sizes (the shared model has batch 1)"
    )
    p.add_argument("--calib-images", type=int, default=32, help="calibration images for the INT8 models")
    p.add_argument("--fresh", action="store_true", help="rebuild prepared models even when they exist")
    p.add_argument("--no-quantize", action="store_true", help="skip the Q/DQ ONNX (listed as skipped)")
    return p.parse_args(argv)


def _fresh(path: Path, source: Path, fresh: bool) -> bool:
    """True when ``path`` exists, is newer than ``source`` and was not asked to be rebuilt."""
    return not fresh and path.is_file() and path.stat().st_mtime >= source.stat().st_mtime


def prepare_qdq(
    onnx_path: Path, calib: Path, work: Path, *, num_images: int, fresh: bool
) -> tuple[Path | None, str | None]:
    """(Q/DQ ONNX, None) or (None, why it could not be made)."""
    out = work / "yolov8n.int8.qdq.onnx"
    if _fresh(out, onnx_path, fresh):
        log.info("reusing %s", out)
        return out, None
    try:
        from trtq.quantize import quantize
        from trtq.quantize_options import QuantizeOptions
    except ImportError as exc:
        return None, f"trtq.quantize is not available ({exc})"
    try:
        result = quantize(onnx_path, calib, QuantizeOptions(num_images=num_images, progress=False), output=out)
    except TrtqError as exc:
        return None, f"quantization failed: {exc}"
    return result.path, None


def prepare_cpu_int8(
    onnx_path: Path, calib: Path, work: Path, *, num_images: int, fresh: bool
) -> tuple[Path | None, str | None]:
    """(INT8 ONNX for ONNX Runtime's CPU integer kernels, None) or (None, why it could not be made)."""
    out = work / "yolov8n.int8.cpu.onnx"
    if _fresh(out, onnx_path, fresh):
        log.info("reusing %s", out)
        return out, None
    from trtq.cpu_target import quantize_cpu
    from trtq.quantize_options import QuantizeOptions

    try:
        options = QuantizeOptions(target="cpu", num_images=num_images, progress=False)
        result = quantize_cpu(onnx_path, calib, options, output=out)
    except TrtqError as exc:
        return None, f"quantization failed: {exc}"
    return result.path, None


def tensorrt_unavailable_reason() -> str | None:
    """None when TensorRT and a CUDA device are usable here, else why not."""
    from trtq.trt.compat import load_tensorrt, missing_tensorrt_reason

    if load_tensorrt() is None:
        return f"needs TensorRT: {missing_tensorrt_reason()}"
    try:
        from trtq.device import get_device

        get_device().close()
    except TrtqError as exc:
        return f"needs a CUDA GPU: {exc}"
    return None


def prepare_engines(
    onnx_path: Path,
    qdq_path: Path | None,
    calib: Path,
    work: Path,
    *,
    num_images: int,
    fresh: bool,
) -> list[BenchTarget]:
    """One target per engine kind: built (or reused) here, or skipped with the reason."""
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        return [
            BenchTarget(
                None, label=f"yolov8n {label} engine", precision=label, backend="tensorrt", skip_reason=reason
            )
            for _, label in ENGINE_KINDS
        ]
    from trtq.trt.builder import build_engine

    targets: list[BenchTarget] = []
    for kind, label in ENGINE_KINDS:
        out = work / f"yolov8n.{kind}.engine"
        name = f"yolov8n {label} engine"
        if _fresh(out, onnx_path, fresh) and out.with_name(out.name + ".json").is_file():
            targets.append(BenchTarget(out, label=name, precision=label))
            continue
        try:
            t0 = time.perf_counter()
            if kind == "fp32":
                build_engine(onnx_path, output=out, progress=False)
            elif kind == "fp16":
                build_engine(onnx_path, fp16=True, output=out, progress=False)
            elif kind == "int8-implicit":
                build_engine(
                    onnx_path, int8=True, calib=calib, mode="implicit", num_images=num_images, output=out,
                    progress=False,
                )  # fmt: skip
            elif qdq_path is not None:
                build_engine(qdq_path, int8=True, output=out, progress=False)
            else:
                build_engine(
                    onnx_path, int8=True, calib=calib, mode="explicit", num_images=num_images, output=out,
                    progress=False,
                )  # fmt: skip
            log.info("built %s in %.0f s", out.name, time.perf_counter() - t0)
            targets.append(BenchTarget(out, label=name, precision=label))
        except TrtqError as exc:
            targets.append(
                BenchTarget(None, label=name, precision=label, backend="tensorrt", skip_reason=str(exc))
            )
    return targets


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("ultralytics", "matplotlib", "PIL", "onnxslim"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    onnx_path = args.shared / "models" / "yolov8n-coco.onnx"
    calib = args.shared / "coco128" / "images" / "train2017"
    if not onnx_path.is_file():
        print(
            f"error: {onnx_path} not found (pass --shared DIR with models/yolov8n-coco.onnx)", file=sys.stderr
        )
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    targets = [BenchTarget(onnx_path, label="yolov8n FP32 ONNX", precision="FP32")]
    if args.no_quantize:
        qdq, why = None, "skipped (--no-quantize)"
    else:
        qdq, why = prepare_qdq(onnx_path, calib, args.work, num_images=args.calib_images, fresh=args.fresh)
    if qdq is not None:
        targets.append(BenchTarget(qdq, label="yolov8n INT8 Q/DQ ONNX", precision="INT8 (Q/DQ)"))
    else:
        targets.append(
            BenchTarget(
                None,
                label="yolov8n INT8 Q/DQ ONNX",
                precision="INT8 (Q/DQ)",
                backend="onnxruntime-cpu",
                skip_reason=why,
            )
        )
    if args.no_quantize:
        cpu_int8, why = None, "skipped (--no-quantize)"
    else:
        cpu_int8, why = prepare_cpu_int8(onnx_path, calib, args.work, num_images=args.calib_images, fresh=args.fresh)
    targets.append(
        BenchTarget(cpu_int8, label="yolov8n INT8 ONNX (--target cpu)", precision="INT8 (CPU kernels)")
        if cpu_int8 is not None
        else BenchTarget(
            None, label="yolov8n INT8 ONNX (--target cpu)", precision="INT8 (CPU kernels)",
            backend="onnxruntime-cpu", skip_reason=why,
        )  # fmt: skip
    )
    targets += prepare_engines(
        onnx_path, qdq, calib, args.work, num_images=args.calib_images, fresh=args.fresh
    )
    prepared = time.perf_counter() - t_start

    def progress(row: BenchRow) -> None:
        if row.ok and row.latency is not None:
            log.info("%s b%d: median %.3f ms", row.model, row.batch, row.latency.median)
        else:
            log.info("%s b%d: skipped (%s)", row.model, row.batch, row.reason)

    try:
        result = run_benchmark(
            targets, batches=args.batch, warmup=args.warmup, duration=args.duration, on_row=progress
        )
    except TrtqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    result.settings["prepare_seconds"] = round(prepared, 1)
    result.settings["total_seconds"] = round(time.perf_counter() - t_start, 1)
    result.settings["calibration_images"] = args.calib_images
    stem = args.out / f"{socket.gethostname()}-{date.today().isoformat()}"
    md, js, png = stem.with_suffix(".md"), stem.with_suffix(".json"), stem.with_suffix(".png")
    title = "trtq benchmark: YOLOv8n (COCO), FP32 / FP16 / INT8"
    report.write_json_report(result, js)
    report.write_markdown(result, md, title=title)
    report.write_plot(result, png, title=title)
    print(report.markdown(result, title=title))
    print(f"wrote {md}, {js.name}, {png.name} ({result.settings['total_seconds']} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
