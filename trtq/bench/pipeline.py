"""End-to-end video benchmark (``trtq bench --pipeline``): trtq's pipeline, the model alone, and ultralytics'
``YOLO(model).predict(source, stream=True)`` on the same model and video, measured interleaved.

Per model and round (rounds rotate the order so load on the machine hits every measurement alike):

- **pipeline**: ``Detector.stream`` over every frame of the video; end-to-end FPS = frames / wall time, and
  per-frame stage latencies (decode, preprocess, inference, postprocess; with ``save`` draw+encode to MP4);
- **model alone**: the same session on one preprocessed frame, back to back: 1000 / median latency;
- **ultralytics**: its stream predict over the same video (frames / wall time), when ultralytics is installed.

The FPS of each is the median over rounds.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

STAGE_NAMES = ("decode", "preprocess", "inference", "postprocess", "draw+encode")


@dataclass
class PipelineRow:
    """One model: FPS of the pipeline, the model alone and ultralytics; per-stage latency (ms)."""

    model: str
    frames: int
    pipeline_fps: list[float] = field(default_factory=list)
    alone_fps: list[float] = field(default_factory=list)
    ultralytics_fps: list[float] = field(default_factory=list)
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    ultralytics_error: str | None = None

    @staticmethod
    def _median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    @property
    def fps(self) -> float | None:
        return self._median(self.pipeline_fps)

    @property
    def alone(self) -> float | None:
        return self._median(self.alone_fps)

    @property
    def ultralytics(self) -> float | None:
        return self._median(self.ultralytics_fps)

    def ratio(self, other: float | None) -> float | None:
        return self.fps / other if self.fps and other else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            fps=self.fps,
            alone=self.alone,
            ultralytics=self.ultralytics,
            vs_alone=self.ratio(self.alone),
            vs_ultralytics=self.ratio(self.ultralytics),
        )
        return d


@dataclass
class PipelineResult:
    source: str
    rows: list[PipelineRow]
    settings: dict[str, Any]
    machine: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "settings": self.settings,
            "machine": self.machine,
            "rows": [r.to_dict() for r in self.rows],
        }


def _stage_summary(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {
        k: {"median": float(np.median(v)), "p99": float(np.percentile(v, 99)), "n": len(v)}
        for k, v in samples.items()
        if v
    }


def run_pipeline(det: Any, source: str, *, save: bool, samples: dict[str, list[float]]) -> tuple[int, float]:
    """Every frame of ``source`` through ``det.stream``; (frames, FPS); per-frame stage ms into ``samples``."""
    from trtq.runtime.video import VideoWriter

    n, writer = 0, None
    with tempfile.TemporaryDirectory(prefix="trtq-bench-") as tmp:
        t0 = time.perf_counter()
        stream = det.stream(source)
        try:
            for res in stream:
                for k in ("decode", "preprocess", "inference", "postprocess"):
                    samples.setdefault(k, []).append(res.timing[k] / res.batch)
                if save:
                    from trtq.draw import draw_detections

                    t1 = time.perf_counter()
                    if writer is None:
                        h, w = res.image.shape[:2]
                        writer = VideoWriter(Path(tmp) / "out.mp4", 25.0, (w, h))
                    writer.write(draw_detections(res.image, res.detections))
                    samples.setdefault("draw+encode", []).append((time.perf_counter() - t1) * 1e3)
                n += 1
            if writer is not None:
                writer.close()
        finally:
            stream.close()
        seconds = time.perf_counter() - t0
    return n, n / seconds


def run_alone(det: Any, source: str, *, iterations: int = 30) -> float:
    """FPS of the model alone: ``run_tensor`` on one preprocessed frame of ``source``, back to back."""
    import cv2

    cap = cv2.VideoCapture(source)
    ok, frame = cap.read()
    cap.release()
    if not ok:
        from trtq.errors import TrtqError

        raise TrtqError(f"cannot read a frame of {source}")
    tensor = np.empty((1, 3, *det.imgsz), dtype=det.input_dtype)
    det.fill_input(tensor[0], frame)
    for _ in range(3):
        det.run_tensor(tensor)
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        det.run_tensor(tensor)
        times.append(time.perf_counter() - t0)
    return 1.0 / statistics.median(times)


def ultralytics_runner(model: Path, source: str, imgsz: tuple[int, int]) -> Callable[[], tuple[int, float]]:
    """A callable timing one pass of ultralytics' ``predict(stream=True)`` (model loaded and warmed once)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    yolo = YOLO(str(model), task="detect")
    args: dict[str, Any] = {"stream": True, "verbose": False, "imgsz": list(imgsz)}
    for k, _ in enumerate(yolo.predict(source, **args)):  # warm-up, and errors surface here
        if k == 4:
            break

    def run() -> tuple[int, float]:
        n = 0
        t0 = time.perf_counter()
        for _ in yolo.predict(source, **args):
            n += 1
        return n, n / (time.perf_counter() - t0)

    return run


