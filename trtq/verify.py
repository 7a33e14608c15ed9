"""Does an engine (or ONNX) keep the CPU's promise? Compare it with the reference outputs.

The comparison is :func:`trtq.agreement.compare_outputs`, the one comparison path for the whole project
(``trtq verify``, the check after ``trtq build``, and ``trtq compare``): per-output cosine and SQNR from
Polygraphy's comparators, and detection agreement for YOLO head outputs.

A model passes when every output reaches :class:`Tolerance`'s cosine and SQNR and the detections reach its
recall, precision, class agreement and the task's own thresholds (keypoint OKS, mask IoU, angle error).
The defaults were measured on YOLOv8n (COCO, 8 coco128 images): see :class:`Tolerance`. A verification
that cannot compare (references of another model or a mixed set, an output missing, another shape) is a
failure, not a verification that did not run.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from trtq.agreement import DEFAULT_TOLERANCE, ReferenceMismatch, Tolerance, compare_outputs
from trtq.errors import TrtqError
from trtq.reference import Reference, load_inputs, load_outputs, reference_paths
from trtq.tasks import TaskLayout

log = logging.getLogger(__name__)

EXIT_VERIFY_FAILED = 1
STATUS_PASSED = "passed"
STATUS_FAILED = "failed"
STATUS_NOT_RUN = "not run"


# ---------------------------------------------------------------------------------------------------------------
# running an artefact
# ---------------------------------------------------------------------------------------------------------------
def _run_onnx(path: Path, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    from trtq.cpuisa import is_cpu_target
    from trtq.ort import ort_session

    # a TensorRT Q/DQ ONNX is simulated exactly; a CPU-target model runs on this CPU's own integer kernels
    sess = ort_session(path, ["CPUExecutionProvider"], exact_qdq=not is_cpu_target(path))
    types = {"tensor(float16)": np.float16, "tensor(float)": np.float32}
    inputs = {i.name: types.get(i.type) for i in sess.get_inputs()}
    names = [o.name for o in sess.get_outputs()]
    results = []
    for feed in feeds:
        missing = [n for n in inputs if n not in feed]
        if missing:
            raise ReferenceMismatch(f"the reference inputs have no {missing[0]!r} (they have {list(feed)}); "
                            f"they were made for another model than {path.name}")
        f = {n: np.asarray(feed[n], dtype=dt) if dt is not None else np.asarray(feed[n]) for n, dt in inputs.items()}
        try:
            outs = sess.run(names, f)
        except Exception as exc:
            raise ReferenceMismatch(f"ONNX Runtime cannot run {path.name} on the reference inputs: "
                            f"{str(exc).splitlines()[0][:200]}") from None
        results.append({n: np.asarray(o) for n, o in zip(names, outs, strict=True)})
    return results


def _run_engine(path: Path, feeds: Sequence[Mapping[str, np.ndarray]], device: int) -> list[dict[str, np.ndarray]]:
    from trtq.trt.session import TensorRTSession

    sess = TensorRTSession(path, device=device)
    try:
        results = []
        for feed in feeds:
            if sess.input_name not in feed:
                raise ReferenceMismatch(f"the reference inputs have no {sess.input_name!r} (they have {list(feed)}); "
                                f"they were made for another model than {path.name}")
            x = np.asarray(feed[sess.input_name])
            n = int(x.shape[0])
            buf = sess.input_buffer(n)
            if buf.shape != x.shape:
                raise ReferenceMismatch(f"reference input shape {list(x.shape)} does not fit {path.name} "
                                f"(input {list(buf.shape)})")
            buf[...] = x.astype(buf.dtype, copy=False)
            outs = sess.run(n)  # every output, in the engine's output order
            results.append({
                name: np.array(out, dtype=np.float32) for name, out in zip(sess.output_names, outs, strict=True)
            })
        return results
    finally:
        sess.close()


def run_artifact(
    path: str | os.PathLike[str], feeds: Sequence[Mapping[str, np.ndarray]], *, device: int = 0
) -> tuple[list[dict[str, np.ndarray]], str]:
    """Outputs of an engine (TensorRT) or ONNX (ONNX Runtime, CPU) for each feed dict, and the backend."""
    from trtq.modelinfo import model_kind

    p, kind = model_kind(Path(path))
    if kind == "onnx":
        return _run_onnx(p, feeds), "onnxruntime"
    return _run_engine(p, feeds, device), "tensorrt"


# ---------------------------------------------------------------------------------------------------------------
# verification
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Verification:
    """The verdict of one artefact against its reference."""

    artifact: Path
    reference: Reference
    backend: str
    tolerance: Tolerance
    outputs: dict[str, Any] = field(default_factory=dict)
    detections: dict[str, Any] | None = None
    passed: bool = False
    images: int = 0
    reference_runner: str = ""
    error: str = ""  # why the candidate could not be compared (a failure)

    @property
    def status(self) -> str:
        return STATUS_PASSED if self.passed else STATUS_FAILED

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "checked": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "backend": self.backend,
            "reference": {**self.reference.to_dict(), "runner": self.reference_runner, "images": self.images},
            "tolerance": self.tolerance.to_dict(),
            "outputs": self.outputs,
            "detections": self.detections,
            **({"error": self.error} if self.error else {}),
        }

    def table(self) -> str:
        return verification_table(self.to_dict(), artifact=str(self.artifact))


def _fmt_db(v: float) -> str:
    return "inf" if math.isinf(v) and v > 0 else f"{v:.2f}"


def verification_table(record: Mapping[str, Any], *, artifact: str = "") -> str:
    """The per-output table (and detection agreement) of a verification record."""
    tol = record.get("tolerance") or {}
    ref = record.get("reference") or {}
    lines = []
    if artifact:
        lines.append(f"{artifact} ({record.get('backend', '?')}) vs {ref.get('outputs', '?')}")
    lines.append(f"{'output':16s} {'cosine':>9s} {'SQNR dB':>8s} {'max|err|':>10s}  result")
    for name, e in (record.get("outputs") or {}).items():
        lines.append(f"{name[:16]:16s} {e['cosine']:9.6f} {_fmt_db(e['sqnr_db']):>8s} {e['max_abs_error']:10.4g}  "
                     f"{'ok' if e['passed'] else 'FAIL'}{' (judged by ' + e['judged_by'] + ')' if e.get('judged_by') else ''}")
    d = record.get("detections")
    if d:
        lines.append(
            f"detections (conf > {d['conf']}, IoU >= {d['match_iou']}, same class): reference {d['reference']}, "
            f"candidate {d['candidate']}, matched {d['matched']}; precision {d['precision']:.3f} recall "
            f"{d['recall']:.3f} mean IoU {d['mean_iou']:.3f} class agreement {d['class_agreement']:.3f}"
            f"{_task_text(d)}  {'ok' if d['passed'] else 'FAIL'}"
        )
    if record.get("error"):
        lines.append(f"error: {record['error']}")
    if tol:
        lines.append(f"tolerance: cosine >= {tol['cosine']}, SQNR >= {tol['snr_db']} dB, recall >= {tol['recall']}, "
                     f"precision >= {tol['precision']}, class agreement >= {tol.get('class_agreement')}, "
                     f"keypoint OKS >= {tol.get('oks')}, mask IoU >= {tol.get('mask_iou')}, "
                     f"angle error <= {tol.get('angle_deg')} deg")
    return "\n".join(lines)


def _task_text(d: Mapping[str, Any]) -> str:
    parts = []
    if d.get("oks") is not None:
        parts.append(f" keypoint OKS {d['oks']:.3f} ({d['keypoint_px']:.1f} px)")
    if d.get("mask_iou") is not None:
        parts.append(f" mask IoU {d['mask_iou']:.3f}")
    if d.get("angle_deg") is not None:
        parts.append(f" angle error {d['angle_deg']:.2f} deg")
    return ";".join(parts)


def _engine_record(path: Path) -> dict[str, Any] | None:
    from trtq.engine_meta import read_engine

    try:
        _, meta = read_engine(path)
    except TrtqError:
        return None
    if meta is None:
        return None
    return {"verification": dict(getattr(meta, "verification", {}) or {}), "model_path": meta.model_path}


def find_reference(artifact: str | os.PathLike[str]) -> Reference:
    """The references recorded for ``artifact``: in an engine's record, beside the artefact, or beside the
    ONNX the engine was built from."""
    p = Path(artifact)
    candidates: list[Reference] = []
    if p.suffix.lower() in (".engine", ".plan", ".trt") and p.is_file():
        record = _engine_record(p)
        if record is not None:
            recorded = (record["verification"] or {}).get("reference") or {}
            if recorded.get("inputs") and recorded.get("outputs"):
                ri, ro = Path(recorded["inputs"]), Path(recorded["outputs"])
                candidates.append(Reference(ri, ro))
                candidates.append(Reference(p.parent / ri.name, p.parent / ro.name))  # copied next to the engine
        candidates.append(reference_paths(p))
        if record is not None and record.get("model_path"):
            candidates.append(reference_paths(record["model_path"]))
    else:
        candidates.append(reference_paths(p))
    for ref in candidates:
        if ref.exists():
            return ref
    tried = candidates[0] if candidates else reference_paths(p)
    raise TrtqError(
        f"no reference recorded for {p.name} (looked for {tried.inputs_path.name} and {tried.outputs_path.name}); "
        "`trtq build` and `trtq quantize` write them beside their artefacts: pass --inputs FILE --outputs FILE"
    )


def _pair(inputs: str | os.PathLike[str] | None, outputs: str | os.PathLike[str] | None) -> Reference | None:
    from trtq.reference import INPUTS_SUFFIX, OUTPUTS_SUFFIX

    if inputs is None and outputs is None:
        return None
    if inputs is not None and outputs is not None:
        return Reference(Path(inputs), Path(outputs))
    given = Path(inputs or outputs or "")
    swap = (INPUTS_SUFFIX, OUTPUTS_SUFFIX) if inputs is not None else (OUTPUTS_SUFFIX, INPUTS_SUFFIX)
    if given.name.endswith(swap[0]):
        other = given.with_name(given.name[: -len(swap[0])] + swap[1])
        return Reference(given, other) if inputs is not None else Reference(other, given)
    raise TrtqError("pass both --inputs and --outputs (or files named *.ref-inputs.json / *.ref-outputs.json)")


def artifact_layout(path: Path, output_shapes: Sequence[Sequence[int | None]]) -> TaskLayout | None:
    """The task layout of an ONNX model (:func:`trtq.modelinfo.model_layout`, as quantize and the runtime
    read it) or engine (its record or header); None for outputs that are not a YOLO head. A head that could
    be several tasks is refused (:class:`trtq.tasks.AmbiguousLayout`), not decoded as a detector's."""
    from trtq.tasks import AmbiguousLayout, refuse_ambiguous, task_layout

    try:
        if path.suffix.lower() == ".onnx":
            from trtq.modelinfo import read_model_info

            return read_model_info(path, with_hash=False).layout_or_none
        from trtq.engine_meta import engine_model_metadata, read_engine, read_header

        _, meta = read_engine(path)
        metadata = engine_model_metadata(meta, read_header(path))
        layout = task_layout(metadata, [tuple(s) for s in output_shapes], source=path.name)
        return refuse_ambiguous(layout, metadata, path.name)
    except AmbiguousLayout:
        raise
    except TrtqError as exc:
        log.debug("no task layout for %s (%s): detections decoded as a plain detector's", path.name, exc)
        return None


