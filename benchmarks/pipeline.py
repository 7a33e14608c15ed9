"""End-to-end video FPS: trtq's pipeline against the model alone and ultralytics' stream predict.

    .venv/bin/python benchmarks/pipeline.py --shared ../shared/assets        # or: make bench-pipeline

Rows: the shared FP32 YOLOv8n ONNX and trtq's CPU-target INT8 ONNX of it (made here with
``python -m trtq quantize MODEL --calib coco128/images/train2017 --target cpu``, into ``build/pipeline/``).
For each, in interleaved rounds on ``video/bikes.mp4`` (250 frames, 640x272): ``Detector.stream`` end to end,
the same model alone (with the pipeline's inference lanes, and one frame at a time), and
``YOLO(model).predict(source, stream=True)``; the table gives the ratios and
the targets (pipeline >= 1.15x ultralytics, >= 0.9x the model alone). Writes
``benchmarks/results/pipeline.md`` and ``.json``, with the machine's load before and after.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument(
        "--shared", type=Path, default=REPO.parent / "shared" / "assets", help="shared assets folder"
    )
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "pipeline.md")
    p.add_argument("--work", type=Path, default=REPO / "build" / "pipeline", help="prepared models")
    p.add_argument("--video", default="video/bikes.mp4", help="video under --shared")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--save", action="store_true", help="also draw and encode every frame to MP4")
    p.add_argument("--lanes", type=int, default=None, help="inference lanes (default: the pipeline's own)")
    p.add_argument("--fresh", action="store_true", help="re-make the INT8 model")
    return p.parse_args(argv)


def cpu_int8(model: Path, calib: Path, work: Path, fresh: bool) -> Path:
    out = work / f"{model.stem}.cpu-int8.onnx"
    if fresh or not out.is_file():
        work.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "trtq",
            "quantize",
            str(model),
            "--calib",
            str(calib),
            "--target",
            "cpu",
            "-o",
            str(out),
        ]
        subprocess.run(cmd, check=True, cwd=REPO)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from trtq.bench.pipeline import bench_pipeline, markdown
    from trtq.fileio import write_json, write_text

    fp32 = args.shared / "models" / "yolov8n-coco.onnx"
    int8 = cpu_int8(fp32, args.shared / "coco128" / "images" / "train2017", args.work, args.fresh)
    video = str(args.shared / args.video)
    t0 = time.time()
    result = bench_pipeline(
        video,
        [fp32, int8],
        rounds=args.rounds,
        save=args.save,
        lanes=args.lanes,
        on_step=lambda m: print(m, file=sys.stderr, flush=True),
    )
    cmd = "make bench-pipeline  (.venv/bin/python benchmarks/pipeline.py --shared ../shared/assets)"
    header = (
        "# Video pipeline: end-to-end FPS\n\n"
        f"`{cmd}` on {platform.machine()} ({os.cpu_count()} CPUs), "
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(t0))} UTC, {time.time() - t0:.0f} s.\n\n"
    )
    text = header + markdown(result)
    write_text(args.out, text)
    write_json(args.out.with_suffix(".json"), result.to_dict())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
