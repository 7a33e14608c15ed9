"""Reference inputs and outputs, written on the CPU in Polygraphy's own JSON formats.

``trtq build`` and ``trtq quantize`` run a few letterboxed calibration images (8 by default, seeded)
through ONNX Runtime on the CPU and save, beside their artefacts:

* ``<stem>.ref-inputs.json``: a list of feed dicts ``[{input_name: array}, ...]`` (one per image), what
  ``polygraphy run --load-inputs`` reads;
* ``<stem>.ref-outputs.json``: a ``polygraphy.comparator.RunResults`` with one runner and one iteration per
  feed dict, what ``polygraphy run --load-outputs`` reads.

Both are written with ``polygraphy.json`` and load back with ``polygraphy.json.load_json`` /
``RunResults.load``. ``trtq verify`` (``trtq.verify``) compares an engine or an ONNX with them.

What the reference outputs are:

* explicit INT8: the outputs of the Q/DQ ONNX (TensorRT uses its scales as they are);
* implicit INT8: the outputs of the FP32 ONNX with the calibration cache's ranges simulated
  (:func:`simulate_implicit`): a Q/DQ pair on every calibrated tensor TensorRT materialises (every node
  output outside the head kept in float, except the insides of a Conv + activation that TensorRT fuses),
  weights quantized per output channel as TensorRT does;
* FP32/FP16 builds: the outputs of the FP32 ONNX.

``<stem>`` is the artefact's name without its suffix, so an engine ``engines/yolov8n.int8.engine`` and the
Q/DQ ONNX ``engines/yolov8n.int8.onnx`` it was built from share ``engines/yolov8n.int8.ref-*.json``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trtq.errors import TrtqError

if TYPE_CHECKING:
    import onnx

    from calibrators.table import CalibrationTable

log = logging.getLogger(__name__)

DEFAULT_REFERENCE_IMAGES = 8
INPUTS_SUFFIX = ".ref-inputs.json"
OUTPUTS_SUFFIX = ".ref-outputs.json"
#: the record beside them: which model they belong to (sha256) and the hashes of the two files
RECORD_SUFFIX = ".ref.json"
_ARTIFACT_SUFFIXES = (".onnx", ".engine", ".plan", ".trt", ".cache")
#: activations TensorRT fuses into the Conv that produces their input (no INT8 tensor in between)
_FUSED_ACTIVATIONS = frozenset({"Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Clip", "Tanh", "Elu",
                                "Selu"})


@dataclass(frozen=True)
class Reference:
    """The two reference files of one artefact and what produced the outputs."""

    inputs_path: Path
    outputs_path: Path
    source: str = ""  # e.g. "Q/DQ ONNX yolov8n.int8.onnx on ONNX Runtime (CPU)"
    images: int = 0

    def exists(self) -> bool:
        return self.inputs_path.is_file() and self.outputs_path.is_file()

    @property
    def record_path(self) -> Path:
        """``<stem>.ref.json`` beside the inputs file (see :func:`write_record`)."""
        name = self.inputs_path.name
        stem = name[: -len(INPUTS_SUFFIX)] if name.endswith(INPUTS_SUFFIX) else self.inputs_path.stem
        return self.inputs_path.with_name(stem + RECORD_SUFFIX)

    def paths(self) -> tuple[Path, Path, Path]:
        return self.inputs_path, self.outputs_path, self.record_path

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": str(self.inputs_path), "outputs": str(self.outputs_path), "source": self.source,
                "images": self.images}


def artifact_stem(path: str | os.PathLike[str]) -> str:
    """``yolov8n.int8.engine`` -> ``yolov8n.int8`` (only the artefact suffix is removed)."""
    p = Path(path)
    return p.stem if p.suffix.lower() in _ARTIFACT_SUFFIXES else p.name


def reference_paths(artifact: str | os.PathLike[str], folder: str | os.PathLike[str] | None = None) -> Reference:
    """Where the references of ``artifact`` live (beside it, or in ``folder``)."""
    p = Path(artifact)
    where = Path(folder) if folder is not None else p.parent
    stem = artifact_stem(p)
    return Reference(where / f"{stem}{INPUTS_SUFFIX}", where / f"{stem}{OUTPUTS_SUFFIX}")


# ---------------------------------------------------------------------------------------------------------------
# Polygraphy JSON
# ---------------------------------------------------------------------------------------------------------------
def save_inputs(path: str | os.PathLike[str], feeds: Sequence[Mapping[str, np.ndarray]]) -> None:
    """Save feed dicts as ``polygraphy run --load-inputs`` reads them (atomic write)."""
    from polygraphy.json import save_json

    from trtq.fileio import atomic_path

    data = [{name: np.ascontiguousarray(arr) for name, arr in feed.items()} for feed in feeds]
    with _quiet(), atomic_path(path, ".json") as tmp:
        save_json(data, str(tmp), description="trtq reference inputs")


def save_outputs(path: str | os.PathLike[str], outputs: Sequence[Mapping[str, np.ndarray]], runner: str) -> None:
    """Save per-feed outputs as a ``RunResults`` of one runner (``polygraphy run --load-outputs``)."""
    from polygraphy.comparator import RunResults

    from trtq.fileio import atomic_path

    results = RunResults()
    results.add([{k: np.ascontiguousarray(v) for k, v in out.items()} for out in outputs], runner_name=runner)
    with _quiet(), atomic_path(path, ".json") as tmp:
        results.save(str(tmp))  # pyright: ignore[reportAttributeAccessIssue]  (added by @add_json_methods)


class ReferenceSetError(TrtqError):
    """Reference files that do not belong together or to the model checked."""


def write_record(ref: Reference, model_sha256: str, model_name: str, *, images: int, source: str) -> None:
    """The record that binds a reference set: the model it belongs to (sha256, the hash ``trtq build``
    keeps in an engine's record) and the sha256 of the inputs and outputs files. A sidecar, so both
    Polygraphy files stay as ``polygraphy run --load-inputs / --load-outputs`` reads them."""
    from trtq.fileio import current, sha256_file, write_json

    write_json(ref.record_path, {  # inside an output set the two files are still staged: hash what will land
        "model": model_name, "model_sha256": model_sha256, "images": images, "source": source,
        "inputs": ref.inputs_path.name, "inputs_sha256": sha256_file(current(ref.inputs_path)),
        "outputs": ref.outputs_path.name, "outputs_sha256": sha256_file(current(ref.outputs_path)),
    })


def read_record(ref: Reference, *, strict: bool = True) -> dict[str, Any] | None:
    """The reference set's record, None when there is none (references from Polygraphy or an older trtq).
    When the two files are not the ones the record names (a mixed or partly rewritten set, or files the
    user paired): raises with ``strict``, else logs it and returns None."""
    import json

    from trtq.fileio import sha256_file

    path = ref.record_path
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        want_in, want_out = str(record["inputs_sha256"]), str(record["outputs_sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TrtqError(f"{path} is not a reference record ({_one_line(exc)}); write the references again") from None
    for file, want in ((ref.inputs_path, want_in), (ref.outputs_path, want_out)):
        if sha256_file(file) != want:
            text = (f"{file.name} is not the file {path.name} records (a mixed set of references: one was "
                    f"rewritten after {record.get('model', 'the model')}'s); write the references again")
            if strict:
                raise ReferenceSetError(text)
            log.warning("%s", text)
            return None
    return dict(record)


def belongs_to(ref: Reference, model: str | os.PathLike[str]) -> bool:
    """False when the set's record names another model than ``model`` or does not match its files; True
    otherwise (also when there is no record to tell)."""
    from trtq.modelinfo import model_sha256

    try:
        record = read_record(ref)
    except TrtqError:
        return False
    return record is None or record.get("model_sha256") == model_sha256(Path(model))


def remove_reference(ref: Reference, *, keep_for: str | os.PathLike[str] | None = None) -> list[Path]:
    """Delete a reference set's files (an earlier run's, when a new run writes none); the removed paths.
    ``keep_for``: keep a complete set whose record names this model's very bytes."""
    if keep_for is not None and ref.exists():
        from trtq.modelinfo import model_sha256

        try:
            record = read_record(ref)
        except TrtqError:
            record = None
        if record is not None and Path(keep_for).is_file() and record.get("model_sha256") == model_sha256(Path(keep_for)):
            return []
    removed = []
    for path in ref.paths():
        if path.is_file():
            path.unlink()
            removed.append(path)
    return removed