def artifact_sha256(path: Path) -> str | None:
    """The hash references record for ``path``: an ONNX's own (:func:`trtq.modelinfo.model_sha256`), an
    engine's model hash from its record (the ONNX it was built from); None when unknown."""
    from trtq.modelinfo import model_sha256

    if path.suffix.lower() == ".onnx":
        return model_sha256(path)
    try:
        from trtq.engine_meta import read_engine

        _, meta = read_engine(path)
    except TrtqError:
        return None
    return (getattr(meta, "model_sha256", "") or None) if meta is not None else None


def check_reference_owner(artifact: Path, ref: Reference, *, strict: bool) -> str | None:
    """None when ``ref`` belongs to ``artifact`` (or cannot tell: no record, no model hash); else why not:
    another model's references, or files that differ from their record (a mixed or partly rewritten set).
    ``strict=False`` (references the user named) logs a mismatch and returns None."""
    from trtq.reference import ReferenceSetError, read_record

    try:
        record = read_record(ref, strict=strict)
    except ReferenceSetError as exc:
        return str(exc)
    if record is None:
        log.warning("%s has no record of the model it belongs to (%s): not checked", ref.outputs_path.name,
                    ref.record_path.name)
        return None
    want = artifact_sha256(artifact)
    if want is None or want == record.get("model_sha256"):
        return None
    text = (f"the references {ref.outputs_path.name} belong to {record.get('model', '?')} "
            f"(sha256 {str(record.get('model_sha256', ''))[:12]}), not to {artifact.name} (sha256 {want[:12]}): "
            "stale references; write them again (trtq quantize / trtq build --calib)")
    if not strict:
        log.warning("%s", text)
        return None
    return text


