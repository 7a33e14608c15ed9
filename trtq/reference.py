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
    letterboxed images of ``source`` and save the reference inputs and outputs for ``artifact``.

    ``artifact`` names the files (default: ``model``); they go beside it or in ``folder`` (``destination``
    gives both paths instead). ``batch`` is the
    images per feed dict for a dynamic-batch model (a static one uses its own batch).
    """
    import onnx

    from trtq.images import ImageBatcher
    from trtq.modelinfo import check_model, read_model_info
    from trtq.ort import ort_session

    mpath = Path(model)
    if num_images < 1:
        raise TrtqError(f"reference images must be at least 1, got {num_images}")
    info = read_model_info(mpath, with_hash=False)
    check_model(info)
    ref = destination or reference_paths(artifact if artifact is not None else mpath, folder)
    n = _input_batch(info, batch)
    images_log = logging.getLogger("trtq.images")
    level = images_log.level
    images_log.setLevel(logging.ERROR)  # "few calibration images" does not apply to a reference set
    try:
        batcher = ImageBatcher.from_model(source, info, batch=n, num_images=max(num_images, n), seed=seed,
                                          drop_last=True)
    finally:
        images_log.setLevel(level)
    feeds = [dict(b) for b in batcher]
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
    feeds = [{k: np.asarray(v, dtype=in_types.get(k, np.float32)) for k, v in feed.items()} for feed in feeds]
    names = [o.name for o in sess.get_outputs()]
    outputs = [dict(zip(names, (np.asarray(x) for x in sess.run(names, feed)), strict=True)) for feed in feeds]
    source_txt = f"{label} on ONNX Runtime (CPU)"
    save_inputs(ref.inputs_path, feeds)
    save_outputs(ref.outputs_path, outputs, runner=f"onnxrt-runner: {source_txt}"[:200])
    log.info("wrote reference inputs %s and outputs %s (%d images)", ref.inputs_path, ref.outputs_path,
             batcher.num_used)
    return Reference(ref.inputs_path, ref.outputs_path, source_txt, batcher.num_used)


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
        if reuse and kind != "float" and ref.exists():
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