def load_inputs(path: str | os.PathLike[str]) -> list[dict[str, np.ndarray]]:
    """Feed dicts from a Polygraphy inputs file (``polygraphy run --save-inputs`` or trtq's reference)."""
    from polygraphy.json import load_json

    p = Path(path)
    if not p.is_file():
        raise TrtqError(f"reference inputs not found: {p}")
    try:
        with _quiet():
            data = load_json(str(p))
    except Exception as exc:
        raise TrtqError(f"{p} is not a Polygraphy inputs file ({_one_line(exc)}); pass the .ref-inputs.json "
                        "that `trtq build` / `trtq quantize` wrote") from None
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data) or not data:
        raise TrtqError(f"{p} does not hold a list of feed dicts {{input name: array}}; pass a Polygraphy "
                        "inputs file (as written by --save-inputs)")
    feeds = [{str(k): np.asarray(v) for k, v in d.items()} for d in data]
    return feeds


def load_outputs(path: str | os.PathLike[str]) -> tuple[list[dict[str, np.ndarray]], str]:
    """Per-iteration outputs of the first runner of a ``RunResults`` file, and that runner's name."""
    from polygraphy.comparator import RunResults

    p = Path(path)
    if not p.is_file():
        raise TrtqError(f"reference outputs not found: {p}")
    try:
        with _quiet():
            results = RunResults.load(str(p))  # pyright: ignore[reportAttributeAccessIssue]
    except Exception as exc:
        raise TrtqError(f"{p} is not a Polygraphy RunResults file ({_one_line(exc)}); pass the .ref-outputs.json "
                        "that `trtq build` / `trtq quantize` wrote, or one from `polygraphy run --save-outputs`") from None
    runs = list(results.items())
    if not runs:
        raise TrtqError(f"{p} holds no runner results")
    runner, iterations = runs[0]
    if len(runs) > 1:
        log.info("%s holds %d runners; using the first (%s)", p, len(runs), runner)
    return [{str(k): np.asarray(v) for k, v in it.items()} for it in iterations], str(runner)


