"""The order of a QAT run: check the inputs, place and calibrate, fine-tune, export, write the file set.

Each step is its own function; :func:`qat` puts them in order inside a private staging folder next to the
output, so that Ctrl-C or a failure leaves nothing behind.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trtq.errors import TrtqError
from trtq.qat.dataset import stage_dataset
from trtq.qat.distill import distill_finetune
from trtq.qat.labels import label_finetune
from trtq.qat.model import load_detection_model, save_checkpoint
from trtq.qat.outputs import QatResult, implicit_table, output_paths, peak_rss_mb, qat_markdown, staging
from trtq.qat.placement import QatPlacement, insert_fake_quant, map_placement, strip_fake_quant

if TYPE_CHECKING:  # torch is an optional dependency (the export extra)
    from torch import nn

logger = logging.getLogger(__name__)

DEFAULT_EPOCHS = 3
DEFAULT_BATCH = 8
DEFAULT_LR = 1e-5


@dataclass(frozen=True)
class QatSettings:
    """One run's checked inputs and options."""

    pt: Path
    out: Path
    data: Path | None
    calib_source: Any  # what calibrates the initial ranges: --calib, else --data
    train_source: Any  # what distillation trains on: --calib, else --data
    epochs: int
    batch: int
    lr: float
    imgsz: int
    quantize_head: bool
    distill: bool
    num_images: int | None
    calib_images: int | None
    workers: int
    seed: int
    progress: bool


@dataclass
class Calibrated:
    """The placement on the model's own ONNX export and the ranges its Q/DQ ONNX will carry."""

    plan: Any
    onnx_model: Any
    graph_inputs: list[str]
    used: dict[str, float]
    chosen: Any
    calibration: dict[str, Any]


def _check_options(epochs: int, batch: int, lr: float, imgsz: int, num_images: int | None) -> None:
    if epochs < 1:
        raise TrtqError(f"--epochs must be at least 1, got {epochs}")
    if batch < 1:
        raise TrtqError(f"--batch must be at least 1, got {batch}")
    if not (math.isfinite(lr) and lr > 0):
        raise TrtqError(f"--lr must be a positive number, got {lr}")
    if imgsz < 32 or imgsz % 32:
        raise TrtqError(f"--imgsz must be a multiple of 32 (at least 32), got {imgsz}")
    if num_images is not None and num_images < 1:
        raise TrtqError(f"--num-images must be at least 1, got {num_images}")


def _check_model(model: str | os.PathLike[str]) -> Path:
    pt = Path(model)
    if pt.suffix.lower() != ".pt":
        raise TrtqError(f"{pt}: qat fine-tunes an ultralytics .pt checkpoint (the ONNX has no trainable weights)")
    if not pt.is_file():
        raise TrtqError(f"model not found: {pt}")
    return pt


def _check_sources(
    pt: Path,
    data: str | os.PathLike[str] | None,
    calib: Any,
    output: str | os.PathLike[str] | None,
    distill: bool,
) -> tuple[Path, Any]:
    """(the output path, the calibration source), or a one-line error."""
    if data is None and not distill:
        raise TrtqError("label fine-tuning needs --data DATA.yaml (an ultralytics data yaml); or pass --distill --calib DIR")
    if data is not None and not Path(data).is_file():
        raise TrtqError(f"data yaml not found: {data}")
    calib_source: Any = calib if calib is not None else data
    if calib_source is None:
        raise TrtqError("qat needs images to calibrate on: pass --calib DIR (or --data DATA.yaml)")
    from trtq.fileio import default_output

    out = Path(output) if output is not None else default_output(pt, ".qat.int8.qdq.onnx")
    if not out.name.endswith(".onnx"):
        raise TrtqError(f"output {out} must end in .onnx")
    if not os.access(out.parent if out.parent.exists() else Path.cwd(), os.W_OK):
        raise TrtqError(f"cannot write to {out.parent}; pass -o PATH in a writable folder")
    return out, calib_source


def _place_and_calibrate(s: QatSettings, tmp: Path) -> Calibrated:
    """Export the .pt, plan Q/DQ as ``trtq quantize`` does, calibrate with the default algorithm."""
    import onnx

    from calibrators.ranges import DEFAULT_ALGO
    from trtq.amax import activation_amax, calibration_record, collect_statistics
    from trtq.export import export_onnx
    from trtq.headpolicy import head_keep_float
    from trtq.qdq import insert_qdq, plan_qdq

    logger.info("exporting %s to ONNX for the placement and the calibration", s.pt.name)
    base_onnx = export_onnx(s.pt, imgsz=s.imgsz, output=tmp / "base.onnx")
    fmodel = onnx.load(str(base_onnx))
    plan = plan_qdq(fmodel, keep_float=head_keep_float(fmodel, quantize_head=s.quantize_head))
    graph_inputs = [i.name for i in fmodel.graph.input]
    hists, batcher = collect_statistics(
        base_onnx, s.calib_source, plan.activation_tensors, num_images=s.calib_images, seed=s.seed, progress=s.progress
    )
    calibrated, chosen = activation_amax(hists, plan.activation_tensors, DEFAULT_ALGO, graph_inputs=graph_inputs)
    _, used = insert_qdq(fmodel, plan, calibrated)  # the exact ranges the Q/DQ ONNX will carry
    calibration = calibration_record(s.calib_source, batcher, s.seed)
    return Calibrated(plan, fmodel, graph_inputs, dict(used), chosen, calibration)


