"""The benchmark's shared types: samples, runners, backends, targets, rows and results.

:mod:`trtq.bench.harness` times, :mod:`trtq.bench.backends` opens models, :mod:`trtq.bench.report` writes;
all three speak these types, so they live below all three.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from trtq.bench.stats import Summary


@dataclass(frozen=True)
class Sample:
    """One timed iteration, in milliseconds."""

    latency: float  # the compared number (see module docstring)
    host: float  # host wall clock around the whole iteration (enqueue, copies, synchronisation)
    compute: float | None = None  # GPU compute (CUDA events around execute_async_v3 or the graph launch)
    h2d: float | None = None  # host-to-device copy (CUDA events)
    d2h: float | None = None  # device-to-host copy (CUDA events)


class Runner(Protocol):
    """A model ready to run at one batch size."""

    clock: str  # "cuda-event" or "host"
    notes: list[str]

    def run(self) -> Sample: ...

    def close(self) -> None: ...


class Backend(Protocol):
    """A loaded model; makes runners for batch sizes it supports."""

    name: str  # e.g. "tensorrt", "onnxruntime-cpu"
    precision: str  # e.g. "FP32", "FP16", "INT8 (implicit)", "INT8 (Q/DQ)"
    default_batch: int

    def batch_skip_reason(self, batch: int) -> str | None: ...

    def prepare(self, batch: int, *, transfers: bool, cuda_graph: bool) -> Runner: ...

    def close(self) -> None: ...


@dataclass
class BenchTarget:
    """A model to benchmark, with optional display overrides.

    ``skip_reason`` lists the row as skipped without opening anything (e.g. an engine that cannot be built
    on this machine); ``backend`` names the backend shown for such a row.
    """

    path: Path | None
    label: str | None = None
    precision: str | None = None
    backend: str | None = None
    skip_reason: str | None = None

    @property
    def display(self) -> str:
        return self.label or (self.path.name if self.path is not None else "?")


@dataclass
class BenchRow:
    """One model at one batch size."""

    model: str
    path: str | None
    precision: str
    backend: str
    batch: int
    status: str  # "ok" | "skipped"
    reason: str | None = None
    clock: str | None = None
    file_size: int | None = None
    latency: Summary | None = None
    host: Summary | None = None
    compute: Summary | None = None
    h2d: Summary | None = None
    d2h: Summary | None = None
    throughput: float | None = None
    speedup: float | None = None
    notes: list[str] = field(default_factory=list)
    samples: list[float] = field(default_factory=list, repr=False)  # latency samples (ms), for plots

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def warnings(self) -> list[str]:
        out: list[str] = []
        for s in (self.latency, self.compute):
            if s is not None:
                out.extend(w for w in s.warnings if w not in out)
        return out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "model": self.model,
            "path": self.path,
            "precision": self.precision,
            "backend": self.backend,
            "batch": self.batch,
            "status": self.status,
            "reason": self.reason,
            "clock": self.clock,
            "file_size": self.file_size,
            "throughput": self.throughput,
            "speedup": self.speedup,
            "notes": list(self.notes),
            "warnings": self.warnings,
        }
        for key in ("latency", "host", "compute", "h2d", "d2h"):
            s: Summary | None = getattr(self, key)
            d[key] = s.to_dict() if s is not None else None
        return d


@dataclass
class BenchResult:
    rows: list[BenchRow]
    settings: dict[str, Any]
    machine: dict[str, Any]
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def ok_rows(self) -> list[BenchRow]:
        return [r for r in self.rows if r.ok]

    @property
    def warnings(self) -> list[str]:
        return [f"{r.model} (batch {r.batch}): {w}" for r in self.rows for w in r.warnings]

    def to_dict(self) -> dict[str, Any]:
        from trtq import __version__

        return {
            "trtq_version": __version__,
            "created": self.created,
            "settings": self.settings,
            "machine": self.machine,
            "rows": [r.to_dict() for r in self.rows],
            "warnings": self.warnings,
        }