def _quiet() -> Any:
    """Polygraphy's logger prints to stdout; trtq logs through ``logging`` instead."""
    from polygraphy.logger import G_LOGGER

    return G_LOGGER.verbosity(G_LOGGER.WARNING)


def _one_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


# ---------------------------------------------------------------------------------------------------------------
# implicit INT8 on ONNX Runtime
# ---------------------------------------------------------------------------------------------------------------
def _fused_interior(graph: onnx.GraphProto, weighted: set[str]) -> set[str]:
    """Tensors TensorRT never materialises in INT8: a Conv output consumed only by its fused activation
    (``Sigmoid`` + ``Mul`` of SiLU, or one Relu-like op), and SiLU's inner ``Sigmoid`` output."""
    from trtq.headpolicy import node_key

    producers = {o: n for n in graph.node for o in n.output if o}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            if i:
                consumers.setdefault(i, []).append(n)
    interior: set[str] = set()
    for tensor, node in producers.items():
        if node_key(node) not in weighted:
            continue
        users = consumers.get(tensor, [])
        if len(users) == 1 and users[0].op_type in _FUSED_ACTIVATIONS:
            interior.add(tensor)
            continue
        sig = [u for u in users if u.op_type == "Sigmoid"]
        mul = [u for u in users if u.op_type == "Mul"]
        if len(users) == 2 and len(sig) == 1 and len(mul) == 1 and sig[0].output[0] in mul[0].input:
            interior.add(tensor)
            interior.add(sig[0].output[0])
    return interior


