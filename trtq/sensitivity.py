"""Per-layer quantization sensitivity and accuracy-driven mixed precision.

A *layer* is one quantized weighted op (its activation input and its weights) or one residual Add (its
shortcut input). Each layer is quantized **alone**, every other one in float, and its cost is measured:

* ``metric="fidelity"`` (default, fast): relative noise power of the boxes plus that of the scores of the
  raw YOLOv8 output against FP32, on a few calibration images (see :func:`trtq.fidelity.error_score`);
* ``metric="map"``: the mAP50-95 drop on labelled data (one evaluation per layer: slow, use few images).

:func:`trtq.quantize.keep_sensitive_float` uses the ranking for ``trtq quantize --max-drop``: it keeps the most sensitive
layers in float, one at a time, until the measured mAP drop is within the target.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from trtq.errors import TrtqError
from trtq.fileio import atomic_path, write_json, write_text
from trtq.headpolicy import float_nodes as head_float_nodes
from trtq.headpolicy import node_key
from trtq.qdq import insert_qdq, plan_qdq

logger = logging.getLogger(__name__)

REASON_ALONE = "sensitivity analysis: only one layer quantized at a time"
REASON_MAX_DROP = "kept float by --max-drop: among the most sensitive layers"


@dataclass
class LayerCost:
    layer: str
    op_type: str
    tensor: str  # the activation quantized for it
    cost: float  # larger = more sensitive
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class SensitivityResult:
    ranking: list[LayerCost]
    metric: str
    images: int
    seconds: float
    text_path: Path | None = None
    json_path: Path | None = None
    png_path: Path | None = None

    def table(self, top: int | None = None) -> str:
        return ranking_text(self.ranking[:top] if top else self.ranking, self.metric)


def layer_units(model: onnx.ModelProto, keep_float: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """Quantizable layers of the full plan: (node name, op type, activation tensor quantized for it)."""
    plan = plan_qdq(model, keep_float=keep_float)
    op_of = {node_key(n): n.op_type for n in model.graph.node}
    units: list[tuple[str, str, str]] = []
    readers: dict[str, str] = {}
    for tensor, users in plan.activations.items():
        for u in users:
            readers.setdefault(u, tensor)
    for node in model.graph.node:
        key = node_key(node)
        if key in readers:
            units.append((key, op_of[key], readers[key]))
    return units


def _alone_plan_float(units: Sequence[tuple[str, str, str]], layer: str, base: Mapping[str, str]) -> dict[str, str]:
    keep = dict(base)
    for name, _, _ in units:
        if name != layer:
            keep[name] = REASON_ALONE
    return keep


def analyse(
    model: str | os.PathLike[str],
    source: Any,
    *,
    amax: Mapping[str, float] | None = None,
    algo: str | None = None,
    data: str | os.PathLike[str] | None = None,
    metric: str = "fidelity",
    num_images: int = 8,
    seed: int = 0,
    head_policy: bool = True,
    output: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> SensitivityResult:
    """Rank the quantized layers of ``model`` by the cost of quantizing each alone.

    ``amax`` (tensor -> range) is computed from ``source`` with ``algo`` (default: quantize's default)
    when not given. ``output`` is a path prefix: ``OUT.txt``, ``OUT.json`` and ``OUT.png`` are written.
    """
    from trtq.amax import DEFAULT_ALGO, activation_amax, collect_statistics
    from trtq.fidelity import error_score, fidelity_metrics, load_batches, output_names, run_onnx
    from trtq.modelinfo import read_model_info

    if metric not in ("fidelity", "map"):
        raise TrtqError(f"unknown sensitivity metric {metric!r}; choose 'fidelity' or 'map'")
    if metric == "map" and data is None:
        raise TrtqError("--metric map needs labelled data: pass --data DATA")
    t0 = time.perf_counter()
    mpath = Path(model)
    if not mpath.is_file():
        raise TrtqError(f"model not found: {mpath}")
    fmodel = onnx.load(str(mpath))
    base = dict(head_float_nodes(fmodel)) if head_policy else {}
    units = layer_units(fmodel, base)
    if not units:
        raise TrtqError(f"{mpath.name} has no layer to quantize (no Conv/Gemm/MatMul with constant weights)")
    if amax is None:
        plan = plan_qdq(fmodel, keep_float=base)
        hists, _ = collect_statistics(mpath, source, plan.activation_tensors, num_images=None, progress=progress)
        amax, _ = activation_amax(
            hists, plan.activation_tensors, algo or DEFAULT_ALGO, graph_inputs=[i.name for i in fmodel.graph.input]
        )
    costs: list[LayerCost] = []
    used_images = 0
    if metric == "fidelity":
        batches, used_images = load_batches(mpath, source, num_images=num_images, seed=seed)
        names = output_names(mpath)
        layout = read_model_info(mpath, with_hash=False).layout_or_none
        reference = run_onnx(mpath, batches)
        for i, (layer, op, tensor) in enumerate(units):
            plan = plan_qdq(fmodel, keep_float=_alone_plan_float(units, layer, base))
            qmodel, _ = insert_qdq(fmodel, plan, amax, unify_concat=False)
            outs = run_onnx(qmodel.SerializeToString(), batches)
            m = fidelity_metrics(reference, outs, names, layout=layout)
            score = error_score(m)
            first = next(iter(m["outputs"].values()))
            details = {k: first[k] for k in ("sqnr_db", "boxes_sqnr_db", "scores_sqnr_db") if k in first}
            costs.append(LayerCost(layer, op, tensor, score, details))
            logger.debug("sensitivity %d/%d %s: %.3g", i + 1, len(units), layer, score)
    else:
        from trtq.evaluate import evaluate

        assert data is not None
        fp32 = evaluate(mpath, data)["map50_95"]
        with tempfile.TemporaryDirectory(prefix="trtq-sens-") as tmp:
            path = Path(tmp) / "alone.onnx"
            for layer, op, tensor in units:
                plan = plan_qdq(fmodel, keep_float=_alone_plan_float(units, layer, base))
                qmodel, _ = insert_qdq(fmodel, plan, amax, unify_concat=False)
                onnx.save(qmodel, str(path))
                r = evaluate(path, data)
                used_images = int(r["images"])
                costs.append(LayerCost(layer, op, tensor, (fp32 - r["map50_95"]) * 100, {"map50_95": r["map50_95"]}))
    costs.sort(key=lambda c: -c.cost)
    result = SensitivityResult(costs, metric, used_images, time.perf_counter() - t0)
    if output is not None:
        write_sensitivity(result, output)
    return result


def ranking_text(ranking: Sequence[LayerCost], metric: str) -> str:
    unit = "mAP50-95 drop (points)" if metric == "map" else "error (relative noise power, boxes + scores)"
    width = max((len(c.layer) for c in ranking), default=5)
    lines = [f"{'rank':>4}  {'layer'.ljust(width)}  {'op':6s}  {unit}"]
    for i, c in enumerate(ranking, 1):
        extra = ""
        if "boxes_sqnr_db" in c.details:
            extra = f"   (boxes {c.details['boxes_sqnr_db']:.1f} dB, scores {c.details['scores_sqnr_db']:.1f} dB)"
        lines.append(f"{i:>4}  {c.layer.ljust(width)}  {c.op_type:6s}  {c.cost:.4g}{extra}")
    return "\n".join(lines)


def plot_ranking(ranking: Sequence[LayerCost], path: str | os.PathLike[str], metric: str, top: int = 30) -> Path:
    """Horizontal bar chart of the most sensitive layers (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = list(ranking[:top])[::-1]
    fig, ax = plt.subplots(figsize=(9, max(3.0, 0.28 * len(items) + 1.2)))
    ax.barh([c.layer for c in items], [c.cost for c in items], color="#4477aa")
    ax.set_xlabel("mAP50-95 drop (points)" if metric == "map" else "output error when quantized alone")
    ax.set_title(f"INT8 sensitivity per layer (top {len(items)})")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    out = Path(path)
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out


def write_sensitivity(result: SensitivityResult, prefix: str | os.PathLike[str]) -> SensitivityResult:
    p = Path(prefix)
    base = p.with_suffix("") if p.suffix in (".txt", ".json", ".png") else p
    result.text_path = base.with_name(base.name + ".txt")
    result.json_path = base.with_name(base.name + ".json")
    result.png_path = base.with_name(base.name + ".png")
    write_text(result.text_path, ranking_text(result.ranking, result.metric) + "\n")
    write_json(
        result.json_path,
        {
            "metric": result.metric,
            "images": result.images,
            "seconds": round(result.seconds, 2),
            "ranking": [{"layer": c.layer, "op_type": c.op_type, "tensor": c.tensor, "cost": c.cost, **c.details} for c in result.ranking],
        },
    )
    plot_ranking(result.ranking, result.png_path, result.metric)
    return result
