"""Benchmark harness: timing loop, comparison logic, ONNX Runtime backend (real, short), reports and CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.unit.test_runtime_models import make_tiny_yolo_onnx
from trtq.bench import report
from trtq.bench.backends import OnnxRuntimeBackend, onnx_precision, open_backend
from trtq.bench.harness import BenchRow, BenchTarget, Sample, run_benchmark, time_runner, write_outputs
from trtq.errors import MissingDependencyError, TrtqError


class ScriptedRunner:
    """Returns pre-set latencies (ms); counts runs."""

    clock = "host"

    def __init__(self, latencies: list[float]) -> None:
        self.latencies = latencies
        self.runs = 0
        self.notes: list[str] = []
        self.closed = False

    def run(self) -> Sample:
        v = self.latencies[self.runs % len(self.latencies)]
        self.runs += 1
        return Sample(latency=v, host=v + 0.5)

    def close(self) -> None:
        self.closed = True


class ScriptedBackend:
    def __init__(
        self, name: str, latency_per_image: float, *, batches: tuple[int, ...] = (1, 2, 4, 8)
    ) -> None:
        self.name = name
        self.precision = "FP32"
        self.default_batch = 1
        self.per_image = latency_per_image
        self.batches = batches
        self.runners: list[ScriptedRunner] = []
        self.closed = False

    def batch_skip_reason(self, batch: int) -> str | None:
        return None if batch in self.batches else f"batch {batch} not in {self.batches}"

    def prepare(self, batch: int, *, transfers: bool, cuda_graph: bool) -> ScriptedRunner:
        r = ScriptedRunner([self.per_image * batch * f for f in (0.99, 1.0, 1.01)])
        self.runners.append(r)
        return r

    def close(self) -> None:
        self.closed = True


# ------------------------------------------------------------------------------------------ timing loop
def test_time_runner_iterations_and_warmup() -> None:
    r = ScriptedRunner([1.0, 2.0, 3.0])
    samples = time_runner(r, warmup=4, iterations=7)
    assert r.runs == 11 and len(samples) == 7
    assert [s.latency for s in samples] == [2.0, 3.0, 1.0, 2.0, 3.0, 1.0, 2.0]  # warm-up consumed the first 4


def test_time_runner_duration_uses_the_clock() -> None:
    ticks = iter(np.arange(0.0, 100.0, 0.25))  # every clock() call advances 0.25 s
    r = ScriptedRunner([1.0])
    samples = time_runner(r, warmup=0, duration=2.0, clock=lambda: float(next(ticks)))
    assert len(samples) == 8  # start at 0, checks at 0.25 .. 2.0


def test_duration_mode_keeps_a_minimum_of_samples() -> None:
    ticks = iter(np.arange(0.0, 100.0, 10.0))
    samples = time_runner(ScriptedRunner([1.0]), warmup=0, duration=0.1, clock=lambda: float(next(ticks)))
    assert len(samples) == 5


# ------------------------------------------------------------------------------------------ comparison
def _targets(tmp_path: Path, *names: str) -> list[BenchTarget]:
    out = []
    for n in names:
        p = tmp_path / n
        p.write_bytes(b"x" * 1000)
        out.append(BenchTarget(p))
    return out


def test_comparison_throughput_speedup_and_skips(tmp_path: Path) -> None:
    backends = {
        "slow.onnx": ScriptedBackend("slow", 10.0),
        "fast.onnx": ScriptedBackend("fast", 2.5, batches=(1, 2)),
    }
    targets = _targets(tmp_path, "slow.onnx", "fast.onnx")
    seen: list[BenchRow] = []
    result = run_benchmark(
        targets,
        batches=[1, 4],
        warmup=1,
        iterations=30,
        opener=lambda p: backends[p.name],
        on_row=seen.append,
    )
    assert [(r.model, r.batch, r.status) for r in result.rows] == [
        ("slow.onnx", 1, "ok"),
        ("slow.onnx", 4, "ok"),
        ("fast.onnx", 1, "ok"),
        ("fast.onnx", 4, "skipped"),
    ]
    assert seen == result.rows
    slow1, slow4, fast1, fast4 = result.rows
    assert slow1.latency is not None and slow1.latency.median == pytest.approx(10.0)
    assert slow4.latency is not None and slow4.latency.median == pytest.approx(40.0)
    assert slow1.throughput == pytest.approx(100.0) and slow4.throughput == pytest.approx(100.0)
    assert fast1.throughput == pytest.approx(400.0)
    assert (slow1.speedup, slow4.speedup, fast1.speedup) == pytest.approx((1.0, 1.0, 4.0))
    assert fast4.reason == "batch 4 not in (1, 2)" and fast4.speedup is None
    assert slow1.host is not None and slow1.host.median == pytest.approx(10.5)
    assert slow1.file_size == 1000
    assert all(b.closed for b in backends.values())
    assert all(r.closed for b in backends.values() for r in b.runners)
    assert result.warnings == []  # 30 stable samples
    assert result.machine["cpu_count"] >= 1


def test_open_failures_become_skipped_rows_and_all_skipped_raises(tmp_path: Path) -> None:
    def opener(p: Path) -> ScriptedBackend:
        if p.suffix == ".engine":
            raise MissingDependencyError("running the TensorRT engine needs TensorRT")
        return ScriptedBackend("ok", 1.0)

    targets = _targets(tmp_path, "a.engine", "b.onnx")
    result = run_benchmark(targets, iterations=3, warmup=0, opener=opener)
    eng, onnx_row = result.rows
    assert eng.status == "skipped" and "needs TensorRT" in (eng.reason or "")
    # speed-up is relative to the first row that ran
    assert onnx_row.ok and onnx_row.speedup == pytest.approx(1.0)
    assert any("fewer than" in w for w in result.warnings)  # 3 iterations is too short to trust
    with pytest.raises(TrtqError, match="nothing could be benchmarked") as info:
        run_benchmark(targets[:1], iterations=3, opener=opener)
    assert info.value.exit_code == 3


def test_explicit_skip_targets_are_listed(tmp_path: Path) -> None:
    (t,) = _targets(tmp_path, "m.onnx")
    skip = BenchTarget(
        None, label="yolov8n FP16 engine", precision="FP16", backend="tensorrt", skip_reason="no GPU"
    )
    result = run_benchmark([t, skip], iterations=2, warmup=0, opener=lambda p: ScriptedBackend("x", 1.0))
    row = result.rows[1]
    assert (row.model, row.precision, row.backend, row.status, row.reason) == (
        "yolov8n FP16 engine",
        "FP16",
        "tensorrt",
        "skipped",
        "no GPU",
    )


def test_argument_errors(tmp_path: Path) -> None:
    (t,) = _targets(tmp_path, "m.onnx")
    with pytest.raises(TrtqError, match="not both"):
        run_benchmark([t], iterations=3, duration=1.0)
    with pytest.raises(TrtqError, match="at least 1"):
        run_benchmark([t], batches=[0])
    with pytest.raises(TrtqError, match="model not found"):
        run_benchmark([tmp_path / "missing.onnx"])


# ------------------------------------------------------------------------------------------ ONNX Runtime (real)
def test_onnxruntime_backend_batch_sweep(tmp_path: Path) -> None:
    dyn = make_tiny_yolo_onnx(tmp_path / "dyn.onnx", batch="N")
    static = make_tiny_yolo_onnx(tmp_path / "static.onnx", batch=1)
    result = run_benchmark([static, dyn], batches=[1, 2], warmup=1, iterations=5)
    rows = {(Path(r.path or "").name, r.batch): r for r in result.rows}
    assert rows[("static.onnx", 1)].ok and rows[("dyn.onnx", 1)].ok and rows[("dyn.onnx", 2)].ok
    skipped = rows[("static.onnx", 2)]
    assert skipped.status == "skipped" and "static batch 1" in (skipped.reason or "")
    for r in result.ok_rows:
        assert r.backend == "onnxruntime-cpu" and r.clock == "host" and r.precision == "FP32"
        assert r.latency is not None and r.latency.count == 5 and r.latency.min > 0
        assert r.compute is None and r.h2d is None
        assert len(r.samples) == 5


def test_onnxruntime_backend_feeds_and_precision(tmp_path: Path, tiny_conv_onnx: Path) -> None:
    dyn = make_tiny_yolo_onnx(tmp_path / "dyn.onnx", batch="N")
    backend = OnnxRuntimeBackend(dyn)
    try:
        assert backend.default_batch == 1 and backend.batch_skip_reason(16) is None
        runner = backend.prepare(3, transfers=True, cuda_graph=True)
        assert runner._feed["images"].shape == (3, 3, 32, 32)
        assert any("TensorRT engines only" in n for n in runner.notes)
        s = runner.run()
        assert s.latency == s.host > 0
    finally:
        backend.close()
    assert onnx_precision(tiny_conv_onnx) == "FP32"


def test_qdq_model_is_labelled_int8(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
        inits,
    )
    path = tmp_path / "qdq.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert onnx_precision(path) == "INT8 (Q/DQ)"


def test_open_backend_errors(tmp_path: Path) -> None:
    with pytest.raises(TrtqError, match="not found"):
        open_backend(tmp_path / "x.onnx")
    other = tmp_path / "m.tflite"
    other.write_bytes(b"x")
    with pytest.raises(TrtqError, match="unknown model type"):
        open_backend(other)


@pytest.mark.slow
def test_shared_yolov8n_on_onnxruntime(yolo_onnx: Path) -> None:
    result = run_benchmark([yolo_onnx], warmup=1, iterations=3)
    (row,) = result.rows
    assert row.ok and row.precision == "FP32" and row.latency is not None and row.latency.median > 0
    assert row.file_size == yolo_onnx.stat().st_size


# ------------------------------------------------------------------------------------------ reports
def _result(tmp_path: Path):  # noqa: ANN202 - BenchResult
    backends = {
        "a.onnx": ScriptedBackend("onnxruntime-cpu", 8.0),
        "b.engine": ScriptedBackend("tensorrt", 2.0),
    }
    targets = _targets(tmp_path, "a.onnx", "b.engine")
    targets.append(
        BenchTarget(
            None,
            label="c.engine",
            precision="INT8 (explicit)",
            backend="tensorrt",
            skip_reason="no TensorRT here",
        )
    )
    return run_benchmark(targets, batches=[1, 2], warmup=0, iterations=25, opener=lambda p: backends[p.name])


def test_markdown_table(tmp_path: Path) -> None:
    result = _result(tmp_path)
    md = report.markdown(result)
    table = [line for line in md.splitlines() if line.startswith("| ")]
    header, *body = table
    assert [c.strip() for c in header.strip("|").split("|")] == report.HEADERS
    assert len(body) == 6  # 3 models x 2 batches
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in body]
    first, b_engine = cells[0], cells[2]
    assert first[:4] == ["a.onnx", "FP32", "onnxruntime-cpu", "1"]
    assert float(first[4]) == pytest.approx(8.0, rel=1e-3) and first[7] == "1.00x"
    assert float(first[6]) == pytest.approx(125.0, rel=1e-2)
    assert b_engine[0] == "b.engine" and b_engine[7] == "4.00x"
    assert cells[4][-1] == "SKIPPED: no TensorRT here" and cells[4][4] == "-"
    assert "CUDA events" in md and result.machine["hostname"] in md


def test_json_report_round_trips(tmp_path: Path) -> None:
    result = _result(tmp_path)
    (path,) = write_outputs(result, json_path=tmp_path / "r.json")
    data = json.loads(path.read_text())
    assert data["machine"]["cpu_count"] == result.machine["cpu_count"]
    assert {"tensorrt", "gpu", "gpu_driver", "cpu"} <= set(data["machine"])
    rows = data["rows"]
    assert len(rows) == 6 and rows[0]["latency"]["median"] == pytest.approx(8.0)
    assert set(rows[0]["latency"]) >= {"mean", "median", "p90", "p99", "min", "max", "std", "cv", "count"}
    assert len(rows[0]["latency_samples_ms"]) == 25
    assert rows[4]["status"] == "skipped" and rows[4]["latency"] is None
    assert data["settings"]["iterations"] == 25


def test_plot_is_a_png(tmp_path: Path) -> None:
    result = _result(tmp_path)
    path = report.write_plot(result, tmp_path / "p.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    import cv2

    img = cv2.imread(str(path))
    assert img is not None and img.shape[1] > 800
    assert not list(tmp_path.glob("*.trtq-tmp*"))


# ------------------------------------------------------------------------------------------ CLI
def test_cli_bench_writes_reports(tmp_path: Path) -> None:
    from trtq.cli import main

    dyn = make_tiny_yolo_onnx(tmp_path / "dyn.onnx", batch="N")
    out = CliRunner().invoke(
        main,
        [
            "bench", str(dyn), "--batch", "1,2", "--iterations", "3", "--warmup", "1",
            "--json", str(tmp_path / "b.json"), "--markdown", str(tmp_path / "b.md"), "--plot", str(tmp_path / "b.png"),
        ],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "| dyn.onnx | FP32 | onnxruntime-cpu | 2 |" in out.output
    assert (tmp_path / "b.md").read_text().count("| dyn.onnx |") == 2
    assert len(json.loads((tmp_path / "b.json").read_text())["rows"]) == 2
    assert (tmp_path / "b.png").stat().st_size > 0


def test_cli_bench_errors_are_one_line(tmp_path: Path) -> None:
    from trtq.cli import main

    runner = CliRunner()
    out = runner.invoke(main, ["bench", str(tmp_path / "missing.onnx"), "--iterations", "2"])
    assert out.exit_code == 2 and "model not found" in out.output and "Traceback" not in out.output
    dyn = make_tiny_yolo_onnx(tmp_path / "dyn.onnx")
    out = runner.invoke(main, ["bench", str(dyn), "--batch", "x"])
    assert out.exit_code == 2 and "--batch takes whole numbers" in out.output
    out = runner.invoke(main, ["bench", str(dyn), "--iterations", "2", "--duration", "1"])
    assert out.exit_code == 2 and "not both" in out.output
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    out = runner.invoke(main, ["bench", str(engine), "--iterations", "2"])
    assert out.exit_code == 3 and "TensorRT" in out.output