@dataclass
class Loaded:
    """The model to fine-tune, its task, and (label fine-tuning) the staged dataset checked against that task."""

    net: nn.Module
    task: str
    staged: Path | None


def _load_model(s: QatSettings, tmp: Path) -> Loaded:
    """The model, its structure and task checked, and its staged dataset: before any export or calibration."""
    yolo, net = load_detection_model(s.pt)
    task = str(yolo.task)
    if s.distill:
        return Loaded(net, task, None)
    assert s.data is not None
    head: Any = net.model[-1]  # type: ignore[index]
    kpt = getattr(head, "kpt_shape", None)
    staged = stage_dataset(
        s.data, tmp / "runs" / "data", num_images=s.num_images, seed=s.seed, task=task,
        nc=int(head.nc), kpt_shape=(int(kpt[0]), int(kpt[1])) if kpt is not None else None,
    )
    return Loaded(net, task, staged)


def _fake_quant_model(s: QatSettings, net: nn.Module, cal: Calibrated) -> nn.Module | None:
    """Put fake quantization at the planned tensors of ``net``; returns the FP32 teacher for distillation."""
    teacher = None
    if s.distill:
        import copy

        teacher = copy.deepcopy(net)
    placement: QatPlacement = map_placement(net, cal.onnx_model, cal.plan, cal.used)
    insert_fake_quant(net, placement)
    logger.info(
        "fake quantization: %d activation tensors, %d convs (%d weights), %d residual Adds",
        len(placement.amax),
        len(placement.convs),
        sum(1 for _, _, w in placement.convs.values() if w),
        len(placement.residuals),
    )
    return teacher


