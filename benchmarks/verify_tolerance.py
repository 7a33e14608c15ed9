"""Measure both sides of ``trtq verify``'s default tolerance on the shared YOLOv8n (ONNX Runtime, CPU).

Passing side: the Q/DQ ONNX against its own reference and against the FP32 ONNX's reference, and the
implicit-INT8 simulation against the FP32 reference. Failing side: copies of the Q/DQ ONNX with the
weights of one or three backbone convs set to zero, and of one conv inside a residual bottleneck (the
shortcut keeps most of the signal), against the Q/DQ and FP32 references.

    PYTHONPATH=. YOLO_OFFLINE=1 .venv/bin/python -m benchmarks.verify_tolerance [--work DIR] [--calib-images N]

Per task (``--tasks``, default detect segment pose obb): the YOLOv8n structures built from ultralytics'
yaml files with the shared COCO YOLOv8n weights transplanted (nc=80, as ``benchmarks/models.py``), their
INT8 Q/DQ ONNX (and, for detect, the CPU target) against the FP32 ONNX's reference, and tampered copies:
every final class conv's output channels reversed (wrong classes), every keypoint shifted by 64 px, the
mask-coefficient convs zeroed, the OBB angle offset by 10 and 30 degrees.

Writes ``benchmarks/results/verify_tolerance.json`` and ``.md`` and prints a table with the margins.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ASSETS = Path("/work/shared/assets")
MODEL = ASSETS / "models" / "yolov8n-coco.onnx"
CALIB = ASSETS / "coco128" / "images" / "train2017"
# backbone convs whose weights are zeroed (the stem conv and two C2f convs)
TAMPER_1 = ["/model.2/cv1/conv/Conv"]
TAMPER_3 = ["/model.1/conv/Conv", "/model.4/cv1/conv/Conv", "/model.6/cv2/conv/Conv"]
# one conv inside a residual bottleneck: the shortcut keeps most of the signal (the subtle case)
TAMPER_RESIDUAL = ["/model.6/m.1/cv2/conv/Conv"]


def tamper(src: Path, dst: Path, convs: list[str]) -> Path:
    """A copy of ``src`` with the weights of ``convs`` set to zero (Q/DQ weights: the float input of the
    weight's QuantizeLinear)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    done = 0
    for node in model.graph.node:
        if node.name not in convs:
            continue
        w = node.input[1]
        while w not in inits and w in producers:  # walk back through DequantizeLinear / QuantizeLinear
            w = producers[w].input[0]
        arr = numpy_helper.to_array(inits[w])
        inits[w].CopyFrom(numpy_helper.from_array(np.zeros_like(arr), w))
        done += 1
    if done != len(convs):
        raise SystemExit(f"found {done} of {len(convs)} convs in {src}")
    onnx.save(model, str(dst))
    return dst


def _weight_path(model: Any, node: Any) -> tuple[list[str], str | None]:
    """The float initializers that make ``node``'s weight (through DequantizeLinear: the quantized weight,
    its per-channel scale and zero point) and its bias."""
    inits = {i.name for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    names: list[str] = []
    w = node.input[1]
    while w not in inits and w in producers:
        prod = producers[w]
        names += [i for i in prod.input[1:] if i in inits]  # scales / zero points
        w = prod.input[0]
    names.append(w)
    bias = node.input[2] if len(node.input) > 2 and node.input[2] in inits else None
    return names, bias


def _final_convs(model: Any, branch: str) -> list[Any]:
    from trtq.headpolicy import Reason, head_policy

    policy = head_policy(model)
    keys = {k for k, r in policy.items() if r.code is Reason.FINAL_CONV and r.branch is not None
            and r.branch.value == branch}
    from trtq.headpolicy import node_key

    found = [n for n in model.graph.node if node_key(n) in keys]
    if not found:
        raise SystemExit(f"no final {branch} conv found")
    return found


def reverse_channels(src: Path, dst: Path, branch: str = "class") -> Path:
    """A copy of ``src`` with the output channels of every final conv of ``branch`` reversed (class ``c`` of
    ``nc`` becomes ``nc - 1 - c``): weights, bias and any per-channel scale."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    for node in _final_convs(model, branch):
        names, bias = _weight_path(model, node)
        for name in [*names, *([bias] if bias else [])]:
            arr = numpy_helper.to_array(inits[name])
            if arr.ndim >= 1 and arr.shape[0] > 1:
                inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr[::-1]), name))
    onnx.save(model, str(dst))
    return dst


def zero_branch(src: Path, dst: Path, branch: str) -> Path:
    """A copy of ``src`` with the weights of every final conv of ``branch`` set to zero (the bias stays)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    for node in _final_convs(model, branch):
        names, _ = _weight_path(model, node)
        w = names[-1]
        inits[w].CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(inits[w])), w))
    onnx.save(model, str(dst))
    return dst


