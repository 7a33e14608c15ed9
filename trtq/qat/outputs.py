"""What :func:`trtq.qat.qat` writes: the file set, its private staging folder, the cache and the report."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class QatResult:
    """What :func:`qat` wrote and measured."""

    path: Path
    float_path: Path
    cache_path: Path
    report_path: Path
    markdown_path: Path
    report: dict[str, Any]

    def summary(self) -> str:
        q = self.report["qat"]
        c = self.report["counts"]
        return "\n".join(
            [
                f"wrote {self.path} ({c['quantized_activations']} activations, {c['quantized_weights']} weights quantized; "
                f"{c['float_weighted_ops']} weighted ops kept float)",
                f"fine-tuned {q['mode']} for {q['epochs']} epoch(s), {q['iterations']} iterations in {q['finetune_seconds']:.0f} s "
                f"(loss {q['first_loss']:.4g} -> {q['last_loss']:.4g}); total {q['total_seconds']:.0f} s, peak RSS {q['peak_rss_mb']:.0f} MB",
                f"implicit INT8: {self.float_path} with cache {self.cache_path} (+ .json)",
                f"report {self.report_path} and {self.markdown_path}",
            ]
        )


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its finished children (MB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024.0


def output_paths(output: Path) -> dict[str, Path]:
    """Every file :func:`qat` writes for the Q/DQ ONNX ``output``."""
    from calibrators.table import table_sidecar_path
    from trtq.quantize import report_paths

    stem = output.name[: -len(".onnx")] if output.name.endswith(".onnx") else output.name
    float_path = output.with_name(f"{stem}.float.onnx")
    cache = output.with_name(f"{stem}.cache")
    report_json, report_md = report_paths(output)
    return {
        "onnx": output,
        "float": float_path,
        "cache": cache,
        "sidecar": table_sidecar_path(cache),
        "report_json": report_json,
        "report_md": report_md,
    }


@contextlib.contextmanager
def staging(output: Path) -> Iterator[Path]:
    """A private folder next to ``output``, removed whatever happens."""
    output.parent.mkdir(parents=True, exist_ok=True)
    # absolute: the export and ultralytics' trainer change or resolve against the working folder
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".trtq-tmp", dir=os.path.abspath(output.parent)))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def implicit_table(
    float_onnx: Path,
    source: Any,
    used: Mapping[str, float],
    *,
    calib_images: int | None,
    seed: int,
    progress: bool,
) -> Any:
    """Calibration table of the fine-tuned float ONNX; the trained (Q/DQ) tensors keep their QAT ranges."""
    from calibrators.calibrate import calibrate
    from calibrators.table import CalibrationTable

    res = calibrate(float_onnx, source, num_images=calib_images, seed=seed, write=False, progress=progress)
    t = res.table
    amax = dict(t.amax)
    for name, a in used.items():
        amax[name] = float(a)
    stats = dict(t.statistics)
    stats["qat_tensors"] = sorted(used)
    return CalibrationTable(
        amax=amax,
        algorithm=t.algorithm,
        percentile=t.percentile,
        model_sha256=t.model_sha256,
        num_images=t.num_images,
        images_sha256=t.images_sha256,
        preprocessing=t.preprocessing,
        tensorrt_version=t.tensorrt_version,
        statistics=stats,
    )


def qat_markdown(q: Mapping[str, Any]) -> str:
    lines = [
        "",
        "## Quantization-aware fine-tuning",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    for key in ("mode", "quantize_head", "epochs", "batch", "lr", "optimizer", "imgsz", "train_data", "train_images",
                "iterations", "first_losses", "first_loss", "last_loss", "finetune_seconds", "total_seconds", "peak_rss_mb",
                "batchnorm", "activation_ranges", "weights", "float_model", "cache"):
        v = q.get(key)
        if isinstance(v, dict):
            v = ", ".join(f"{k} {float(x):.4g}" for k, x in v.items())
        elif isinstance(v, float):
            v = f"{v:.4g}"
        lines.append(f"| {key} | {v} |")
    return "\n".join(lines) + "\n"