def verify(
    artifact: str | os.PathLike[str],
    *,
    inputs: str | os.PathLike[str] | None = None,
    outputs: str | os.PathLike[str] | None = None,
    tolerance: Tolerance | None = None,
    device: int = 0,
    strict: bool | None = None,
) -> Verification:
    """Run ``artifact`` (engine: TensorRT; ONNX / Q/DQ ONNX: ONNX Runtime CPU) on the reference inputs and
    compare with the reference outputs (found as :func:`find_reference` says unless given).

    References that belong to another model (their record's hash), or a candidate that cannot be compared
    with them (an output missing, another shape), give a failed verification with ``error`` set.
    ``strict`` (default: when the references were found, not given) makes another model's references a
    failure; otherwise a warning."""
    p = Path(artifact)
    if not p.is_file():
        raise TrtqError(f"artefact not found: {p}")
    given = _pair(inputs, outputs)
    ref = given or find_reference(p)
    tol = tolerance or DEFAULT_TOLERANCE
    feeds = load_inputs(ref.inputs_path)
    expected, runner = load_outputs(ref.outputs_path)
    images = sum(int(np.asarray(next(iter(f.values()))).shape[0]) for f in feeds)
    result = Verification(artifact=p, reference=ref, backend="", tolerance=tol, images=images,
                          reference_runner=runner)
    try:
        stale = check_reference_owner(p, ref, strict=given is None if strict is None else strict)
        if stale is not None:
            raise ReferenceMismatch(stale)
        if len(expected) != len(feeds):
            raise ReferenceMismatch(f"{ref.outputs_path.name} holds {len(expected)} iterations but "
                                    f"{ref.inputs_path.name} {len(feeds)} feed dicts; pass the outputs recorded "
                                    "for these inputs")
        got, result.backend = run_artifact(p, feeds, device=device)
        names = list(expected[0])  # every reference output: one the candidate lacks is a failure
        layout = artifact_layout(p, [np.asarray(expected[0][n]).shape for n in names])
        compared = compare_outputs(expected, got, names=names, tolerance=tol, layout=layout)
    except ReferenceMismatch as exc:
        result.error = str(exc).splitlines()[0]
        return result
    result.outputs = compared["outputs"]
    result.detections = compared.get("detections")
    result.passed = bool(compared["passed"])
    return result