def machine_info() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "load_before": [round(x, 2) for x in load],
    }


def bench_pipeline(
    source: str,
    models: Sequence[str | Path],
    *,
    rounds: int = 2,
    save: bool = False,
    ultralytics: bool = True,
    on_step: Callable[[str], None] | None = None,
) -> PipelineResult:
    """Measure every model (see the module docstring); returns the rows, with the machine's load noted."""
    from trtq.runtime import Detector

    say = on_step or (lambda _msg: None)
    machine = machine_info()
    rows: list[PipelineRow] = []
    dets = [Detector(m) for m in models]
    try:
        ultras: list[Callable[[], tuple[int, float]] | None] = []
        for m, det in zip(models, dets, strict=True):
            row = PipelineRow(model=str(m), frames=0)
            rows.append(row)
            ultra = None
            if ultralytics:
                try:
                    ultra = ultralytics_runner(Path(m), source, det.imgsz)
                except Exception as exc:  # not installed, or it cannot load the model: say so in the table
                    row.ultralytics_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            ultras.append(ultra)
            for _ in range(3):  # warm-up
                run_alone(det, source, iterations=1)
        samples: list[dict[str, list[float]]] = [{} for _ in models]
        for r in range(rounds):
            for i, (row, det, ultra) in enumerate(zip(rows, dets, ultras, strict=True)):
                steps: list[tuple[str, Callable[[], None]]] = [
                    (
                        "pipeline",
                        lambda row=row, det=det, i=i: _pipeline_step(row, det, source, save, samples[i]),
                    ),
                    ("alone", lambda row=row, det=det: row.alone_fps.append(run_alone(det, source))),
                ]
                if ultra is not None:
                    steps.append(
                        ("ultralytics", lambda row=row, ultra=ultra: row.ultralytics_fps.append(ultra()[1]))
                    )
                k = (r + i) % len(steps)
                for name, step in steps[k:] + steps[:k]:  # rotate the order every round
                    step()
                    say(f"round {r + 1}/{rounds} {Path(row.model).name}: {name} done")
        for row, s in zip(rows, samples, strict=True):
            row.stages = _stage_summary(s)
    finally:
        for det in dets:
            det.close()
    machine["load_after"] = [
        round(x, 2) for x in (os.getloadavg() if hasattr(os, "getloadavg") else (0, 0, 0))
    ]
    settings = {"rounds": rounds, "save": save, "opencv_threads": _cv_threads()}
    return PipelineResult(str(source), rows, settings, machine)


def _pipeline_step(
    row: PipelineRow, det: Any, source: str, save: bool, samples: dict[str, list[float]]
) -> None:
    n, fps = run_pipeline(det, source, save=save, samples=samples)
    row.frames = n
    row.pipeline_fps.append(fps)


def _cv_threads() -> int:
    import cv2

    return int(cv2.getNumThreads())


def _f(v: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def markdown(result: PipelineResult, *, targets: tuple[float, float] = (1.15, 0.9)) -> str:
    """The FPS table (pipeline, model alone, ultralytics, ratios) and the stage latency table."""
    vs_ultra, vs_alone = targets
    lines = [
        f"Source: `{result.source}`; {result.settings['rounds']} interleaved round(s), median FPS; "
        f"load {result.machine.get('load_before')} before, {result.machine.get('load_after')} after.",
        "",
        "| model | frames | trtq pipeline FPS | model alone FPS | ultralytics stream FPS | "
        f"pipeline / ultralytics (target >= {vs_ultra}) | pipeline / alone (target >= {vs_alone}) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result.rows:
        ru, ra = row.ratio(row.ultralytics), row.ratio(row.alone)
        ok_u = "" if ru is None else (" met" if ru >= vs_ultra else " MISSED")
        ok_a = "" if ra is None else (" met" if ra >= vs_alone else " MISSED")
        ultra = _f(row.ultralytics) if row.ultralytics_error is None else f"n/a ({row.ultralytics_error})"
        lines.append(
            f"| {Path(row.model).name} | {row.frames} | {_f(row.fps)} | {_f(row.alone)} | {ultra} | "
            f"{_f(ru, '{:.2f}')}{ok_u} | {_f(ra, '{:.2f}')}{ok_a} |"
        )
    lines += ["", "Per-frame stage latency, ms (median / p99):", ""]
    stages = [s for s in STAGE_NAMES if any(s in r.stages for r in result.rows)]
    lines.append("| model | " + " | ".join(stages) + " |")
    lines.append("|---|" + "---:|" * len(stages))
    for row in result.rows:
        cells = [
            f"{row.stages[s]['median']:.1f} / {row.stages[s]['p99']:.1f}" if s in row.stages else "-"
            for s in stages
        ]
        lines.append(f"| {Path(row.model).name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