def offset_rows(src: Path, dst: Path, rows: list[int], value: float) -> Path:
    """A copy of ``src`` whose first output has ``value`` added to ``rows`` (channel axis 1): keypoint x/y
    rows shifted by some pixels, or the OBB angle row offset by some radians."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    out = model.graph.output[0]
    channels = out.type.tensor_type.shape.dim[1].dim_value
    delta = np.zeros((1, channels, 1), dtype=np.float32)
    delta[0, rows, 0] = value
    raw = out.name + "_before_offset"
    for node in model.graph.node:
        node.output[:] = [raw if o == out.name else o for o in node.output]
        node.input[:] = [raw if i == out.name else i for i in node.input]
    model.graph.initializer.append(numpy_helper.from_array(delta, "tamper_delta"))
    model.graph.node.append(helper.make_node("Add", [raw, "tamper_delta"], [out.name], name="tamper_offset"))
    onnx.save(model, str(dst))
    return dst


def _run_bytes(model: bytes, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    from trtq.fidelity import output_names, run_onnx

    names = output_names(MODEL)
    return [dict(zip(names, outs, strict=True)) for outs in run_onnx(model, feeds)]


def _row(label: str, res: dict[str, Any], task: str = "detect") -> dict[str, Any]:
    name, out = next(iter(res["outputs"].items()))
    d = res.get("detections") or {}
    row = {"task": task, "case": label, "cosine": out["cosine"], "sqnr_db": out["sqnr_db"],
           "max_abs_error": out["max_abs_error"], "recall": d.get("recall"), "precision": d.get("precision"),
           "mean_iou": d.get("mean_iou"), "class_agreement": d.get("class_agreement"),
           "reference_detections": d.get("reference"), "passed": res["passed"]}
    for key in ("oks", "keypoint_px", "mask_iou", "angle_deg"):
        if key in d:
            row[key] = d[key]
    for other, e in list(res["outputs"].items())[1:]:
        row[f"{other}_sqnr_db"] = e["sqnr_db"]
    return row


def main() -> None:
    import onnx

    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--calib-images", type=int, default=64)
    ap.add_argument("--ref-images", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--output", type=Path, default=Path("benchmarks/results/verify_tolerance.json"))
    ap.add_argument("--tasks", nargs="*", default=["detect", "segment", "pose", "obb"])
    ap.add_argument("--task-calib-images", type=int, default=32)
    ap.add_argument("--imgsz", type=int, default=640)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from calibrators.calibrate import calibrate
    from calibrators.table import CalibrationTable
    from trtq.agreement import DEFAULT_TOLERANCE, compare_outputs
    from trtq.quantize import quantize
    from trtq.quantize_options import QuantizeOptions
    from trtq.reference import load_inputs, load_outputs, simulate_implicit, write_reference
    from trtq.verify import run_artifact

    work = args.work or Path(tempfile.mkdtemp(prefix="trtq-verify-tol-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "yolov8n.percentile.cache"
    if not cache.is_file():
        calibrate(MODEL, str(CALIB), algo="percentile", num_images=args.calib_images, batch=1, seed=0,
                  output=cache, progress=False)
    table = CalibrationTable.load(cache)
    qdq = work / "yolov8n.int8.onnx"
    if not qdq.is_file():
        quantize(MODEL, str(CALIB), QuantizeOptions(cache=table, progress=False), output=qdq)
    # references on images the calibration did not see first (another seed)
    kw = {"num_images": args.ref_images, "seed": args.seed}
    ref_qdq = write_reference(qdq, str(CALIB), **kw)
    ref_fp32 = write_reference(MODEL, str(CALIB), artifact=work / "yolov8n.fp32.onnx", **kw)
    t1 = tamper(qdq, work / "yolov8n.int8.tampered1.onnx", TAMPER_1)
    t3 = tamper(qdq, work / "yolov8n.int8.tampered3.onnx", TAMPER_3)
    tr = tamper(qdq, work / "yolov8n.int8.tampered-residual.onnx", TAMPER_RESIDUAL)

    # each reference writer picks images where its model finds something: compare on one set of inputs,
    # the FP32 reference's
    own_feeds = load_inputs(ref_qdq.inputs_path)
    own_ref, _ = load_outputs(ref_qdq.outputs_path)
    own_out, _ = run_artifact(qdq, own_feeds)
    feeds = load_inputs(ref_fp32.inputs_path)
    fp32_ref, _ = load_outputs(ref_fp32.outputs_path)
    qdq_ref, _ = run_artifact(qdq, feeds)  # the Q/DQ model's outputs on these images: its reference
    sim_ref = _run_bytes(simulate_implicit(onnx.load(str(MODEL)), table).SerializeToString(), feeds)
    t1_out, _ = run_artifact(t1, feeds)
    t3_out, _ = run_artifact(t3, feeds)
    tr_out, _ = run_artifact(tr, feeds)
    rows = [
        _row("Q/DQ ONNX vs its own reference", compare_outputs(own_ref, own_out)),
        _row("Q/DQ ONNX vs FP32 ONNX reference", compare_outputs(fp32_ref, qdq_ref)),
        _row("implicit simulation vs FP32 reference", compare_outputs(fp32_ref, sim_ref)),
        _row("Q/DQ reference vs implicit simulation", compare_outputs(qdq_ref, sim_ref)),
        _row("Q/DQ, 1 backbone conv zeroed vs Q/DQ ref", compare_outputs(qdq_ref, t1_out)),
        _row("Q/DQ, 3 backbone convs zeroed vs Q/DQ ref", compare_outputs(qdq_ref, t3_out)),
        _row("Q/DQ, 1 backbone conv zeroed vs FP32 ref", compare_outputs(fp32_ref, t1_out)),
        _row("Q/DQ, 3 backbone convs zeroed vs FP32 ref", compare_outputs(fp32_ref, t3_out)),
        _row("Q/DQ, 1 residual bottleneck conv zeroed", compare_outputs(qdq_ref, tr_out)),
    ]
    rows += [r for task in args.tasks for r in task_rows(task, work, args)]
    tol = DEFAULT_TOLERANCE
    for r in rows:
        print(_fmt_row(r))
    base = [r for r in rows if r["task"] == "detect" and "task" not in r["case"]]
    good = [r for r in base if "zeroed" not in r["case"]]
    bad = [r for r in base if "zeroed" in r["case"]]
    margins = {
        "sqnr_db_pass_margin": min(r["sqnr_db"] for r in good) - tol.snr_db,
        # the residual bottleneck row is caught by recall alone (its SQNR stays at the threshold)
        "sqnr_db_fail_margin": tol.snr_db - max(r["sqnr_db"] for r in bad if "backbone" in r["case"]),
        "recall_pass_margin": min(r["recall"] for r in good) - tol.recall,
        "recall_fail_margin": tol.recall - max(r["recall"] for r in bad),
        "precision_pass_margin": min(r["precision"] for r in good) - tol.precision,
        "cosine_pass_margin": min(r["cosine"] for r in good) - tol.cosine,
        "cosine_fail_margin": tol.cosine - max(r["cosine"] for r in bad if "backbone" in r["case"]),
        **task_margins(rows, tol),
    }
    print("tolerance", tol.to_dict())
    print("margins", {k: round(v, 4) for k, v in margins.items()})
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").is_file() else []
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"tolerance": tol.to_dict(), "rows": rows, "margins": margins,
                                       "calib_images": args.calib_images, "ref_images": args.ref_images,
                                       "task_calib_images": args.task_calib_images, "imgsz": args.imgsz,
                                       "seed": args.seed, "loadavg": load}, indent=2, default=str) + "\n")
    args.output.with_suffix(".md").write_text("\n".join(_markdown(rows, margins, tol, _machine(load))) + "\n")


GOOD = ("INT8 Q/DQ vs FP32 reference", "CPU target vs FP32 reference")


def task_rows(task: str, work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The INT8 model of ``task`` (and, for detect, the CPU target) and its tampered copies, all against the
    FP32 ONNX's reference."""
    from trtq.agreement import compare_outputs
    from trtq.modelinfo import check_model, read_model_info
    from trtq.quantize import quantize
    from trtq.quantize_options import QuantizeOptions
    from trtq.reference import load_inputs, load_outputs, write_reference
    from trtq.verify import run_artifact
    from trtq.zoo import build_onnx

    suffix = {"detect": "", "segment": "-seg", "pose": "-pose", "obb": "-obb"}[task]
    fp32 = work / f"task-{task}.onnx"
    if not fp32.is_file():
        build_onnx(f"yolov8n{suffix}.yaml", fp32, weights=ASSETS / "models" / "yolov8n-coco.pt", nc=80,
                   imgsz=args.imgsz)
    layout = check_model(read_model_info(fp32, with_hash=False))
    assert layout is not None
    qdq = work / f"task-{task}.int8.onnx"
    if not qdq.is_file():
        quantize(fp32, str(CALIB), QuantizeOptions(num_images=args.task_calib_images, progress=False), output=qdq)
    ref = write_reference(fp32, str(CALIB), artifact=work / f"task-{task}.fp32.onnx", num_images=args.ref_images,
                          seed=args.seed)
    feeds = load_inputs(ref.inputs_path)
    expected, _ = load_outputs(ref.outputs_path)
    nc = layout.nc
    copies: list[tuple[str, Path]] = [(GOOD[0], qdq),
                                      ("task: classes reversed", reverse_channels(qdq, work / f"task-{task}.cls.onnx"))]
    if task == "detect":
        from trtq.cpu_target import quantize_cpu

        cpu = work / "task-detect.cpu.onnx"
        if not cpu.is_file():
            # 7-bit weights: exact on CPUs without VNNI too
            options = QuantizeOptions(target="cpu", num_images=args.task_calib_images, reduce_range=True, progress=False)
            quantize_cpu(fp32, str(CALIB), options, output=cpu)
        copies += [(GOOD[1], cpu), ("task: CPU target, classes reversed",
                                    reverse_channels(cpu, work / "task-detect.cpu.cls.onnx"))]
    if task == "pose":
        assert layout.kpt_shape is not None
        k, d = layout.kpt_shape
        xy = [4 + nc + d * i + j for i in range(k) for j in (0, 1)]
        copies.append(("task: keypoints shifted 64 px", offset_rows(qdq, work / "task-pose.kpt.onnx", xy, 64.0)))
    if task == "segment":
        copies.append(("task: mask-coefficient convs zeroed",
                       zero_branch(qdq, work / "task-seg.mask.onnx", "mask-coefficient")))
    if task == "obb":
        for deg in (10, 30):
            copies.append((f"task: angle offset {deg} deg",
                           offset_rows(qdq, work / f"task-obb.angle{deg}.onnx", [4 + nc], float(np.radians(deg)))))
    rows = []
    for label, path in copies:
        got, _ = run_artifact(path, feeds)
        rows.append(_row(label, compare_outputs(expected, got, layout=layout), task))
        print(_fmt_row(rows[-1]), flush=True)
    return rows