def simulate_implicit(model: onnx.ModelProto, table: CalibrationTable, *, head_policy: bool = True) -> onnx.ModelProto:
    """The FP32 ``model`` with implicit INT8 simulated from ``table``'s ranges (Q/DQ on ONNX Runtime).

    Implicit INT8 lets TensorRT run every layer with a range in INT8: its output is stored as INT8 with
    scale ``amax / 127``. So a Q/DQ pair goes on every calibrated tensor at a layer boundary: every node
    output (and the image input) except those of the nodes the head policy pins to float and the insides of
    a Conv + activation fusion. Weights of the weighted ops outside the head are quantized per output
    channel (what TensorRT does). Concat inputs keep their own ranges (TensorRT reformats as needed).
    """
    from trtq.headpolicy import float_nodes, node_key
    from trtq.qdq import insert_qdq, plan_qdq

    keep = dict(float_nodes(model)) if head_policy else {}
    plan = plan_qdq(model, keep_float=keep, residual_add=False)
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    constants = inits | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    weighted = {owner for owner, _ in plan.weights.values()}
    interior = _fused_interior(graph, weighted)
    consumers: dict[str, list[str]] = {}
    for n in graph.node:
        for i in n.input:
            if i and i not in constants:
                users = consumers.setdefault(i, [])
                if node_key(n) not in users:
                    users.append(node_key(n))
    candidates = [i.name for i in graph.input if i.name not in inits]
    for n in graph.node:
        if node_key(n) in plan.float_nodes:
            continue
        candidates.extend(o for o in n.output if o)
    activations: dict[str, list[str]] = {}
    for tensor in candidates:
        if tensor in interior or tensor not in table.amax or tensor not in consumers:
            continue
        amax = float(table.amax[tensor])
        if not np.isfinite(amax) or amax <= 0.0:
            continue
        activations[tensor] = list(consumers[tensor])
    plan.activations = activations
    plan.concat_groups = []
    plan.residual_adds = {}
    qmodel, _ = insert_qdq(model, plan, {t: float(table.amax[t]) for t in activations}, unify_concat=False)
    log.debug("implicit INT8 simulation: %d activations, %d weights quantized", len(activations), len(plan.weights))
    return qmodel


# ---------------------------------------------------------------------------------------------------------------
# writing references
# ---------------------------------------------------------------------------------------------------------------
def _input_batch(info: Any, batch: int | None) -> int:
    n = info.input.shape[0]
    if n is not None:
        return int(n)
    return int(batch or 1)


#: candidate images looked at per reference image: images where the model finds something are preferred
POOL_FACTOR = 3


def _single_images(source: Any, info: Any, count: int, seed: int) -> list[np.ndarray]:
    """Up to ``count`` letterboxed images ``(1, 3, H, W)`` of ``source`` (seeded order; unreadable files are
    skipped and the next file taken)."""
    from trtq.images import ImageBatcher

    images_log = logging.getLogger("trtq.images")
    level = images_log.level
    images_log.setLevel(logging.ERROR)  # "few calibration images" does not apply to a reference set
    try:
        batcher = ImageBatcher.from_model(source, _as_batch_one(info), batch=1, num_images=count, seed=seed,
                                          drop_last=False)
        return [b[batcher.input_name] for b in batcher]
    finally:
        images_log.setLevel(level)


def _as_batch_one(info: Any) -> Any:
    """``info`` with a dynamic batch dimension, so single images can be read for any model."""
    from dataclasses import replace

    spec = info.input
    return replace(info, inputs=(replace(spec, shape=(None, *spec.shape[1:])), *info.inputs[1:]))


def _detections_per_image(outputs: Sequence[np.ndarray], layout: Any) -> list[int]:
    """How many detections (conf > 0.25) the model finds in each single-image output."""
    from trtq.agreement import DETECT_CONF, _decoded, is_yolo_output

    if layout is None and not (outputs and is_yolo_output(outputs[0].shape)):
        return [1] * len(outputs)  # nothing to decode: every image is as good as another
    return [len(_decoded(o, layout, DETECT_CONF)[0]) for o in outputs]


