"""Fidelity of a quantized model against its FP32 reference on unlabelled images.

What a user without labels can check: per-output SQNR (dB) and cosine similarity of the raw outputs, and,
for YOLOv8 detectors, detection agreement: both outputs are decoded (confidence filter + NMS, as
ultralytics predicts), reference detections are matched one-to-one to candidate detections at IoU >= 0.5
(highest IoU first), and the report gives the share of reference detections recovered, the share of
candidate detections that match one, and how often matched detections agree on the class.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trtq.agreement import DETECT_CONF, MATCH_IOU, is_yolo_output
from trtq.errors import TrtqError
from trtq.tasks import TaskLayout

logger = logging.getLogger(__name__)



def _session(model: str | os.PathLike[str] | bytes) -> Any:
    from trtq.cpuisa import is_cpu_target
    from trtq.ort import ort_session

    src = model if isinstance(model, bytes) else Path(model)
    # TensorRT's arithmetic simulated exactly; a CPU-target model on this CPU's own integer kernels
    return ort_session(src, ["CPUExecutionProvider"], exact_qdq=not is_cpu_target(src))


def run_onnx(model: str | os.PathLike[str] | bytes, batches: Iterable[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Outputs of ``model`` for every batch (ONNX Runtime CPU): ``[batch][output]``."""
    sess = _session(model)
    names = [o.name for o in sess.get_outputs()]
    return [[np.asarray(x) for x in sess.run(names, feed)] for feed in batches]


def output_names(model: str | os.PathLike[str]) -> list[str]:
    import onnx

    m = onnx.load(str(model), load_external_data=False)
    return [o.name for o in m.graph.output]


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """10 log10(signal power / noise power); +inf when identical."""
    r = ref.astype(np.float64).ravel()
    noise = float(np.sum((r - test.astype(np.float64).ravel()) ** 2))
    signal = float(np.sum(r**2))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * float(np.log10(signal / noise))


def cosine(ref: np.ndarray, test: np.ndarray) -> float:
    a, b = ref.astype(np.float64).ravel(), test.astype(np.float64).ravel()
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def fidelity_metrics(
    reference: Sequence[Sequence[np.ndarray]],
    candidate: Sequence[Sequence[np.ndarray]],
    names: Sequence[str],
    *,
    conf: float = DETECT_CONF,
    iou: float = MATCH_IOU,
    layout: TaskLayout | None = None,
) -> dict[str, Any]:
    """SQNR / cosine per output over all batches, and detection agreement for YOLO head outputs.

    The comparison itself is ``trtq.agreement.compare_outputs`` (one way to compare outputs in trtq); this adds
    the separate SQNR of boxes and scores used to rank layers.
    """
    from dataclasses import replace

    from trtq.agreement import DEFAULT_TOLERANCE, compare_outputs

    ref_runs = [{name: np.asarray(b[k]) for k, name in enumerate(names)} for b in reference]
    cand_runs = [{name: np.asarray(b[k]) for k, name in enumerate(names)} for b in candidate]
    compared = compare_outputs(ref_runs, cand_runs, names=names,
                               tolerance=replace(DEFAULT_TOLERANCE, conf=conf, match_iou=iou), layout=layout)
    outputs: dict[str, Any] = {}
    for k, name in enumerate(names):
        e = compared["outputs"][name]
        entry: dict[str, Any] = {"sqnr_db": e["sqnr_db"], "cosine": e["cosine"], "max_abs_error": e["max_abs_error"]}
        shape = np.asarray(reference[0][k]).shape
        head = (k == 0 and not layout.end2end) if layout is not None else is_yolo_output(shape)
        if head:
            # grid rows: 4 box values, then the class scores (keypoints, angle or mask coefficients after them)
            end = 4 + layout.nc if layout is not None else None
            rb = np.concatenate([np.asarray(b[k])[:, :4] for b in reference])
            cb = np.concatenate([np.asarray(b[k])[:, :4] for b in candidate])
            rs = np.concatenate([np.asarray(b[k])[:, 4:end] for b in reference])
            cs = np.concatenate([np.asarray(b[k])[:, 4:end] for b in candidate])
            entry["boxes_sqnr_db"] = sqnr_db(rb, cb)
            entry["scores_sqnr_db"] = sqnr_db(rs, cs)
            entry["scores_cosine"] = cosine(rs, cs)
        outputs[name] = entry
    result: dict[str, Any] = {"outputs": outputs}
    d = compared.get("detections")
    if d and (d["reference"] or d["candidate"]):
        result["detections"] = {k: v for k, v in d.items() if k != "passed"}
    return result