def task_margins(rows: list[dict[str, Any]], tol: Any) -> dict[str, float]:
    """Distance of each task threshold from the worst good model and the best tampered copy of that kind."""
    good = [r for r in rows if r["case"] in GOOD]
    out: dict[str, float] = {}
    cls_bad = [r for r in rows if "classes reversed" in r["case"]]
    if good:
        out["class_agreement_pass_margin"] = min(r["class_agreement"] for r in good) - tol.class_agreement
    if cls_bad:
        out["class_agreement_fail_margin"] = tol.class_agreement - max(r["class_agreement"] for r in cls_bad)
        out["classes_reversed_recall_fail_margin"] = tol.recall - max(r["recall"] for r in cls_bad)
    for key, kind, higher in (("oks", "keypoints shifted", True), ("mask_iou", "mask-coefficient", True),
                              ("angle_deg", "angle offset", False)):
        ok = [r[key] for r in good if r.get(key) is not None]
        bad = [r[key] for r in rows if kind in r["case"] and r.get(key) is not None]
        limit = getattr(tol, key)
        if ok:
            out[f"{key}_pass_margin"] = (min(ok) - limit) if higher else (limit - max(ok))
        if bad:
            out[f"{key}_fail_margin"] = (limit - max(bad)) if higher else (min(bad) - limit)
    return out