def _finetune(s: QatSettings, model: Loaded, teacher: nn.Module | None, tmp: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune by distillation or with ultralytics' trainer; a non-finite loss is an error."""
    if teacher is not None:
        tuned, stats = distill_finetune(
            model.net, teacher, source=s.train_source, epochs=s.epochs, batch=s.batch, lr=s.lr, imgsz=s.imgsz,
            num_images=s.num_images, seed=s.seed, progress=s.progress,
        )
    else:
        assert model.staged is not None
        pt_copy = tmp / s.pt.name
        shutil.copy2(s.pt, pt_copy)
        tuned, stats = label_finetune(
            model.net, pt=pt_copy, staged=model.staged, task=model.task, epochs=s.epochs, batch=s.batch, lr=s.lr, imgsz=s.imgsz,
            workdir=tmp / "runs", workers=s.workers, seed=s.seed,
        )
    if not stats["losses"] or not all(math.isfinite(v) for v in stats["losses"]):
        raise TrtqError("fine-tuning diverged (non-finite loss); lower --lr")
    return tuned, stats


def _export_qdq(s: QatSettings, tuned: nn.Module, cal: Calibrated, tmp: Path) -> Any:
    """The fine-tuned float model through the usual export, then Q/DQ with the trained ranges."""
    import onnx

    from calibrators.ranges import DEFAULT_ALGO, DEFAULT_PERCENTILE
    from trtq.export import export_onnx
    from trtq.quantize import write_qdq
    from trtq.quantize_options import QuantizeOptions

    strip_fake_quant(tuned)
    tuned_pt = save_checkpoint(tuned, tmp / "finetuned.pt")
    float_onnx = export_onnx(tuned_pt, imgsz=s.imgsz, output=tmp / "float.onnx")
    tuned_model = onnx.load(str(float_onnx))
    produced = {v for n in tuned_model.graph.node for v in n.output} | set(cal.graph_inputs)
    missing = [t for t in cal.used if t not in produced]
    if missing:
        raise RuntimeError(f"the fine-tuned export lost quantized tensor {missing[0]!r}")
    options = QuantizeOptions(algo=DEFAULT_ALGO, percentile=DEFAULT_PERCENTILE, quantize_head=s.quantize_head)
    return write_qdq(float_onnx, cal.used, options, output=tmp / "qdq.onnx", chosen=cal.chosen,
                     calibration=cal.calibration, write_report=False)


def _qat_section(s: QatSettings, stats: dict[str, Any], paths: dict[str, Path], finetune_seconds: float, t_start: float) -> dict[str, Any]:
    """The report's fine-tuning section."""
    from calibrators.ranges import DEFAULT_ALGO

    losses = stats["losses"]
    return {
        "mode": "distill" if s.distill else "labels",
        "quantize_head": s.quantize_head,
        "epochs": s.epochs,
        "batch": s.batch,
        "lr": s.lr,
        "optimizer": "AdamW, cosine to lr/100, no warmup" + ("" if s.distill else ", mosaic off (ultralytics trainer)"),
        "imgsz": s.imgsz,
        "train_data": str(s.calib_source if s.distill else s.data),
        "train_images": stats.get("train_images"),
        "train_instances": stats.get("train_instances"),
        "iterations": stats["iterations"],
        "first_losses": stats.get("first_losses") or {"loss": losses[0]},
        "first_loss": losses[0],
        "last_loss": float(np.mean(losses[-max(1, min(10, len(losses))):])),
        "finetune_seconds": round(finetune_seconds, 1),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "batchnorm": "folded into the convs before fine-tuning",
        "activation_ranges": f"calibrated ({DEFAULT_ALGO}), fixed during fine-tuning",
        "weights": "per output channel, amax = max|w_c| of the fine-tuned weights",
        "float_model": str(paths["float"]),
        "cache": str(paths["cache"]),
    }


def _write_outputs(tmp: Path, paths: dict[str, Path], table: Any, report: dict[str, Any]) -> None:
    """Write the cache and the report in ``tmp``, then move the set into place; the Q/DQ ONNX last, so its
    presence means the set is complete."""
    from calibrators.table import table_sidecar_path
    from trtq.fileio import write_json, write_text
    from trtq.quantize import report_markdown

    stage = {"float": tmp / "float.onnx", "cache": tmp / "implicit.cache", "report_json": tmp / "report.json", "report_md": tmp / "report.md"}
    table.save(stage["cache"])
    write_json(stage["report_json"], report)
    write_text(stage["report_md"], report_markdown(report) + qat_markdown(report["qat"]))
    moves = [
        (stage["float"], paths["float"]),
        (stage["cache"], paths["cache"]),
        (table_sidecar_path(stage["cache"]), paths["sidecar"]),
        (stage["report_json"], paths["report_json"]),
        (stage["report_md"], paths["report_md"]),
        (tmp / "qdq.onnx", paths["onnx"]),
    ]
    for src, dst in moves:
        os.replace(src, dst)


def qat(
    model: str | os.PathLike[str],
    *,
    data: str | os.PathLike[str] | None = None,
    calib: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    epochs: int = DEFAULT_EPOCHS,
    batch: int = DEFAULT_BATCH,
    lr: float = DEFAULT_LR,
    imgsz: int = 640,
    quantize_head: bool = False,
    distill: bool = False,
    output: str | os.PathLike[str] | None = None,
    num_images: int | None = None,
    calib_images: int | None = None,
    workers: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> QatResult:
    """Quantization-aware fine-tuning of an ultralytics ``.pt``; writes a Q/DQ ONNX (+ float ONNX, cache, report).

    ``data`` (an ultralytics data yaml) gives labelled training images for the label loss; with ``distill``
    the FP32 model's outputs are the targets and only images are needed (``calib``, else ``data``'s train
    split). ``calib`` (default: ``data``'s train split) calibrates the initial activation ranges with the
    default algorithm. ``num_images`` limits the fine-tuning images, ``calib_images`` the calibration images.
    """
    t_start = time.perf_counter()
    pt = _check_model(model)
    _check_options(epochs, batch, lr, imgsz, num_images)
    out, calib_source = _check_sources(pt, data, calib, output, distill)
    s = QatSettings(
        pt=pt, out=out, data=Path(data) if data is not None else None, calib_source=calib_source,
        train_source=calib if calib is not None else data, epochs=epochs, batch=batch, lr=lr, imgsz=imgsz,
        quantize_head=quantize_head, distill=distill, num_images=num_images, calib_images=calib_images,
        workers=workers, seed=seed, progress=progress,
    )
    paths = output_paths(out)
    with staging(out) as tmp:
        loaded = _load_model(s, tmp)
        cal = _place_and_calibrate(s, tmp)
        teacher = _fake_quant_model(s, loaded.net, cal)
        t_ft = time.perf_counter()
        tuned, stats = _finetune(s, loaded, teacher, tmp)
        finetune_seconds = time.perf_counter() - t_ft
        del teacher
        result = _export_qdq(s, tuned, cal, tmp)
        # implicit mode: calibration cache of the fine-tuned float ONNX, the trained ranges where Q/DQ is
        table = implicit_table(tmp / "float.onnx", calib_source, cal.used, calib_images=calib_images, seed=seed, progress=progress)
        report = {**result.report, "kind": "trtq-qdq-report", "model": str(pt), "output": str(out)}
        report["qat"] = _qat_section(s, stats, paths, finetune_seconds, t_start)
        _write_outputs(tmp, paths, table, report)
    logger.info("qat done in %.1f s", time.perf_counter() - t_start)
    return QatResult(out, paths["float"], paths["cache"], paths["report_json"], paths["report_md"], report)
