"""`trtq bench --pipeline`: the rows, ratios, stage latencies and the written table."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from tests.unit.test_runtime_models import make_tiny_yolo_onnx
from tests.unit.test_stream import make_video
from trtq.bench.pipeline import PipelineResult, PipelineRow, bench_pipeline, markdown


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
    assert "load_after" in result.machine
    text = markdown(result)
    assert "| m.onnx | 8 |" in text and "draw+encode" in text


def test_markdown_flags_targets() -> None:
    row = PipelineRow("a.onnx", 10, pipeline_fps=[12.0], alone_fps=[12.5], ultralytics_fps=[9.0])
    slow = PipelineRow("b.onnx", 10, pipeline_fps=[5.0], alone_fps=[10.0], ultralytics_fps=[9.0])
    text = markdown(PipelineResult("v.mp4", [row, slow], {"rounds": 1}, {}))
    assert "| 1.33 met | 0.96 met |" in text
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
            "--markdown",
            str(md),
            "--json",
            str(js),
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(js.read_text())
    assert doc["rows"][0]["frames"] == 6 and doc["rows"][0]["fps"] > 0
    assert "trtq pipeline FPS" in md.read_text()
