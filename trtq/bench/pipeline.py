"""End-to-end video benchmark (``trtq bench --pipeline``): trtq's pipeline, the model alone, and ultralytics'
``YOLO(model).predict(source, stream=True)`` on the same model and video, measured interleaved.

Per model and round (rounds rotate the order so load on the machine hits every measurement alike):

- **pipeline**: ``Detector.stream`` over every frame of the video; end-to-end FPS = frames / wall time, and
  per-frame stage latencies (decode, preprocess, inference, postprocess; with ``save`` draw+encode to MP4);
- **model alone**: the same inference on one preprocessed frame, back to back, with the pipeline's lanes side by
  side (frames / wall time: the pipeline's ceiling), and one frame at a time (1000 / median latency, what
  ``trtq bench`` reports);
- **ultralytics**: its stream predict over the same video (frames / wall time), when ultralytics is installed.

The FPS of each is the median over rounds.
"""

from __future__ import annotations

import os
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
    alone_fps: list[float] = field(default_factory=list)  # the pipeline's lanes side by side
    one_at_a_time_fps: list[float] = field(default_factory=list)  # 1000 / median latency of one run
    ultralytics_fps: list[float] = field(default_factory=list)
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    ultralytics_error: str | None = None
    lanes: int = 1

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
    def one_at_a_time(self) -> float | None:
        return self._median(self.one_at_a_time_fps)

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
            one_at_a_time=self.one_at_a_time,
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


def run_pipeline(
    det: Any, source: str, *, save: bool, samples: dict[str, list[float]], lanes: int | None = None
) -> tuple[int, float]:
    """Every frame of ``source`` through ``det.stream`` (``lanes``: its default when None); (frames, FPS);
    per-frame stage ms into ``samples``."""
    from trtq.runtime.video import VideoWriter

    n, writer = 0, None
    with tempfile.TemporaryDirectory(prefix="trtq-bench-") as tmp:
        t0 = time.perf_counter()
        stream = det.stream(source, lanes=lanes)
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


def first_frame_tensor(det: Any, source: str) -> np.ndarray:
    """The first frame of ``source``, preprocessed for ``det`` (1, 3, H, W)."""
    import cv2

    cap = cv2.VideoCapture(source)
    ok, frame = cap.read()
    cap.release()
    if not ok:
        from trtq.errors import TrtqError

        raise TrtqError(f"cannot read a frame of {source}")
    tensor = np.empty((1, 3, *det.input_hw(frame.shape[:2])), dtype=det.input_dtype)
    det.fill_input(tensor[0], frame)
    return tensor


def run_one_at_a_time(det: Any, tensor: np.ndarray, *, iterations: int = 30) -> float:
    """FPS of the model alone, one frame at a time: 1 / median latency of ``run_tensor``, back to back."""
    for _ in range(3):
        det.run_tensor(tensor)
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        det.run_tensor(tensor)
        times.append(time.perf_counter() - t0)
    return 1.0 / statistics.median(times)


def run_alone(det: Any, tensor: np.ndarray, *, lanes: int, iterations: int = 30) -> float:
    """FPS of the model alone with ``lanes`` inferences side by side (``det.inference_lanes``), each lane
    running ``iterations`` frames back to back: frames / wall time, from a common start."""
    import threading

    with det.inference_lanes(lanes) as runs:
        for run in runs:  # warm every session before the clock starts
            run(tensor)
        start = threading.Barrier(len(runs) + 1)

        def lane(run: Callable[[np.ndarray], Any]) -> None:
            start.wait()
            for _ in range(iterations):
                run(tensor)

        threads = [threading.Thread(target=lane, args=(run,), name="trtq-bench-lane") for run in runs]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        return len(runs) * iterations / (time.perf_counter() - t0)


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
    """:func:`trtq.machine.describe_machine` (CPU, its ISA, GPU) and the load average before the run."""
    from trtq.machine import describe_machine

    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    machine = describe_machine()
    machine["load_before"] = [round(x, 2) for x in load]
    return machine


