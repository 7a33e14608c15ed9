"""A minimal detection loop for a Jetson (or any machine): camera or video in, boxes and FPS on screen.

It needs only numpy, OpenCV and the backend of the model: TensorRT + pycuda (or cuda-python) for an
``.engine``, ONNX Runtime for an ``.onnx`` (handy on a laptop before deploying the engine).

    python examples/jetson_app.py --engine yolov8n.int8.engine --source 0          # USB camera 0
    python examples/jetson_app.py --engine yolov8n.int8.engine --source video.mp4 --output out.mp4
    python examples/jetson_app.py --engine yolov8n.onnx --source video.mp4 --no-show --max-frames 100

On a Jetson with a CSI camera, pass a GStreamer pipeline as the source, for example
``"nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 ! nvvidconv !
video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1"``.
Press q or Esc in the window to stop.
"""

from __future__ import annotations

import argparse
import sys
import time

import cv2

from trtq.draw import draw_detections, draw_text
from trtq.errors import TrtqError
from trtq.runtime import Detector
from trtq.runtime.video import VideoWriter


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="YOLOv8 detection on a camera or video with a trtq engine.")
    p.add_argument("--engine", required=True, help="model: .engine (TensorRT) or .onnx (ONNX Runtime)")
    p.add_argument("--source", default="0", help="camera index (0), video file, or GStreamer pipeline")
    p.add_argument("--conf", type=float, default=0.25, help="confidence threshold")
    p.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold")
    p.add_argument("--output", default=None, help="also write the annotated video here (.mp4)")
    p.add_argument("--no-show", action="store_true", help="do not open a window (headless)")
    p.add_argument("--max-frames", type=int, default=0, help="stop after this many frames (0: until the end)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        detector = Detector(args.engine, conf=args.conf, iou=args.iou)
    except TrtqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    writer: VideoWriter | None = None
    frames, fps, t_last = 0, 0.0, time.perf_counter()
    print(f"{detector} on {args.source}", file=sys.stderr)
    try:
        # decode, letterbox, inference and NMS run in their own threads (trtq.runtime.stream): this loop
        # only draws and shows, while the pipeline works on the next frames
        for r in detector.stream(args.source):
            shown = draw_detections(r.image, r.detections)
            now = time.perf_counter()
            fps = 0.9 * fps + 0.1 / max(now - t_last, 1e-6) if frames else 1.0 / max(now - t_last, 1e-6)
            t_last = now
            draw_text(shown, f"{fps:5.1f} FPS  {r.timing['inference']:.1f} ms  {len(r.detections)} objects")
            if args.output:
                if writer is None:  # written to a temporary file, renamed when finished (never left broken)
                    h, w = shown.shape[:2]
                    writer = VideoWriter(args.output, 30.0, (w, h))
                writer.write(shown)
            if not args.no_show:
                cv2.imshow("trtq", shown)
                if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                    break
            frames += 1
            if args.max_frames and frames >= args.max_frames:
                break
    except TrtqError as exc:  # a source that cannot be opened, or a stream that dropped
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if writer is not None:
            writer.close()
        if not args.no_show:
            cv2.destroyAllWindows()
        detector.close()
    print(f"{frames} frames, {fps:.1f} FPS at the end", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