def _choose(singles: list[np.ndarray], found: list[int], num_images: int) -> list[np.ndarray]:
    """``num_images`` of the images, those with detections first, each group in the seeded order."""
    order = [i for i, n in enumerate(found) if n > 0] + [i for i, n in enumerate(found) if n == 0]
    return [singles[i] for i in order[:num_images]]


def _group(images: list[np.ndarray], n: int) -> list[np.ndarray]:
    """Feeds of ``n`` images; the last one is filled by repeating images when they do not divide evenly."""
    if len(images) % n:
        images = images + [images[i % len(images)] for i in range(n - len(images) % n)]
    return [np.concatenate(images[i : i + n]) for i in range(0, len(images), n)]


def write_reference(
    model: str | os.PathLike[str],
    source: Any,
    *,
    artifact: str | os.PathLike[str] | None = None,
    folder: str | os.PathLike[str] | None = None,
    destination: Reference | None = None,
    table: CalibrationTable | None = None,
    num_images: int = DEFAULT_REFERENCE_IMAGES,
    batch: int | None = None,
    seed: int = 0,
    what: str | None = None,
) -> Reference:
    """Run ``model`` (ONNX; with ``table``: the FP32 ONNX with those ranges simulated) on ``num_images``
    letterboxed images of ``source`` and save the reference inputs and outputs for ``artifact``, with a
    record naming the model (:data:`RECORD_SUFFIX`).

    The images come from ``POOL_FACTOR * num_images`` seeded candidates, those where the model finds a
    detection first (an image without one checks little). ``artifact`` names the files (default:
    ``model``); they go beside it or in ``folder`` (``destination`` gives both paths instead). Feeds hold
    the model's static batch, or ``batch`` images (default 1) for a dynamic-batch model; a last feed that
    the images do not fill repeats some of them.
    """
    import onnx

    from trtq.modelinfo import check_model, model_sha256, read_model_info
    from trtq.ort import ort_session

    mpath = Path(model)
    if num_images < 1:
        raise TrtqError(f"reference images must be at least 1, got {num_images}")
    info = read_model_info(mpath, with_hash=False)
    layout = check_model(info)
    ref = destination or reference_paths(artifact if artifact is not None else mpath, folder)
    n = _input_batch(info, batch)
    if table is not None:
        fmodel = onnx.load(str(mpath))
        runnable: Path | bytes = simulate_implicit(fmodel, table).SerializeToString()
        label = what or f"FP32 ONNX {mpath.name} with the {table.algorithm} ranges simulated (implicit INT8)"
    else:
        runnable = mpath
        label = what or f"{'Q/DQ ONNX' if _is_qdq(mpath) else 'ONNX'} {mpath.name}"
    # the intended arithmetic, not this CPU's kernels: Q/DQ computed exactly (TensorRT and the VNNI/Arm64
    # kernels of a CPU-target model accumulate in int32), so verify on a saturating CPU fails
    sess = ort_session(runnable, ["CPUExecutionProvider"], exact_qdq=True)
    # the images are float32; an FP16 model takes (and its engine is fed) float16
    in_types = {i.name: np.float16 if i.type == "tensor(float16)" else np.float32 for i in sess.get_inputs()}
    input_name = info.input.name
    names = [o.name for o in sess.get_outputs()]

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        feed = {input_name: np.asarray(x, dtype=in_types.get(input_name, np.float32))}
        return dict(zip(names, (np.asarray(y) for y in sess.run(names, feed)), strict=True))

    singles = _single_images(source, info, POOL_FACTOR * max(num_images, n), seed)
    if info.input.shape[0] in (None, 1):  # judge each image by the model's own output
        found = _detections_per_image([run(x)[names[0]] for x in singles], layout)
    else:
        found = [1] * len(singles)
    chosen = _choose(singles, found, num_images)
    feeds = [{input_name: np.asarray(x, dtype=in_types.get(input_name, np.float32))} for x in _group(chosen, n)]
    outputs = [run(f[input_name]) for f in feeds]
    source_txt = f"{label} on ONNX Runtime (CPU)"
    save_inputs(ref.inputs_path, feeds)
    save_outputs(ref.outputs_path, outputs, runner=f"onnxrt-runner: {source_txt}"[:200])
    named = Path(artifact) if artifact is not None and Path(artifact).suffix.lower() == ".onnx" else mpath
    write_record(ref, model_sha256(mpath), named.name, images=len(chosen), source=source_txt)
    log.info("wrote reference inputs %s and outputs %s (%d images, %d with detections)", ref.inputs_path,
             ref.outputs_path, len(chosen), sum(1 for k in sorted(found, reverse=True)[:len(chosen)] if k))
    return Reference(ref.inputs_path, ref.outputs_path, source_txt, len(chosen))


