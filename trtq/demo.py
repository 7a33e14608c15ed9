"""``make demo``: the main job on real data, end to end.

With the shared assets (``../shared/assets``): the YOLOv8n checkpoint, 128 calibration images and the
labelled val2017 images. Without them: ultralytics' ``yolov8n.pt`` (fetched by ultralytics where the
network allows) and the sample images ultralytics ships, without an accuracy table (no labels).

Steps: ``trtq build MODEL --int8 --calib IMAGES`` (export, calibration cache, Q/DQ ONNX, and the engine
where TensorRT is installed), then the FP32-vs-INT8 accuracy table with ``trtq eval --compare``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from trtq.errors import EXIT_MISSING_TENSORRT


def _run(args: list[str]) -> int:
    print(f"\n$ trtq {' '.join(args)}", flush=True)
    return subprocess.call([sys.executable, "-m", "trtq", *args])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trtq.demo", description="Run trtq's main job on real data.")
    ap.add_argument("--shared", default="../shared/assets", help="folder with models/ and coco128/")
    ap.add_argument("--out", default="engines", help="output folder")
    args = ap.parse_args(argv)
    shared = Path(args.shared)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pt = shared / "models" / "yolov8n-coco.pt"
    data: Path | None
    if pt.is_file():
        model, calib, data = str(pt), str(shared / "coco128" / "images" / "train2017"), shared / "coco128" / "data.yaml"
        print(f"trtq demo: shared assets at {shared}: {pt.name}, 128 calibration images, 128 labelled val images")
    else:
        import importlib.util

        spec = importlib.util.find_spec("ultralytics")
        if spec is None or spec.origin is None:
            print("trtq demo: ultralytics is not installed (pip install 'trtq[export]')", file=sys.stderr)
            return 2
        assets = Path(spec.origin).parent / "assets"
        model, calib, data = "yolov8n.pt", str(assets), None
        print(
            f"trtq demo: no shared assets at {shared}; falling back to ultralytics' yolov8n.pt (downloaded by "
            f"ultralytics if the network allows) and the {len(list(assets.glob('*.jpg')))} sample images in {assets}. "
            "Without labels there is no accuracy table; `trtq compare` shows the INT8 fidelity instead."
        )
    stem = Path(model).stem
    engine = out / f"{stem}.int8.engine"
    rc = _run(["build", model, "--int8", "--calib", calib, "-o", str(engine)])
    if rc not in (0, EXIT_MISSING_TENSORRT):
        print(f"trtq demo: build failed (exit code {rc})", file=sys.stderr)
        return rc
    if rc == EXIT_MISSING_TENSORRT:
        what = "INT8 accuracy" if data is not None else "INT8 fidelity (no labels here)"
        print("\ntrtq demo: TensorRT is not installed here, so no engine was built; the CPU steps above are done "
              f"and the {what} below is measured for real on ONNX Runtime (CPU).")
    fp32 = next(iter(sorted(out.glob(f"{stem}.onnx"))), None) or next(iter(sorted(Path(model).parent.glob(f"{stem}.onnx"))), None)
    int8 = next(iter(sorted(out.glob(f"{stem}*.int8.onnx"))), None) or next(iter(sorted(out.glob("*.int8.onnx"))), None)
    if fp32 is None or int8 is None:
        print(f"trtq demo: expected the FP32 and Q/DQ ONNX in {out}/ (found {fp32}, {int8})", file=sys.stderr)
        return 1
    if data is not None:
        rc = _run(["eval", "--compare", str(fp32), str(int8), "--data", str(data)])
    else:
        rc = _run(["compare", str(fp32), str(int8), "--calib", calib])
    print(f"\ntrtq demo: outputs in {out}/:")
    for p in sorted(out.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            print(f"  {p.name:50s} {p.stat().st_size / 1e6:8.2f} MB")
    return rc


if __name__ == "__main__":
    sys.exit(main())
