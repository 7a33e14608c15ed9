"""benchmarks/speed.py (`make bench`): TensorRT rows are listed as skipped with the reason; reports written."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_speed", REPO / "benchmarks" / "speed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_engines_are_skipped_with_the_reason_without_tensorrt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    speed = _script()
    monkeypatch.setattr(speed, "tensorrt_unavailable_reason", lambda: "needs TensorRT: not installed")
    targets = speed.prepare_engines(tmp_path / "m.onnx", None, tmp_path, tmp_path, num_images=4, fresh=False)
    assert [t.precision for t in targets] == ["FP32", "FP16", "INT8 (implicit)", "INT8 (explicit)"]
    assert all(t.path is None and t.skip_reason == "needs TensorRT: not installed" for t in targets)
    assert all(t.backend == "tensorrt" for t in targets)


def test_reason_names_what_is_missing_here() -> None:
    from trtq.trt.compat import load_tensorrt

    if load_tensorrt() is not None:
        pytest.skip("TensorRT is installed here")
    reason = _script().tensorrt_unavailable_reason()
    assert reason is not None and reason.startswith("needs TensorRT")


@pytest.mark.slow
def test_speed_script_end_to_end(
    shared_assets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    speed = _script()
    out, work = tmp_path / "results", tmp_path / "work"
    rc = speed.main(
        ["--shared", str(shared_assets), "--out", str(out), "--work", str(work), "--duration", "0.2", "--warmup", "0",
         "--no-quantize"]
    )  # fmt: skip
    assert rc == 0
    (md,) = out.glob("*.md")
    (js,) = out.glob("*.json")
    (png,) = out.glob("*.png")
    assert png.stat().st_size > 0
    data = json.loads(js.read_text())
    rows = {r["model"]: r for r in data["rows"]}
    assert rows["yolov8n FP32 ONNX"]["status"] == "ok" and rows["yolov8n FP32 ONNX"]["latency"]["median"] > 0
    assert rows["yolov8n INT8 Q/DQ ONNX"]["status"] == "skipped"
    engines = [r for r in data["rows"] if r["backend"] == "tensorrt"]
    assert len(engines) == 4
    text = md.read_text()
    assert rows["yolov8n INT8 ONNX (--target cpu)"]["status"] == "skipped"
    assert text.count("| yolov8n ") == 7 and "SKIPPED" in text
    assert "yolov8n FP32 ONNX" in capsys.readouterr().out
