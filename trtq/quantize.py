"""Explicit INT8 quantization: calibrate, place Q/DQ, write the Q/DQ ONNX and its report.

``quantize(model, source, QuantizeOptions(...))`` streams calibration images through ONNX Runtime, turns
the activation histograms into ranges, and writes a Q/DQ ONNX that ONNX Runtime's CPU provider runs as
simulated INT8 and TensorRT builds as a strongly typed INT8 network. Next to it go ``<name>.report.json``
and ``<name>.report.md``: every quantized tensor with its amax, every node kept in float and why.

With the options' ``max_drop`` and ``data`` it also measures mAP and keeps the most sensitive layers in
float, one at a time, until the INT8 model is within ``max_drop`` mAP50-95 points of FP32.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from calibrators.ranges import QMAX
from trtq import __version__, onnxgraph
from trtq.amax import activation_amax, calibration_record, collect_statistics
from trtq.errors import TrtqError
from trtq.fileio import atomic_path, default_output, write_json, write_text
from trtq.fileio import current as current_file
from trtq.headpolicy import branch_summary, head_keep_float, node_key, reason_code
from trtq.qdq import QdqPlan, insert_qdq, plan_qdq, qdq_summary
from trtq.quantize_options import TARGET_TENSORRT, QuantizeOptions

logger = logging.getLogger(__name__)


# Why ops without Q/DQ still run fast in TensorRT (for the report's summary of unsimulated ops).
_UNQUANTIZED_REASONS = {
    "Sigmoid": "SiLU activation: fused into the preceding Conv",
    "Mul": "SiLU activation: fused into the preceding Conv",
    "Add": "residual Add: fused into the Conv that produces its other input",
    "Concat": "Concat: runs on the quantized inputs (scales unified)",
    "Split": "Split: data movement, commutes with quantization",
    "MaxPool": "MaxPool: commutes with quantization (TensorRT moves Q/DQ across it)",
    "Resize": "Resize (nearest): commutes with quantization",
    "Reshape": "data movement",
    "Transpose": "data movement",
    "Constant": "constant",
}


@dataclass
class QuantizeResult:
    """What :func:`quantize` wrote and measured."""

    path: Path
    report: dict[str, Any]
    report_path: Path
    markdown_path: Path
    amax: dict[str, float] = field(default_factory=dict)
    plan: QdqPlan | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        r = self.report
        lines = [
            f"wrote {self.path} ({r['counts']['quantized_activations']} activations, "
            f"{r['counts']['quantized_weights']} weights quantized; {r['counts']['float_weighted_ops']} weighted ops kept float)",
            f"report {self.report_path} and {self.markdown_path}",
        ]
        md = r.get("max_drop")
        if md:
            lines.append(
                f"mAP50-95 FP32 {md['fp32_map50_95']:.4f}, INT8 {md['final_map50_95']:.4f} "
                f"(drop {md['final_drop_points']:.2f} points, target {md['target_points']}); "
                f"kept float: {', '.join(md['kept_float']) or 'none'}"
            )
        return "\n".join(lines)


def _resolve_model(model: str | os.PathLike[str]) -> Path:
    path = Path(model)
    if not path.is_file():
        raise TrtqError(f"model not found: {path}")
    if path.suffix.lower() == ".pt":
        from trtq.export import export_onnx

        return Path(export_onnx(path))
    if path.suffix.lower() != ".onnx":
        raise TrtqError(f"{path}: quantize takes an ONNX model (or an ultralytics .pt, exported first)")
    return path


def report_paths(output: Path) -> tuple[Path, Path]:
    stem = output.name[: -len(".onnx")] if output.name.endswith(".onnx") else output.name
    return output.with_name(f"{stem}.report.json"), output.with_name(f"{stem}.report.md")


def _unquantized_summary(model: onnx.ModelProto, plan: QdqPlan) -> dict[str, dict[str, Any]]:
    quantized_readers = {r for users in plan.activations.values() for r in users}
    weighted = {r for w, v in plan.weights.items() for r in plan.weight_readers.get(w) or [v[0]]}
    summary: dict[str, dict[str, Any]] = {}
    for node in model.graph.node:
        key = node_key(node)
        if key in plan.float_nodes or key in weighted or key in quantized_readers:
            continue
        entry = summary.setdefault(
            node.op_type,
            {"count": 0, "reason": _UNQUANTIZED_REASONS.get(node.op_type, "no Q/DQ needed: not a weighted op")},
        )
        entry["count"] += 1
    return summary


def _code_value(reason: str) -> str | None:
    code = reason_code(reason)
    return code.value if code is not None else None


def build_report(
    *,
    model_path: Path,
    output: Path,
    model: onnx.ModelProto,
    qmodel: onnx.ModelProto,
    plan: QdqPlan,
    calibrated: Mapping[str, float],
    used: Mapping[str, float],
    chosen: Mapping[str, str],
    algo: str,
    percentile: float | None,
    options: Mapping[str, Any],
    calibration: Mapping[str, Any],
    task: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    from onnx import numpy_helper

    from trtq.modelinfo import model_sha256
    from trtq.precision import is_float16

    inits = {i.name: i for i in model.graph.initializer}
    op_of = {node_key(n): n.op_type for n in model.graph.node}
    group_of = {t: i for i, g in enumerate(plan.concat_groups) for t in g}
    acts = []
    for t, readers in plan.activations.items():
        acts.append(
            {
                "tensor": t,
                "amax": used[t],
                "scale": used[t] / QMAX,
                "calibrated_amax": calibrated[t],
                "algorithm": chosen.get(t, algo),
                "concat_group": group_of.get(t),
                "readers": list(readers),
            }
        )
    weights = []
    for w, (node, axis) in plan.weights.items():
        arr = numpy_helper.to_array(inits[w]).astype(np.float32)
        per = options.get("per_channel", True) and arr.ndim > 1
        if per:
            red = tuple(i for i in range(arr.ndim) if i != axis)
            amax_c = np.max(np.abs(arr), axis=red)
        else:
            amax_c = np.array([np.max(np.abs(arr))])
        weights.append(
            {
                "initializer": w,
                "node": node,
                "axis": axis if per else None,
                "channels": int(amax_c.size),
                "amax_min": float(amax_c.min()),
                "amax_max": float(amax_c.max()),
            }
        )
    floats = [
        {
            "node": n,
            "op_type": op_of.get(n, "?"),
            "reason": str(r),
            "code": _code_value(r),  # None: a user exclusion or another non-policy reason
            "branch": getattr(getattr(r, "branch", None), "value", None),
        }
        for n, r in plan.float_nodes.items()
    ]
    weighted_float = [f for f in floats if f["op_type"] in ("Conv", "ConvTranspose", "Gemm", "MatMul")]
    source_opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    target_opset = next((o.version for o in qmodel.opset_import if o.domain in ("", "ai.onnx")), None)
    return {
        "kind": "trtq-qdq-report",
        "target": "tensorrt",
        "trtq_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": str(model_path),
        "model_sha256": model_sha256(model_path),
        "output": str(output),
        "algorithm": algo,
        "percentile": percentile,
        "options": dict(options),
        "calibration": dict(calibration),
        "opset": target_opset,
        "source_opset": source_opset,
        "float_dtype": "float16" if is_float16(model) else "float32",
        "task": dict(task) if task else None,
        "counts": {
            "quantized_activations": len(acts),
            "quantized_weights": len(weights),
            "float_nodes": len(floats),
            "float_weighted_ops": len(weighted_float),
            "residual_adds": len(plan.residual_adds),
            "concat_groups": len(plan.concat_groups),
            **qdq_summary(qmodel),
        },
        "quantized_activations": acts,
        "quantized_weights": weights,
        "float_nodes": floats,
        "head_branches": branch_summary(plan.float_nodes, op_of),
        "residual_adds": [{"node": n, "shortcut": t} for n, t in plan.residual_adds.items()],
        "concat_groups": plan.concat_groups,
        "unquantized_ops": _unquantized_summary(model, plan),
    }


def report_markdown(report: Mapping[str, Any]) -> str:
    """The report as readable Markdown tables."""
    c = report["counts"]
    opts = report["options"]
    lines = [
        f"# INT8 Q/DQ report: {Path(report['output']).name}",
        "",
        f"- model: `{report['model']}` (sha256 {report['model_sha256'][:12]})",
        f"- algorithm: {report['algorithm']}"
        + (f" (percentile {report['percentile']})" if report["algorithm"] in ("percentile", "auto") else ""),
        f"- calibration: {report['calibration'].get('num_images', '?')} images from `{report['calibration'].get('source', '?')}`",
        "- options: " + ", ".join(f"{k}={v}" for k, v in opts.items()),
        *_model_lines(report),
        f"- {c['quantized_activations']} activation tensors (per tensor), {c['quantized_weights']} weights (per channel), "
        f"{c['float_weighted_ops']} weighted ops in float, {c['residual_adds']} residual Adds, {c['concat_groups']} Concat scale groups",
        "",
        "## Quantized activations",
        "",
        "| tensor | amax | scale | calibrated amax | algorithm | concat group | read by |",
        "|---|---:|---:|---:|---|---:|---|",
    ]
    for a in report["quantized_activations"]:
        group = "" if a["concat_group"] is None else str(a["concat_group"])
        lines.append(
            f"| `{a['tensor']}` | {a['amax']:.5g} | {a['scale']:.5g} | {a['calibrated_amax']:.5g} | {a['algorithm']} | "
            f"{group} | {', '.join(f'`{r}`' for r in a['readers'])} |"
        )
    lines += ["", "## Quantized weights (per output channel)", "", "| weight | node | axis | channels | amax min | amax max |", "|---|---|---:|---:|---:|---:|"]
    for w in report["quantized_weights"]:
        lines.append(
            f"| `{w['initializer']}` | `{w['node']}` | {w['axis']} | {w['channels']} | {w['amax_min']:.4g} | {w['amax_max']:.4g} |"
        )
    if report.get("head_branches"):
        lines += ["", "## What stayed float, per head branch", "", "| branch | nodes | ops | reason |", "|---|---:|---|---|"]
        for b in report["head_branches"]:
            ops = ", ".join(f"{k} x{v}" for k, v in b["ops"].items())
            lines.append(f"| {b['branch']} | {b['nodes']} | {ops} | {b['reason']} |")
    lines += ["", "## Nodes kept in float", "", "| node | op | reason |", "|---|---|---|"]
    for f in report["float_nodes"]:
        lines.append(f"| `{f['node']}` | {f['op_type']} | {f['reason']} |")
    if not report["float_nodes"]:
        lines.append("| (none) | | no head policy match and no exclusion: every weighted op is INT8 |")
    lines += ["", "## Other nodes without Q/DQ", "", "| op | count | why no Q/DQ |", "|---|---:|---|"]
    for op, v in report["unquantized_ops"].items():
        lines.append(f"| {op} | {v['count']} | {v['reason']} |")
    md = report.get("max_drop")
    if md:
        lines += [
            "",
            "## Accuracy-driven mixed precision",
            "",
            f"FP32 mAP50-95 {md['fp32_map50_95']:.4f}; all-INT8 {md['initial_map50_95']:.4f}; "
            f"final {md['final_map50_95']:.4f} (drop {md['final_drop_points']:.2f} points, target <= {md['target_points']}).",
            "",
            "| step | kept float | mAP50-95 | drop (points) |",
            "|---:|---|---:|---:|",
        ]
        for i, s in enumerate(md["steps"]):
            lines.append(f"| {i} | {', '.join(f'`{n}`' for n in s['kept_float']) or '-'} | {s['map50_95']:.4f} | {s['drop_points']:.2f} |")
    return "\n".join(lines) + "\n"


def _model_lines(report: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    task = report.get("task")
    if task:
        head = "end-to-end" if task.get("end2end") else "grid"
        lines.append(f"- task: {task['task']}, {task['nc']} classes, {head} head")
    src, dst = report.get("source_opset"), report.get("opset")
    if src is not None and dst is not None and src != dst:
        why = "FP16 Q/DQ needs opset 19" if report.get("float_dtype") == "float16" else "per-channel Q/DQ needs opset 13"
        lines.append(f"- opset: the model's opset {src} was upgraded to {dst} with onnx's version converter ({why})")
    if report.get("float_dtype") == "float16":
        lines.append("- FP16 model: statistics collected in float32; Q/DQ scales in float16")
    return lines


def _save_model(qmodel: onnx.ModelProto, output: Path) -> None:
    onnxgraph.topological_sort(qmodel.graph)  # converters may leave nodes after their readers
    try:
        onnx.checker.check_model(qmodel)
    except onnx.checker.ValidationError as exc:  # a bug in trtq, not a user error
        raise RuntimeError(f"the Q/DQ model does not pass onnx.checker: {str(exc).splitlines()[0]}") from exc
    with atomic_path(output, suffix=".onnx") as tmp:
        onnx.save(qmodel, str(tmp))


def _set_metadata(qmodel: onnx.ModelProto, items: Mapping[str, str]) -> None:
    existing = {p.key: p for p in qmodel.metadata_props}
    for k, v in items.items():
        if k in existing:
            existing[k].value = v
        else:
            p = qmodel.metadata_props.add()
            p.key, p.value = k, v


def write_qdq(
    model_path: str | os.PathLike[str],
    amax: Mapping[str, float],
    options: QuantizeOptions | None = None,
    *,
    output: str | os.PathLike[str] | None = None,
    chosen: Mapping[str, str] | None = None,
    keep_float: Mapping[str, str] | None = None,
    calibration: Mapping[str, Any] | None = None,
    write_report: bool = True,
) -> QuantizeResult:
    """Place Q/DQ with ranges ``amax`` and write the model (+ report). No calibration here.

    ``options`` gives the layout and, as ``algo``/``percentile``, what the ranges were computed with (for
    the report and metadata); ``chosen`` is ``auto``'s pick per tensor.
    """
    opts = _checked(options)
    algo = opts.algorithm
    mpath = Path(model_path)
    model = onnx.load(str(mpath))
    layout = _layout_or_none(mpath)
    keep: dict[str, str] = head_keep_float(model, quantize_head=opts.quantize_head) if opts.head_policy else {}
    keep.update(keep_float or {})
    plan = plan_qdq(model, keep_float=keep, exclude=opts.exclude, residual_add=opts.residual_add)
    qmodel, used = insert_qdq(
        model, plan, amax, per_channel=opts.per_channel, unify_concat=opts.unify_concat, int8_weights=opts.int8_weights
    )
    out = Path(output) if output is not None else default_output(mpath, ".int8.qdq.onnx")
    meta: dict[str, str] = {"trtq_quantization": "int8-qdq", "trtq_target": "tensorrt", "trtq_algorithm": algo, "trtq_version": __version__}
    if layout is not None and layout.inferred and not any(p.key == "task" for p in model.metadata_props):
        # the model had no ultralytics metadata: record the layout told from its graph, so readers decode it right
        meta["task"] = layout.task
        if layout.kpt_shape:
            meta["kpt_shape"] = str(list(layout.kpt_shape))
        logger.info("no task metadata in %s: recorded task=%s in the Q/DQ model", mpath.name, layout.task)
    _set_metadata(qmodel, meta)
    _save_model(qmodel, out)
    report = build_report(
        model_path=mpath,
        output=out,
        model=model,
        qmodel=qmodel,
        plan=plan,
        calibrated={t: float(amax[t]) for t in plan.activations},
        used=used,
        chosen=chosen or {},
        algo=algo,
        percentile=opts.percentile if algo in ("percentile", "auto") else None,
        options=opts.report_options(),
        calibration=calibration or {},
        task=_layout_dict(layout),
    )
    json_path, md_path = report_paths(out)
    if write_report:
        write_json(json_path, report)
        write_text(md_path, report_markdown(report))
    return QuantizeResult(out, report, json_path, md_path, dict(used), plan)


def _layout_or_none(path: Path) -> Any:
    from trtq.modelinfo import check_model, read_model_info

    return check_model(read_model_info(path, with_hash=False))


def _layout_dict(layout: Any) -> dict[str, Any] | None:
    if layout is None:
        return None
    return {"task": layout.task, "nc": layout.nc, "end2end": layout.end2end, "kpt_shape": layout.kpt_shape, "nm": layout.nm}


def _checked(options: QuantizeOptions | None) -> QuantizeOptions:
    """``options`` (default: all defaults) validated, for the tensorrt layout."""
    opts = options if options is not None else QuantizeOptions()
    opts.validate()
    if opts.target != TARGET_TENSORRT:
        raise TrtqError(f"these options are for --target {opts.target}: "
                        "quantize them with trtq.cpu_target.quantize_cpu")
    return opts


def quantize(
    model: str | os.PathLike[str],
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None,
    options: QuantizeOptions | None = None,
    *,
    output: str | os.PathLike[str] | None = None,
    histograms: Mapping[str, Any] | None = None,
) -> QuantizeResult:
    """Calibrate ``model`` on ``source`` and write an explicit Q/DQ INT8 ONNX.

    ``options`` (:class:`QuantizeOptions`, target tensorrt) holds every choice. Its ``cache`` (a
    :class:`calibrators.table.CalibrationTable` or the path of a saved cache) supplies the ranges instead of
    calibrating; a saved cache made from another model is refused unless ``force_cache`` (a table object is
    taken as the caller's checked choice); ``histograms`` (from :func:`collect_statistics` or a calibration
    run) skip the image pass and take precedence over the cache (ranges are then computed with the
    options' algorithm). ``max_drop`` (mAP50-95 points) with ``data`` keeps the most sensitive layers in
    float until the INT8 model is within ``max_drop`` of FP32.
    """
    t0 = time.perf_counter()
    opts = _checked(options)
    mpath = _resolve_model(model)
    from trtq.modelinfo import check_model, read_model_info

    info = read_model_info(mpath)
    check_model(info)  # refuses what trtq cannot decode before any work
    fmodel = onnx.load(str(mpath))
    keep = head_keep_float(fmodel, quantize_head=opts.quantize_head) if opts.head_policy else {}
    plan = plan_qdq(fmodel, keep_float=keep, exclude=opts.exclude, residual_add=opts.residual_add)
    # statistics for every tensor that any layer could quantize (max-drop re-plans without re-calibrating)
    tensors = plan.activation_tensors
    chosen: dict[str, str] = {}
    if opts.cache is not None and histograms is None:
        amax, opts, calibration = _table_ranges(opts, info.sha256, tensors)
    else:
        if histograms is None:
            if source is None:
                raise TrtqError("quantize needs calibration images: pass --calib DIR (or a calibration table)")
            histograms, batcher = collect_statistics(mpath, source, tensors, num_images=opts.num_images,
                                                     batch=opts.batch, seed=opts.seed, progress=opts.progress)
            calibration = calibration_record(source, batcher, opts.seed)
        else:
            calibration = {"source": str(source) if source is not None else "precomputed histograms"}
        amax, chosen = activation_amax(histograms, tensors, opts.algorithm, percentile=opts.percentile,
                                       graph_inputs=[i.name for i in fmodel.graph.input])
    out = Path(output) if output is not None else default_output(mpath, ".int8.qdq.onnx")
    written = {"output": out, "chosen": chosen, "calibration": calibration}
    result = write_qdq(mpath, amax, opts, **written)
    if opts.max_drop is not None:
        result = keep_sensitive_float(mpath, result, amax, opts, source=source, write_kwargs=written)
    result.seconds = time.perf_counter() - t0
    logger.info("quantized %s in %.1f s", mpath.name, result.seconds)
    return result


def _table_ranges(
    opts: QuantizeOptions, model_sha256: str | None, tensors: Sequence[str]
) -> tuple[dict[str, float], QuantizeOptions, dict[str, Any]]:
    """The ranges of ``opts.cache``, the options with the table's algorithm, and the calibration record."""
    from calibrators.table import CalibrationTable

    table = opts.cache
    if isinstance(table, CalibrationTable):
        tab = table  # the caller's own (already checked) table
    else:
        tab = CalibrationTable.load(table)
        diffs = tab.differences(model_sha256=model_sha256)
        if diffs and not opts.force_cache:
            raise TrtqError(
                f"calibration cache {table} was made for something else: {'; '.join(diffs)}. "
                "Recalibrate (pass --calib without this --cache) or pass --force-cache to use it anyway"
            )
        for d in diffs:
            logger.warning("calibration cache %s does not match this model (%s); using it anyway (--force-cache)",
                           table, d)
    missing = [t for t in tensors if t not in tab.amax]
    if missing:
        raise TrtqError(
            f"the calibration table has no range for {len(missing)} tensor(s) to quantize (first: {missing[0]!r}); "
            "it was made for another model or tensor set: recalibrate"
        )
    if opts.algorithm != tab.algorithm:
        logger.warning("using the calibration table's %s ranges (algorithm %s applies only when calibrating "
                       "from images)", tab.algorithm, opts.algorithm)
    percentile = tab.percentile if tab.percentile is not None else opts.percentile
    calibration = {"source": "calibration table", "num_images": tab.num_images, "images_sha256": tab.images_sha256}
    amax = {t: float(tab.amax[t]) for t in tensors}
    return amax, replace(opts, algo=tab.algorithm, percentile=percentile), calibration


def keep_sensitive_float(
    model_path: Path,
    result: Any,
    amax: Mapping[str, float],
    options: QuantizeOptions,
    *,
    source: Any,
    write_kwargs: Mapping[str, Any],
) -> Any:
    """Greedy mixed precision for ``quantize --max-drop``: returns the final :class:`QuantizeResult`."""
    from trtq.evaluate import evaluate
    from trtq.sensitivity import REASON_MAX_DROP, LayerCost, analyse

    data, max_drop = options.data, options.max_drop
    if data is None or max_drop is None:
        raise ValueError("keep_sensitive_float needs options with max_drop and data")
    fp32 = float(evaluate(model_path, data)["map50_95"])
    current = float(evaluate(current_file(result.path), data)["map50_95"])
    steps = [{"kept_float": [], "map50_95": current, "drop_points": (fp32 - current) * 100}]
    kept: list[str] = []
    ranking: list[LayerCost] = []
    if (fp32 - current) * 100 > max_drop:
        if source is None:
            raise TrtqError("--max-drop needs the calibration images (--calib) to rank the layers")
        ranking = analyse(model_path, source, amax=amax, num_images=options.sensitivity_images,
                          head_policy=options.head_policy).ranking
        for cost in ranking[:options.max_steps]:
            kept.append(cost.layer)
            keep = {name: REASON_MAX_DROP for name in kept}
            result = write_qdq(model_path, amax, options, keep_float=keep, **write_kwargs)
            current = float(evaluate(current_file(result.path), data)["map50_95"])
            steps.append({"kept_float": list(kept), "map50_95": current, "drop_points": (fp32 - current) * 100})
            logger.info("max-drop: %d layer(s) in float -> mAP50-95 %.4f (drop %.2f points)", len(kept), current, steps[-1]["drop_points"])
            if (fp32 - current) * 100 <= max_drop:
                break
        else:
            logger.warning("max-drop: still %.2f points below FP32 after %d layers in float", (fp32 - current) * 100, len(kept))
    result.report["max_drop"] = {
        "target_points": max_drop,
        "data": str(data),
        "fp32_map50_95": fp32,
        "initial_map50_95": steps[0]["map50_95"],
        "final_map50_95": current,
        "final_drop_points": (fp32 - current) * 100,
        "met": (fp32 - current) * 100 <= max_drop,
        "kept_float": kept,
        "ranking_top": [{"layer": c.layer, "cost": c.cost} for c in ranking[:options.max_steps]],
        "steps": steps,
    }
    write_json(result.report_path, result.report)
    write_text(result.markdown_path, report_markdown(result.report))
    return result
