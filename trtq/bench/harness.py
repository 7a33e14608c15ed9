"""One timing loop and one comparison for every backend.

A backend (:mod:`trtq.bench.backends`) turns a model into a :class:`~trtq.bench.types.Runner` for one batch size;
a runner's ``run()`` performs one inference and returns a :class:`~trtq.bench.types.Sample`. The harness warms up, times runs for a number
of iterations or seconds, summarizes every series (:mod:`trtq.bench.stats`) and compares rows on the same
metric:

- TensorRT engines: ``latency`` is GPU time measured with CUDA events from before the host-to-device copy to
  after the device-to-host copy (``--no-transfers``: the compute alone); compute, H2D and D2H are also
  reported separately, and so is the host wall-clock time of the whole iteration;
- ONNX Runtime: ``latency`` is the host wall clock around ``session.run`` (the work is on the CPU, or the
  provider synchronises before returning).

Throughput is ``batch * 1000 / median latency`` images per second; speed-up is a row's throughput over the
first row that ran.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trtq.bench.stats import MAX_CV, MIN_ITERATIONS, Summary, summarize, throughput
from trtq.bench.types import Backend, BenchResult, BenchRow, BenchTarget, Runner, Sample
from trtq.errors import TrtqError

logger = logging.getLogger(__name__)

DEFAULT_WARMUP = 10
DEFAULT_DURATION = 3.0  # seconds per row when neither iterations nor duration is given
MIN_DURATION_ITERATIONS = 5  # a --duration run keeps going until it has at least this many samples


def time_runner(
    runner: Runner,
    *,
    warmup: int = DEFAULT_WARMUP,
    iterations: int | None = None,
    duration: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> list[Sample]:
    """Run ``warmup`` untimed iterations, then time ``iterations`` runs or runs for ``duration`` seconds."""
    if iterations is None and duration is None:
        duration = DEFAULT_DURATION
    for _ in range(max(int(warmup), 0)):
        runner.run()
    samples: list[Sample] = []
    start = clock()
    while True:
        samples.append(runner.run())
        if iterations is not None:
            if len(samples) >= iterations:
                break
        elif duration is not None and clock() - start >= duration and len(samples) >= MIN_DURATION_ITERATIONS:
            break
    return samples


def _summaries(samples: Sequence[Sample]) -> dict[str, Summary | None]:
    def series(key: str) -> list[float] | None:
        values = [getattr(s, key) for s in samples]
        return None if any(v is None for v in values) else [float(v) for v in values]

    out: dict[str, Summary | None] = {}
    for key in ("latency", "host", "compute", "h2d", "d2h"):
        values = series(key)
        warn = key in ("latency", "compute")
        out[key] = (
            summarize(
                values,
                label=key,
                min_iterations=MIN_ITERATIONS if warn else 0,
                max_cv=MAX_CV if warn else float("inf"),
            )
            if values
            else None
        )
    return out


def _file_size(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


def _skipped_row(
    t: BenchTarget, size: int | None, batch: int, reason: str, precision: str | None, backend: str | None
) -> BenchRow:
    path = str(t.path) if t.path is not None else None
    return BenchRow(t.display, path, precision or "?", backend or "?", batch, "skipped", reason, file_size=size)


BackendOpener = Callable[[Path], Backend]


def run_benchmark(
    models: Sequence[str | Path | BenchTarget],
    *,
    batches: Sequence[int] | None = None,
    warmup: int = DEFAULT_WARMUP,
    iterations: int | None = None,
    duration: float | None = None,
    cuda_graph: bool = False,
    transfers: bool = True,
    device: int = 0,
    providers: Sequence[str] | None = None,
    opener: BackendOpener | None = None,
    on_row: Callable[[BenchRow], None] | None = None,
) -> BenchResult:
    """Benchmark every model at every batch size and compare the rows (see the module docstring).

    ``batches``: None runs each model at its own batch (static models) or 1 (dynamic); a static model is
    skipped, with the reason, at other batch sizes. A model that cannot be opened here (no TensorRT, no GPU,
    an engine for another GPU) becomes a skipped row. Raises :class:`TrtqError` when no row could run.
    """
    if iterations is not None and iterations < 1:
        raise TrtqError(f"--iterations must be at least 1, got {iterations}")
    if duration is not None and duration <= 0:
        raise TrtqError(f"--duration must be positive, got {duration}")
    if iterations is not None and duration is not None:
        raise TrtqError("give --iterations or --duration, not both")
    if batches is not None and any(int(b) < 1 for b in batches):
        raise TrtqError(f"batch sizes must be at least 1, got {list(batches)}")
    if not models:
        raise TrtqError("no models to benchmark")
    if opener is None:
        from trtq.bench.backends import open_backend

        def _open(path: Path) -> Backend:
            return open_backend(path, device=device, providers=providers)

        opener = _open

    targets = [m if isinstance(m, BenchTarget) else BenchTarget(Path(m)) for m in models]
    for t in targets:
        if t.skip_reason is None and (t.path is None or not t.path.exists()):
            raise TrtqError(f"model not found: {t.path}")
    rows: list[BenchRow] = []
    first_error: TrtqError | None = None
    gpu_seen: dict[str, Any] = {}

    def add(row: BenchRow) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    wanted = list(dict.fromkeys(int(b) for b in batches)) if batches else None
    for t in targets:
        size = _file_size(t.path)
        if t.skip_reason is not None or t.path is None:  # (a missing path without a reason is refused above)
            for b in wanted or [1]:
                add(_skipped_row(t, size, b, t.skip_reason or "no model", t.precision, t.backend))
            continue
        try:
            backend = opener(t.path)
        except TrtqError as exc:
            first_error = first_error or exc
            for b in wanted or [1]:
                add(_skipped_row(t, size, b, str(exc), t.precision, t.backend))
            continue
        gpu_seen.update(getattr(backend, "device_description", None) or {})
        try:
            precision = t.precision or backend.precision
            for b in wanted or [backend.default_batch]:
                reason = backend.batch_skip_reason(b)
                if reason is not None:
                    add(_skipped_row(t, size, b, reason, precision, backend.name))
                    continue
                logger.info("benchmarking %s at batch %d on %s", t.display, b, backend.name)
                runner = backend.prepare(b, transfers=transfers, cuda_graph=cuda_graph)
                try:
                    samples = time_runner(runner, warmup=warmup, iterations=iterations, duration=duration)
                finally:
                    runner.close()
                s = _summaries(samples)
                lat = s["latency"]
                if lat is None:  # every runner reports a latency
                    raise RuntimeError(f"{backend.name} runner returned no latency")
                add(
                    BenchRow(
                        t.display,
                        str(t.path),
                        precision,
                        backend.name,
                        b,
                        "ok",
                        clock=runner.clock,
                        file_size=size,
                        latency=lat,
                        host=s["host"],
                        compute=s["compute"],
                        h2d=s["h2d"],
                        d2h=s["d2h"],
                        throughput=throughput(b, lat.median),
                        notes=list(runner.notes),
                        samples=[x.latency for x in samples],
                    )
                )
        finally:
            backend.close()

    ok = [r for r in rows if r.ok]
    if not ok:
        reasons = "; ".join(dict.fromkeys(f"{r.model}: {r.reason}" for r in rows))
        code = first_error.exit_code if first_error is not None else None
        raise TrtqError(f"nothing could be benchmarked here ({reasons})", exit_code=code)
    base = ok[0].throughput
    for r in ok:
        if base and r.throughput is not None:
            r.speedup = r.throughput / base
    from trtq.machine import describe_machine

    settings = {
        "batches": list(batches) if batches else None,
        "warmup": warmup,
        "iterations": iterations,
        "duration_s": duration if duration is not None or iterations is not None else DEFAULT_DURATION,
        "cuda_graph": cuda_graph,
        "transfers": transfers,
        "device": device,
        "providers": list(providers) if providers else None,
    }
    machine = describe_machine(device=device)
    for key, value in gpu_seen.items():  # what the CUDA device itself reported (Jetsons have no nvidia-smi)
        if machine.get(key) is None:
            machine[key] = value
    return BenchResult(rows, settings, machine)


def write_outputs(
    result: BenchResult,
    *,
    json_path: str | Path | None = None,
    markdown_path: str | Path | None = None,
    plot_path: str | Path | None = None,
) -> list[Path]:
    """Write the requested report files (atomically); returns the paths written."""
    from trtq.bench import report

    written: list[Path] = []
    if json_path is not None:
        written.append(report.write_json_report(result, json_path))
    if markdown_path is not None:
        written.append(report.write_markdown(result, markdown_path))
    if plot_path is not None:
        written.append(report.write_plot(result, plot_path))
    return written


def bench(
    models: Sequence[str | Path | BenchTarget],
    *,
    batches: Sequence[int] | None = None,
    warmup: int = DEFAULT_WARMUP,
    iterations: int | None = None,
    duration: float | None = None,
    cuda_graph: bool = False,
    transfers: bool = True,
    device: int = 0,
    providers: Sequence[str] | None = None,
    json_path: str | Path | None = None,
    markdown_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    on_row: Callable[[BenchRow], None] | None = None,
) -> BenchResult:
    """:func:`run_benchmark`, then write the JSON / Markdown / PNG reports that were asked for."""
    result = run_benchmark(
        models,
        batches=batches,
        warmup=warmup,
        iterations=iterations,
        duration=duration,
        cuda_graph=cuda_graph,
        transfers=transfers,
        device=device,
        providers=providers,
        on_row=on_row,
    )
    write_outputs(result, json_path=json_path, markdown_path=markdown_path, plot_path=plot_path)
    return result
