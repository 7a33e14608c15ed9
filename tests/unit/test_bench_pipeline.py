"""`trtq bench --pipeline`: the rows, ratios, stage latencies and the written table."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from click.testing import CliRunner

from tests.unit.test_runtime_models import make_tiny_yolo_onnx
from tests.unit.test_stream import make_video
from trtq.bench.pipeline import PipelineResult, PipelineRow, bench_pipeline, markdown, run_alone
from trtq.cpuisa import ISAS


def test_bench_pipeline_rows_and_stages(tmp_path: Path) -> None:
    model = make_tiny_yolo_onnx(tmp_path / "m.onnx", hw=32)
    video = make_video(tmp_path / "v.mp4", 8)
    result = bench_pipeline(str(video), [model], rounds=2, save=True, ultralytics=False)
    (row,) = result.rows
    assert row.frames == 8 and len(row.pipeline_fps) == 2 and len(row.alone_fps) == 2
    assert row.fps is not None and row.fps > 0 and row.alone is not None and row.alone > 0
    assert set(row.stages) == {"decode", "preprocess", "inference", "postprocess", "draw+encode"}
    for s in row.stages.values():
        assert 0 <= s["median"] <= s["p99"] and s["n"] == 16  # 8 frames x 2 rounds
    assert "load_after" in result.machine and result.machine["cpu_isa"] in ISAS
    assert row.lanes == det_lanes(model) and len(row.one_at_a_time_fps) == 2
    text = markdown(result)
    assert f"| m.onnx | 8 | {row.lanes} |" in text and "draw+encode" in text
    assert f"CPU ISA **{result.machine['cpu_isa']}**" in text


def det_lanes(model: Path) -> int:
    from trtq.runtime import Detector

    with Detector(model) as det:
        return det.cpu_lanes()


class _CountingLanes:
    """A model whose lanes each take ``delay`` seconds a run and count their runs."""

    def __init__(self, delay: float) -> None:
        self.delay, self.calls = delay, [0, 0]

    @contextlib.contextmanager
    def inference_lanes(self, n: int) -> Iterator[list[Any]]:
        def lane(k: int) -> Any:
            def run(x: np.ndarray) -> list[np.ndarray]:
                self.calls[k] += 1
                time.sleep(self.delay)
                return [x]

            return run

        yield [lane(k) for k in range(n)]


def test_alone_with_two_lanes_counts_the_frames_of_both() -> None:
    x = np.zeros((1, 3, 4, 4), np.float32)
    one, two = _CountingLanes(0.01), _CountingLanes(0.01)
    fps1 = run_alone(one, x, lanes=1, iterations=20)
    fps2 = run_alone(two, x, lanes=2, iterations=20)
    assert one.calls[0] == 21 and two.calls == [21, 21]  # one warm-up run each, then 20
    assert 60 < fps1 < 105 and 1.6 < fps2 / fps1 < 2.2  # sleeping lanes overlap: twice the frames per second


def test_markdown_flags_targets() -> None:
    row = PipelineRow("a.onnx", 10, pipeline_fps=[12.0], alone_fps=[12.5], ultralytics_fps=[9.0])
    slow = PipelineRow("b.onnx", 10, pipeline_fps=[5.0], alone_fps=[10.0], ultralytics_fps=[9.0])
    text = markdown(PipelineResult("v.mp4", [row, slow], {"rounds": 1}, {}))
    assert "| 1.33 met | 0.96 met |" in text and "CPU ISA **unknown**" in text
    assert "| 0.56 MISSED | 0.50 MISSED |" in text
    assert row.to_dict()["vs_ultralytics"] == 12.0 / 9.0


def test_cli_bench_pipeline_writes_json_and_markdown(tmp_path: Path) -> None:
    from trtq.cli import main

    model = make_tiny_yolo_onnx(tmp_path / "m.onnx", hw=32)
    video = make_video(tmp_path / "v.mp4", 6)
    md, js = tmp_path / "p.md", tmp_path / "p.json"
    res = CliRunner().invoke(
        main,
        [
            "bench",
            "--pipeline",
            str(video),
            str(model),
            "--rounds",
            "1",
            "--lanes",
            "2",
            "--markdown",
            str(md),
            "--json",
            str(js),
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(js.read_text())
    assert doc["rows"][0]["frames"] == 6 and doc["rows"][0]["fps"] > 0 and doc["rows"][0]["lanes"] == 2
    assert "trtq pipeline FPS" in md.read_text()