def error_score(metrics: dict[str, Any]) -> float:
    """One number for ranking: relative noise power of boxes plus scores (0 = identical)."""
    total = 0.0
    for entry in metrics["outputs"].values():
        keys = ("boxes_sqnr_db", "scores_sqnr_db") if "boxes_sqnr_db" in entry else ("sqnr_db",)
        for key in keys:
            db = entry[key]
            total += 0.0 if db == float("inf") else float(10.0 ** (-db / 10.0))
    return total


def load_batches(
    model: str | os.PathLike[str], source: Any, *, num_images: int | None = 16, batch: int = 1, seed: int = 0
) -> tuple[list[dict[str, np.ndarray]], int]:
    """Preprocessed batches of ``source`` for ``model``'s input (kept in memory), and the image count."""
    from trtq.images import ImageBatcher
    from trtq.modelinfo import check_model, read_model_info

    info = read_model_info(Path(model), with_hash=False)
    check_model(info)
    batcher = ImageBatcher.from_model(source, info, batch=batch, num_images=num_images, seed=seed)
    batches = list(batcher)
    return batches, batcher.num_used


def _check_onnx(path: str | os.PathLike[str], role: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise TrtqError(f"{role} model not found: {p}")
    if p.suffix.lower() == ".engine":
        from trtq.trt.compat import require_tensorrt

        require_tensorrt(f"comparing the engine {p.name}")
        raise TrtqError(f"{p.name}: trtq compare takes ONNX models; check an engine against the reference outputs "
                        f"of its build with `trtq verify {p}`")
    if p.suffix.lower() != ".onnx":
        raise TrtqError(f"{role} model {p} is not an ONNX file; pass an .onnx (`trtq export` turns a .pt into one)")
    return p


def compare(
    reference: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    source: Any,
    *,
    num_images: int | None = 16,
    batch: int = 1,
    seed: int = 0,
    conf: float = DETECT_CONF,
    iou: float = MATCH_IOU,
) -> dict[str, Any]:
    """Fidelity of ``candidate`` (e.g. a Q/DQ ONNX) against ``reference`` (FP32) on unlabelled images."""
    ref = _check_onnx(reference, "reference")
    cand = _check_onnx(candidate, "candidate")
    ref_names, cand_names = output_names(ref), output_names(cand)
    if ref_names != cand_names:
        raise TrtqError(f"the models have different outputs ({ref_names} vs {cand_names}); compare a model with its own quantized version")
    batches, used = load_batches(ref, source, num_images=num_images, batch=batch, seed=seed)
    r = run_onnx(ref, batches)
    c = run_onnx(cand, batches)
    from trtq.modelinfo import read_model_info

    metrics = fidelity_metrics(r, c, ref_names, conf=conf, iou=iou, layout=read_model_info(ref, with_hash=False).layout_or_none)
    metrics.update({"reference": str(ref), "candidate": str(cand), "images": used})
    return metrics


def compare_text(metrics: dict[str, Any]) -> str:
    """Readable summary of :func:`compare`'s result."""
    lines = [
        f"reference {metrics['reference']}",
        f"candidate {metrics['candidate']}",
        f"images    {metrics['images']}",
        "",
        "output          SQNR dB   cosine    boxes dB  scores dB",
    ]
    for name, e in metrics["outputs"].items():
        bx = f"{e['boxes_sqnr_db']:9.2f}" if "boxes_sqnr_db" in e else "        -"
        sc = f"{e['scores_sqnr_db']:9.2f}" if "scores_sqnr_db" in e else "        -"
        lines.append(f"{name[:14]:14s} {e['sqnr_db']:8.2f}  {e['cosine']:.5f}  {bx}  {sc}")
    d = metrics.get("detections")
    if d:
        lines += [
            "",
            f"detections (conf > {d['conf']}, matched at IoU >= {d['match_iou']}): reference {d['reference']}, "
            f"candidate {d['candidate']}, matched {d['matched']}",
            f"  recall {d['recall']:.3f}  precision {d['precision']:.3f}  class agreement {d['class_agreement']:.3f}  "
            f"mean IoU {d['mean_iou']:.3f}",
        ]
    return "\n".join(lines)