def bench_pipeline(
    source: str,
    models: Sequence[str | Path],
    *,
    rounds: int = 2,
    save: bool = False,
    ultralytics: bool = True,
    lanes: int | None = None,
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
        from trtq.runtime.sources import source_kind
        from trtq.runtime.stream import default_lanes

        live = source_kind(source) != "file"
        for m, det in zip(models, dets, strict=True):
            row = PipelineRow(model=str(m), frames=0, lanes=lanes or default_lanes(det, live=live))
            rows.append(row)
            ultra = None
            if ultralytics:
                try:
                    ultra = ultralytics_runner(Path(m), source, det.imgsz)
                except Exception as exc:  # not installed, or it cannot load the model: say so in the table
                    row.ultralytics_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            ultras.append(ultra)
        tensors = [first_frame_tensor(det, source) for det in dets]
        samples: list[dict[str, list[float]]] = [{} for _ in models]
        for r in range(rounds):
            for i, (row, det, ultra) in enumerate(zip(rows, dets, ultras, strict=True)):
                steps: list[tuple[str, Callable[[], None]]] = [
                    (
                        "pipeline",
                        lambda row=row, det=det, i=i: _pipeline_step(row, det, source, save, samples[i]),
                    ),
                    ("alone", lambda row=row, det=det, i=i: _alone_step(row, det, tensors[i])),
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
    settings = {"rounds": rounds, "save": save, "lanes": lanes, "opencv_threads": _cv_threads()}
    return PipelineResult(str(source), rows, settings, machine)


def _pipeline_step(
    row: PipelineRow, det: Any, source: str, save: bool, samples: dict[str, list[float]]
) -> None:
    n, fps = run_pipeline(det, source, save=save, samples=samples, lanes=row.lanes)
    row.frames = n
    row.pipeline_fps.append(fps)


def _alone_step(row: PipelineRow, det: Any, tensor: np.ndarray) -> None:
    """The model alone, as the pipeline runs it (its lanes) and one frame at a time."""
    row.alone_fps.append(run_alone(det, tensor, lanes=row.lanes))
    row.one_at_a_time_fps.append(run_one_at_a_time(det, tensor))


def _cv_threads() -> int:
    import cv2

    return int(cv2.getNumThreads())


def _f(v: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def markdown(result: PipelineResult, *, targets: tuple[float, float] = (1.15, 0.9)) -> str:
    """The FPS table (pipeline, model alone, ultralytics, ratios) and the stage latency table."""
    from trtq.machine import machine_summary

    vs_ultra, vs_alone = targets
    machine = result.machine
    lines = [
        f"Machine: {machine_summary(machine) if machine else 'not recorded'}; CPU ISA "
        f"**{machine.get('cpu_isa') or 'unknown'}**.",
        "",
        f"Source: `{result.source}`; {result.settings['rounds']} interleaved round(s), median FPS; "
        f"load {machine.get('load_before')} before, {machine.get('load_after')} after.",
        "",
        "| model | frames | lanes | trtq pipeline FPS | model alone FPS (same lanes) | model alone FPS (one frame "
        f"at a time) | ultralytics stream FPS | pipeline / ultralytics (target >= {vs_ultra}) | "
        f"pipeline / alone (target >= {vs_alone}) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result.rows:
        ru, ra = row.ratio(row.ultralytics), row.ratio(row.alone)
        ok_u = "" if ru is None else (" met" if ru >= vs_ultra else " MISSED")
        ok_a = "" if ra is None else (" met" if ra >= vs_alone else " MISSED")
        ultra = _f(row.ultralytics) if row.ultralytics_error is None else f"n/a ({row.ultralytics_error})"
        lines.append(
            f"| {Path(row.model).name} | {row.frames} | {row.lanes} | {_f(row.fps)} | {_f(row.alone)} | "
            f"{_f(row.one_at_a_time)} | {ultra} | {_f(ru, '{:.2f}')}{ok_u} | {_f(ra, '{:.2f}')}{ok_a} |"
        )
    lines += [
        "",
        "Lanes: inferences run side by side (ONNX Runtime on the CPU: one session per lane, the cores shared "
        "between them). Per-frame stage latency, ms (median / p99; inference is one run's latency, so with 2 "
        "lanes two such runs overlap):",
        "",
    ]
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
