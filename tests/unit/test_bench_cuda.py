"""The CUDA-event timing path, contract-tested with the fake tensorrt and a fake device.

The fake device's clock only moves when the fake work happens (copies: set here; execute_async_v3: the
engine's fake latency), so event differences are exact and show which work each pair of events brackets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import fake_tensorrt
from tests.fakes.fake_device import FakeClock, FakeDevice
from tests.unit.test_runtime_engine import TRT_VERSION, write_fake_engine
from trtq.bench import backends
from trtq.bench.backends import CudaEventRunner, TensorRTBackend
from trtq.bench.harness import run_benchmark

H2D_MS, D2H_MS, COMPUTE_MS, GRAPH_MS = 0.25, 0.5, 2.0, 1.5


class TimedDevice(FakeDevice):
    """Fake device whose copies take fake GPU time; execute_async_v3 calls land in the same log."""

    def htod(self, dst: Any, src: Any, stream: Any = None) -> None:
        super().htod(dst, src, stream)
        FakeClock.advance(H2D_MS)

    def dtoh(self, dst: Any, src: Any, stream: Any = None) -> None:
        super().dtoh(dst, src, stream)
        FakeClock.advance(D2H_MS)


@pytest.fixture
def trt(monkeypatch: pytest.MonkeyPatch) -> Any:
    return fake_tensorrt.install(monkeypatch, TRT_VERSION, fake_latency_ms=COMPUTE_MS)


@pytest.fixture
def device(monkeypatch: pytest.MonkeyPatch, trt: Any) -> Iterator[TimedDevice]:
    dev = TimedDevice(compute_capability=(8, 7))
    import trtq.device

    monkeypatch.setattr(trtq.device, "get_device", lambda backend="auto", index=0: dev)
    yield dev


def _log_executes(backend: TensorRTBackend, dev: FakeDevice) -> None:
    ctx = backend.session.context
    original: Callable[[int], bool] = ctx.execute_async_v3

    def execute(handle: int) -> bool:
        dev.calls.append(("execute_async_v3", handle))
        return original(handle)

    ctx.execute_async_v3 = execute  # type: ignore[method-assign]


def _kinds(calls: list[tuple[Any, ...]]) -> list[str]:
    return [c[0] for c in calls]


def test_events_bracket_copies_and_compute_on_the_dedicated_stream(
    tmp_path: Path, device: TimedDevice
) -> None:
    engine = write_fake_engine(tmp_path / "e.engine", batch=(1, 4))
    backend = TensorRTBackend(engine)
    _log_executes(backend, device)
    (stream_call,) = [c for c in device.calls if c[0] == "stream"]
    handle = stream_call[1]
    runner = backend.prepare(2, transfers=True, cuda_graph=False)
    start = len(device.calls)
    sample = runner.run()
    one = device.calls[start:]
    assert _kinds(one) == [
        "event_record", "htod", "event_record", "execute_async_v3", "event_record", "dtoh", "event_record",
        "event_synchronize",
    ]  # fmt: skip
    assert all(c[1] == handle for c in one if c[0] in ("event_record", "execute_async_v3"))
    assert all(c[3] == handle for c in one if c[0] in ("htod", "dtoh"))
    assert sample.compute == pytest.approx(COMPUTE_MS)
    assert sample.h2d == pytest.approx(H2D_MS) and sample.d2h == pytest.approx(D2H_MS)
    assert sample.latency == pytest.approx(H2D_MS + COMPUTE_MS + D2H_MS)
    assert sample.host > 0 and runner.clock == "cuda-event"
    # the batch was selected on the context before timing
    assert ("context.set_input_shape", "images", (2, 3, 32, 32)) in trt_calls(backend)
    runner.close()
    backend.close()


def trt_calls(backend: TensorRTBackend) -> list[tuple[Any, ...]]:
    import tensorrt

    return list(tensorrt.CALLS)  # type: ignore[attr-defined]


def test_no_transfers_times_compute_only(tmp_path: Path, device: TimedDevice) -> None:
    backend = TensorRTBackend(write_fake_engine(tmp_path / "e.engine"))
    _log_executes(backend, device)
    runner = backend.prepare(1, transfers=False, cuda_graph=False)
    start = len(device.calls)
    sample = runner.run()
    assert _kinds(device.calls[start:]) == [
        "event_record",
        "execute_async_v3",
        "event_record",
        "event_synchronize",
    ]
    assert sample.latency == sample.compute == pytest.approx(COMPUTE_MS)
    assert sample.h2d is None and sample.d2h is None
    assert any("no transfers" in n for n in runner.notes)
    backend.close()


def test_buffers_once_across_batches_and_iterations_freed_at_close(
    tmp_path: Path, device: TimedDevice
) -> None:
    engine = write_fake_engine(tmp_path / "e.engine", batch=(1, 8))
    result = run_benchmark([engine], batches=[1, 4, 8, 16], warmup=3, iterations=10)
    statuses = [(r.batch, r.status) for r in result.rows]
    assert statuses == [(1, "ok"), (4, "ok"), (8, "ok"), (16, "skipped")]
    assert "outside the engine's optimization profile (batch 1..8)" in (result.rows[3].reason or "")
    allocs = [c for c in device.calls if c[0] == "alloc"]
    pinned = [c for c in device.calls if c[0] == "pinned_empty"]
    assert len(allocs) == 2 and len(pinned) == 2  # sized once for the profile's max batch
    assert pinned[0][1] == (8, 3, 32, 32)
    assert device.live_buffers == [] and device.closed
    assert result.machine["gpu"] == "Fake GPU" and result.machine["gpu_compute_capability"] == "8.7"
    for r in result.ok_rows:
        assert r.clock == "cuda-event" and r.backend == "tensorrt" and r.precision == "INT8 (implicit)"
        assert r.compute is not None and r.compute.median == pytest.approx(COMPUTE_MS)
        assert r.latency is not None and r.latency.median == pytest.approx(H2D_MS + COMPUTE_MS + D2H_MS)
        assert r.latency.count == 10 and r.host is not None and r.h2d is not None and r.d2h is not None
        assert r.throughput == pytest.approx(r.batch * 1000 / (H2D_MS + COMPUTE_MS + D2H_MS))


class FakeGraph:
    instances: list[FakeGraph] = []

    def __init__(self, stream: Any, enqueue: Callable[[], None]) -> None:
        self.stream = stream
        self.captured = enqueue
        self.launches = 0
        self.closed = False
        FakeGraph.instances.append(self)

    def launch(self) -> None:
        self.launches += 1
        FakeClock.advance(GRAPH_MS)

    def close(self) -> None:
        self.closed = True


def test_cuda_graph_replay_replaces_enqueue(
    tmp_path: Path, device: TimedDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeGraph.instances.clear()
    monkeypatch.setattr(backends, "make_cuda_graph", FakeGraph)
    backend = TensorRTBackend(write_fake_engine(tmp_path / "e.engine"))
    _log_executes(backend, device)
    runner = backend.prepare(1, transfers=True, cuda_graph=True)
    assert isinstance(runner, CudaEventRunner)
    (graph,) = FakeGraph.instances
    assert graph.stream is backend.session.stream and graph.captured == backend.session.enqueue
    # one untimed enqueue happened before capture (TensorRT initialises lazily on the first run)
    assert [c[0] for c in device.calls].count("execute_async_v3") == 1
    start = len(device.calls)
    samples = [runner.run() for _ in range(4)]
    assert "execute_async_v3" not in _kinds(device.calls[start:])
    assert graph.launches == 4
    assert all(s.compute == pytest.approx(GRAPH_MS) for s in samples)
    assert "CUDA graph replay" in runner.notes
    runner.close()
    assert graph.closed
    backend.close()


def test_cuda_graph_failure_falls_back_with_a_note(
    tmp_path: Path, device: TimedDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(stream: Any, enqueue: Callable[[], None]) -> Any:
        raise RuntimeError("cudaStreamBeginCapture failed: cudaErrorStreamCaptureUnsupported")

    monkeypatch.setattr(backends, "make_cuda_graph", broken)
    backend = TensorRTBackend(write_fake_engine(tmp_path / "e.engine"))
    runner = backend.prepare(1, transfers=True, cuda_graph=True)
    assert any(n.startswith("CUDA graph not used: cudaStreamBeginCapture failed") for n in runner.notes)
    assert runner.run().compute == pytest.approx(COMPUTE_MS)
    backend.close()


def test_static_engine_batch_sweep_reason(tmp_path: Path, device: TimedDevice) -> None:
    backend = TensorRTBackend(write_fake_engine(tmp_path / "e.engine", batch=(1, 1)))
    assert backend.default_batch == 1
    assert backend.batch_skip_reason(1) is None
    assert "static batch 1 engine" in (backend.batch_skip_reason(4) or "")
    backend.close()
