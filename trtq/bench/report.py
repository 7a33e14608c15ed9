"""Benchmark reports: a Markdown table, a JSON record and a PNG plot (matplotlib, Agg, imported lazily)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from trtq.bench.types import BenchResult, BenchRow
from trtq.fileio import atomic_path, write_json, write_text

_DASH = "-"


def _ms(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return _DASH
    return f"{value:.3f}" if value < 10 else f"{value:.2f}" if value < 100 else f"{value:.1f}"


def _size(nbytes: int | None) -> str:
    return f"{nbytes / 1e6:.1f}" if nbytes is not None else _DASH


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def row_cells(row: BenchRow) -> list[str]:
    """The Markdown cells of one row (also used for the console table)."""
    if not row.ok:
        return [
            row.model,
            row.precision,
            row.backend,
            str(row.batch),
            _DASH,
            _DASH,
            _DASH,
            _DASH,
            _DASH,
            _size(row.file_size),
            f"SKIPPED: {row.reason}",
        ]
    lat = row.latency
    notes = list(row.notes)
    if row.warnings:
        notes.append("unstable, see warnings")
    return [
        row.model,
        row.precision,
        row.backend,
        str(row.batch),
        _ms(lat.median if lat else None),
        _ms(lat.p99 if lat else None),
        f"{row.throughput:.1f}" if row.throughput is not None and math.isfinite(row.throughput) else _DASH,
        f"{row.speedup:.2f}x" if row.speedup is not None else _DASH,
        _ms(row.host.median if row.host else None),
        _size(row.file_size),
        "; ".join(notes),
    ]


HEADERS = [
    "Model",
    "Precision",
    "Backend",
    "Batch",
    "Median (ms)",
    "p99 (ms)",
    "Throughput (img/s)",
    "Speed-up",
    "Host e2e (ms)",
    "Size (MB)",
    "Notes",
]


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return lines


def markdown(result: BenchResult, *, title: str = "trtq benchmark") -> str:
    """The report as Markdown: the comparison table, the GPU breakdown, settings, machine and warnings."""
    from trtq.machine import machine_summary

    s = result.settings
    if s.get("iterations") is not None:
        length = f"{s['iterations']} iterations"
    else:
        length = f"{s.get('duration_s')} s per row"
    lines = [f"# {title}", "", f"{result.created} on {machine_summary(result.machine)}.", ""]
    lines.append(
        f"Warm-up {s.get('warmup')} iterations, then {length}; "
        f"CUDA graph: {'on' if s.get('cuda_graph') else 'off'}; "
        f"transfers: {'timed' if s.get('transfers', True) else 'not timed (--no-transfers)'}."
    )
    lines.append("")
    lines += _table(HEADERS, [row_cells(r) for r in result.rows])
    lines.append("")
    lines.append(
        "Median and p99 are per inference of the whole batch. TensorRT rows: GPU time measured with CUDA events "
        "(host-to-device copy + compute + device-to-host copy, or compute alone without transfers). ONNX Runtime "
        "rows: host wall clock around `session.run`. Host e2e: host wall clock of the whole iteration. "
        "Throughput = batch x 1000 / median; speed-up = throughput / throughput of the first row that ran."
    )
    gpu_rows = [r for r in result.rows if r.ok and r.compute is not None]
    if gpu_rows:
        lines += ["", "## GPU breakdown (median ms)", ""]
        body = [
            [
                r.model,
                str(r.batch),
                _ms(r.h2d.median if r.h2d else None),
                _ms(r.compute.median if r.compute else None),
                _ms(r.d2h.median if r.d2h else None),
                _ms(r.latency.median if r.latency else None),
                _ms(r.host.median if r.host else None),
                f"{r.compute.cv:.1%}" if r.compute else _DASH,
            ]
            for r in gpu_rows
        ]
        lines += _table(
            ["Model", "Batch", "H2D", "Compute", "D2H", "Latency", "Host e2e", "Compute CV"], body
        )
    warnings = result.warnings
    if warnings:
        lines += ["", "## Warnings", ""]
        lines += [f"- {w}" for w in warnings]
    lines.append("")
    return "\n".join(lines)


def write_markdown(result: BenchResult, path: str | Path, *, title: str = "trtq benchmark") -> Path:
    p = Path(path)
    write_text(p, markdown(result, title=title))
    return p


def report_dict(result: BenchResult, *, include_samples: bool = True) -> dict[str, Any]:
    """The JSON record: settings, machine, every row with the summary of each series (and raw latencies)."""
    data = result.to_dict()
    if include_samples:
        for row_dict, row in zip(data["rows"], result.rows, strict=True):
            row_dict["latency_samples_ms"] = [round(x, 5) for x in row.samples]
    return data


def write_json_report(result: BenchResult, path: str | Path, *, include_samples: bool = True) -> Path:
    p = Path(path)
    write_json(p, report_dict(result, include_samples=include_samples))
    return p


def write_plot(result: BenchResult, path: str | Path, *, title: str = "trtq benchmark") -> Path:
    """Violin plot of the latency samples and bar chart of the throughput, one entry per row (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = result.rows
    labels = [f"{r.model}\n{r.precision}, {r.backend}, b{r.batch}" for r in rows]
    height = max(3.0, 0.7 * len(rows) + 1.5)
    fig = Figure(figsize=(13, height), dpi=100)
    FigureCanvasAgg(fig)
    ax_lat, ax_thr = fig.subplots(1, 2, sharey=True)
    ys = list(range(len(rows)))
    ok_pos = [i for i, r in enumerate(rows) if r.ok and len(r.samples) > 0]
    ok_data = [rows[i].samples for i in ok_pos]
    multi = [(i, d) for i, d in zip(ok_pos, ok_data, strict=True) if len(d) > 1 and max(d) > min(d)]
    if multi:
        import inspect

        horizontal: dict[str, Any] = (
            {"orientation": "horizontal"}
            if "orientation" in inspect.signature(ax_lat.violinplot).parameters
            else {"vert": False}
        )
        ax_lat.violinplot(
            [d for _, d in multi], positions=[i for i, _ in multi], showmedians=True, **horizontal
        )
    for i, d in zip(ok_pos, ok_data, strict=True):
        ax_lat.plot([float(_median(d))], [i], marker="|", color="black", markersize=14)
    ax_lat.set_xlabel("latency per batch (ms)")
    ax_lat.set_title("latency distribution")
    throughputs = [r.throughput if r.ok and r.throughput is not None else 0.0 for r in rows]
    bars = ax_thr.barh(ys, throughputs, color=["#1f77b4" if r.ok else "#cccccc" for r in rows])
    top = max(throughputs) if throughputs and max(throughputs) > 0 else 1.0
    for bar, r in zip(bars, rows, strict=True):
        y = bar.get_y() + bar.get_height() / 2
        if r.ok and r.throughput is not None:
            text = f"{r.throughput:.1f} img/s" + (f"  ({r.speedup:.2f}x)" if r.speedup is not None else "")
            ax_thr.text(bar.get_width() + top * 0.01, y, text, va="center", fontsize=8)
        else:
            ax_thr.text(top * 0.01, y, "skipped", va="center", fontsize=8, color="#555555")
    ax_thr.set_xlim(0, top * 1.35)
    ax_thr.set_xlabel("throughput (images/s)")
    ax_thr.set_title("throughput")
    ax_lat.set_yticks(ys)
    ax_lat.set_yticklabels(labels, fontsize=8)
    ax_lat.invert_yaxis()
    fig.suptitle(title)
    fig.tight_layout()
    p = Path(path)
    with atomic_path(p, suffix=".png") as tmp:
        fig.savefig(str(tmp), format="png")
    return p


def _median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