# ---------------------------------------------------------------------------------------------------------------
# engines: the record and the next debugging step
# ---------------------------------------------------------------------------------------------------------------
def record_verification(engine: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Store a verification record (``Verification.to_dict()`` or a "not run" record) in ``X.engine.json``."""
    from trtq.engine_meta import engine_record_path, read_engine
    from trtq.fileio import write_json

    path = Path(engine)
    _, meta = read_engine(path)
    if meta is None:
        raise TrtqError(f"{path} has no record to update (no .json sidecar)")
    meta.verification = dict(record)
    write_json(engine_record_path(path), meta.to_dict())


def _compare_args(tol: Tolerance) -> list[str]:
    return ["--compare", "cosine_similarity", "snr", "--cosine-similarity-threshold", f"{tol.cosine:g}",
            "--snr-threshold", f"{tol.snr_db:g}", "--check-average"]


def polygraphy_run_engine_command(engine: str | os.PathLike[str], ref: Reference, tol: Tolerance | None = None) -> str:
    """``polygraphy run X.engine --model-type engine --trt --load-inputs ... --load-outputs ...``."""
    args = ["polygraphy", "run", str(engine), "--model-type", "engine", "--trt",
            "--load-inputs", str(ref.inputs_path), "--load-outputs", str(ref.outputs_path),
            *_compare_args(tol or DEFAULT_TOLERANCE)]
    return shlex.join(args)


def polygraphy_debug_commands(
    onnx_path: str | os.PathLike[str],
    ref: Reference,
    *,
    precision: str = "int8",
    cache: str | os.PathLike[str] | None = None,
    tol: Tolerance | None = None,
) -> list[str]:
    """The next debugging steps for a failing engine: TensorRT against ONNX Runtime on the same ONNX, then
    ``polygraphy debug precision`` (which layers must leave INT8/FP16 for the engine to match)."""
    t = tol or DEFAULT_TOLERANCE
    prec = ["--fp16"] if precision in ("fp16", "int8") else []
    if precision == "int8":
        prec.append("--int8")
        if cache is not None:
            prec += ["--calibration-cache", str(cache)]
    run_both = ["polygraphy", "run", str(onnx_path), "--trt", "--onnxrt", *prec,
                "--load-inputs", str(ref.inputs_path), *_compare_args(t)]
    debug = ["polygraphy", "debug", "precision", str(onnx_path), *prec, "--load-inputs", str(ref.inputs_path),
             "--check", "polygraphy", "run", "polygraphy_debug.engine", "--trt",
             "--load-inputs", str(ref.inputs_path), "--load-outputs", str(ref.outputs_path), *_compare_args(t)]
    return [shlex.join(run_both), shlex.join(debug)]


class VerificationFailed(TrtqError):
    """An engine or model outside the tolerance (exit code 1)."""

    exit_code = EXIT_VERIFY_FAILED


def verify_built_engine(
    engine: Path,
    ref: Reference | None,
    *,
    onnx_path: Path,
    precision: str,
    cache: Path | None = None,
    tolerance: Tolerance | None = None,
    device: int = 0,
) -> dict[str, Any]:
    """``trtq build``'s check: verify ``engine`` against ``ref`` and record the verdict in ``X.engine.json``.

    Returns the record. A failing engine is kept, recorded as unverified, and :class:`VerificationFailed`
    carries the table and the Polygraphy commands that debug it. When the check cannot run (no reference,
    no GPU runtime) the record says why and the build stands.
    """
    from trtq.errors import MissingDependencyError

    tol = tolerance or DEFAULT_TOLERANCE
    if ref is None:
        record: dict[str, Any] = {"status": STATUS_NOT_RUN, "verified": False,
                                  "reason": "no reference outputs (build with --calib to write them)"}
        record_verification(engine, record)
        return record
    try:
        result = verify(engine, inputs=ref.inputs_path, outputs=ref.outputs_path, tolerance=tol, device=device,
                        strict=True)
    except (MissingDependencyError, TrtqError) as exc:
        if isinstance(exc, VerificationFailed):
            raise
        log.warning("the engine was not verified: %s", exc)
        record = {"status": STATUS_NOT_RUN, "verified": False, "reason": str(exc).splitlines()[0],
                  "reference": ref.to_dict()}
        record_verification(engine, record)
        return record
    record = {**result.to_dict(), "verified": result.passed}
    record_verification(engine, record)
    if not result.passed:
        lines = [
            f"{engine} does not match its reference: kept, recorded as unverified in {engine.name}.json",
            *result.table().splitlines(),
            "Next: compare TensorRT with ONNX Runtime on the same model, then find the layers that must leave INT8/FP16:",
            "  " + polygraphy_run_engine_command(engine, ref, tol),
            *("  " + c for c in polygraphy_debug_commands(onnx_path, ref, precision=precision, cache=cache, tol=tol)),
        ]
        raise VerificationFailed("\n".join(lines))
    log.info("verified %s against %s: passed", engine, ref.outputs_path)
    return record


def finish_lines(
    refs: Mapping[str, Reference], qdq_path: Path | None, precision: str, *, engine: Path | None = None
) -> list[str]:
    """Lines for the "finish on the target" message: where the references are and how to check by hand.

    ``engine``: the engine path the user asked for (default: the one ``trtq build`` names after the model)."""
    from trtq.engine_meta import default_engine_path

    lines: list[str] = []
    for kind, ref in refs.items():
        if kind == "explicit" and qdq_path is not None:
            engine = engine or default_engine_path(qdq_path, "int8")
        elif kind == "implicit":
            continue  # the implicit engine's name depends on the command; `trtq build` verifies it itself
        else:
            continue
        lines.append(f"trtq build verifies the engine against {ref.outputs_path} (copy the .ref-*.json files too); "
                     "by hand:")
        lines.append("  " + polygraphy_run_engine_command(engine, ref))
    implicit = refs.get("implicit")
    if implicit is not None:
        lines.append(f"implicit INT8 reference (ranges simulated on ONNX Runtime): {implicit.outputs_path}")
    if "float" in refs:
        lines.append(f"{precision.upper()} reference: {refs['float'].outputs_path}")
    return lines