def _is_qdq(path: Path) -> bool:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in m.graph.node)


def build_references(
    *,
    onnx_path: Path,
    engine_path: Path,
    precision: str,
    mode: str | None,
    qdq_path: Path | None,
    table: CalibrationTable | None,
    cache_path: Path | None,
    calib: Any,
    batch: int,
    seed: int,
    num_images: int = DEFAULT_REFERENCE_IMAGES,
    reuse: bool = False,
    load_cache: bool = False,
) -> dict[str, Reference]:
    """The references of a ``trtq build``: ``{"explicit" | "implicit" | "float": Reference}``.

    Written from ``calib`` when it is given, except that INT8 references already on disk are kept when
    ``reuse`` says the ranges came from a valid cache (no image is opened then); without ``calib``
    references already on disk (from ``trtq quantize`` or an earlier build) are used as they are.
    ``load_cache`` reads the ranges from ``cache_path`` when no ``table`` is given. Explicit: beside the Q/DQ ONNX (the engine's folder when that is
    read-only); implicit: ``<cache stem>.ref-*.json`` in the engine's folder; FP32/FP16: named after the engine.
    """
    workdir = engine_path.parent
    if load_cache and table is None and cache_path is not None and cache_path.is_file():
        from calibrators.table import CalibrationTable  # e.g. the cache TensorRT's calibrator just wrote

        try:
            table = CalibrationTable.load(cache_path)
        except TrtqError as exc:
            log.warning("no implicit INT8 reference: %s", exc)
    jobs: dict[str, tuple[Path, Reference, CalibrationTable | None]] = {}
    if precision == "int8":
        if qdq_path is not None and mode in ("explicit", None):
            where = qdq_path.parent if os.access(qdq_path.parent, os.W_OK) else workdir
            jobs["explicit"] = (qdq_path, reference_paths(qdq_path, where), None)
        if table is not None and cache_path is not None and mode in ("implicit", None):
            jobs["implicit"] = (onnx_path, reference_paths(cache_path, workdir), table)
    else:
        jobs["float"] = (onnx_path, reference_paths(engine_path), None)
    refs: dict[str, Reference] = {}
    for kind, (model, ref, tab) in jobs.items():
        if ref.exists() and not belongs_to(ref, model):
            log.warning("%s belongs to another model than %s: not used", ref.outputs_path.name, model.name)
            if calib is None:
                continue
            reuse_this = False
        else:
            reuse_this = reuse
        if reuse_this and kind != "float" and ref.exists():
            log.info("ranges reused from the cache: keeping the references %s", ref.outputs_path)
            refs[kind] = ref
        elif calib is not None:
            try:
                refs[kind] = write_reference(model, calib, destination=ref, table=tab, num_images=num_images,
                                             batch=batch, seed=seed)
            except TrtqError as exc:
                log.warning("no %s reference written for verification: %s", kind, exc)
        elif ref.exists():
            log.info("using the existing references %s", ref.inputs_path)
            refs[kind] = ref
        else:
            log.info("no reference images (--calib): %s engine will not be verified against a reference", kind)
    return refs