def _fmt(v: Any, spec: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return format(v, spec)


def _fmt_row(r: dict[str, Any]) -> str:
    extra = " ".join(f"{k}={_fmt(r[k], '.3f')}" for k in ("class_agreement", "oks", "keypoint_px", "mask_iou",
                                                          "angle_deg") if r.get(k) is not None)
    return (f"{r['task']:8s} {r['case'][:44]:44s} {_fmt(r['cosine'], '9.6f')} {_fmt(r['sqnr_db'], '8.2f')} "
            f"{_fmt(r['recall'], '7.3f')} {_fmt(r['precision'], '6.3f')} refs={r.get('reference_detections')} "
            f"{extra} {'pass' if r['passed'] else 'FAIL'}")


def _machine(load: list[str]) -> str:
    """The CPU (name and its VNNI flags) and the load average when the run ended."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "unknown")
    vnni = sorted({f for f in ("avx512_vnni", "avx_vnni") if f" {f}" in info}) or ["no VNNI"]
    return f"{name} ({', '.join(vnni)}); load average {' '.join(load)} (shared machine)"


def _markdown(rows: list[dict[str, Any]], margins: dict[str, float], tol: Any, machine: str) -> list[str]:
    lines = ["# trtq verify: both sides of the default tolerance", "",
             "`PYTHONPATH=. YOLO_OFFLINE=1 .venv/bin/python -m benchmarks.verify_tolerance` (ONNX Runtime, CPU; "
             "8 seeded coco128 images preferring ones with detections).", "", f"Machine: {machine}.", "",
             "| task | case | cosine | SQNR dB | recall | precision | class agr. | OKS | kpt px | mask IoU | angle deg | verdict |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        vals = [_fmt(r["cosine"], ".4f"), _fmt(r["sqnr_db"], ".2f"), _fmt(r["recall"], ".3f"),
                _fmt(r["precision"], ".3f"), _fmt(r.get("class_agreement"), ".3f"), _fmt(r.get("oks"), ".3f"),
                _fmt(r.get("keypoint_px"), ".1f"), _fmt(r.get("mask_iou"), ".3f"), _fmt(r.get("angle_deg"), ".2f")]
        lines.append(f"| {r['task']} | {r['case']} | {' | '.join(vals)} | {'pass' if r['passed'] else 'FAIL'} |")
    lines += ["", f"Tolerance: `{tol.to_dict()}`", "", "Margins (positive: on the right side of the threshold):", ""]
    lines += [f"- {k}: {v:.4f}" for k, v in margins.items()]
    return lines


if __name__ == "__main__":
    main()
