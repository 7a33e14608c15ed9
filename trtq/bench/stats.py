"""Summary statistics of latency samples, with a verdict on whether the run can be trusted.

Percentiles use linear interpolation between closest ranks (numpy's default, the same as
``statistics.quantiles(method="inclusive")``); the standard deviation is the sample one (ddof=1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: Fewer timed iterations than this and the percentiles (p99 above all) mean little.
MIN_ITERATIONS = 20
#: Coefficient of variation (std / mean) above which a run is flagged as noisy.
MAX_CV = 0.10


@dataclass(frozen=True)
class Summary:
    """Statistics of one series of samples, all in milliseconds."""

    count: int
    mean: float
    median: float
    p90: float
    p99: float
    min: float
    max: float
    std: float
    cv: float  # std / mean (0 when mean is 0)
    total: float  # sum of samples
    warnings: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["warnings"] = list(self.warnings)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Summary:
        data = dict(d)
        data["warnings"] = tuple(data.get("warnings", ()))
        return cls(**data)


def summarize(
    samples: Sequence[float] | np.ndarray,
    *,
    min_iterations: int = MIN_ITERATIONS,
    max_cv: float = MAX_CV,
    min_seconds: float | None = None,
    label: str = "latency",
) -> Summary:
    """Summarize ``samples`` (milliseconds); add warnings when too few, too short or too noisy to trust.

    ``min_seconds``: flag the run when the samples add up to less than this many seconds (None: no check).
    Raises ValueError for an empty or non-finite series (a harness bug, never user input).
    """
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("no samples to summarize")
    if not np.all(np.isfinite(x)):
        raise ValueError("samples contain NaN or infinity")
    n = int(x.size)
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else 0.0
    cv = std / mean if mean > 0 else 0.0
    p50, p90, p99 = (float(v) for v in np.percentile(x, [50.0, 90.0, 99.0]))
    warnings: list[str] = []
    if n < min_iterations:
        warnings.append(
            f"only {n} {label} samples (fewer than {min_iterations}): percentiles are unreliable; "
            "run longer (--iterations or --duration)"
        )
    if cv > max_cv:
        warnings.append(
            f"{label} is noisy: coefficient of variation {cv:.1%} > {max_cv:.0%}; close other workloads, "
            "lock clocks or run longer"
        )
    total = float(x.sum())
    if min_seconds is not None and total / 1000.0 < min_seconds:
        warnings.append(
            f"timed {label} adds up to only {total / 1000.0:.2f} s (< {min_seconds:g} s); run longer"
        )
    return Summary(
        count=n,
        mean=mean,
        median=p50,
        p90=p90,
        p99=p99,
        min=float(x.min()),
        max=float(x.max()),
        std=std,
        cv=cv,
        total=total,
        warnings=tuple(warnings),
    )


def throughput(batch: int, median_ms: float) -> float:
    """Images per second at ``batch`` images per run of ``median_ms`` milliseconds."""
    if median_ms <= 0 or not math.isfinite(median_ms):
        return float("nan")
    return batch * 1000.0 / median_ms
