"""Light runtime for applications: YOLOv8 detections from a TensorRT engine or an ONNX model.

``Detector`` gives the same API for a TensorRT engine (``.engine``/``.plan`` with its ``.json`` sidecar or an
ultralytics header) and for an FP32 or Q/DQ INT8 ONNX on ONNX Runtime, so an application developed on a
laptop runs unchanged on a Jetson::

    from trtq.runtime import Detector

    with Detector("yolov8n.int8.engine", conf=0.25) as det:
        for d in det.detect(frame):           # frame: BGR uint8 HxWx3 (OpenCV)
            for (x1, y1, x2, y2), score, name in zip(d.boxes, d.scores, d.names):
                ...

Importing this module needs numpy only. OpenCV is imported when a ``Detector`` is made (letterbox),
ONNX Runtime when an ONNX model is loaded, TensorRT and the CUDA bindings (pycuda or cuda-python) when an
engine is loaded. torch, ultralytics and click are never imported.

Thread safety: a ``Detector`` owns one set of pre-allocated buffers (and, for engines, one execution
context and CUDA stream), so calls on one instance are serialized by an internal lock: sharing one
instance between threads is safe but runs one batch at a time. For parallel inference make one
``Detector`` per thread. With pycuda, a CUDA context belongs to the thread that made it: create, use
and close an engine ``Detector`` in the same thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from trtq.errors import TrtqError
from trtq.postprocess import decode, scale_boxes

if TYPE_CHECKING:
    import onnxruntime as ort

    from trtq.device import Device, DeviceBuffer, Stream
    from trtq.engine_meta import EngineMetadata

logger = logging.getLogger(__name__)

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
ONNX_SUFFIXES = (".onnx",)
MAX_DYNAMIC_BATCH = 32  # largest batch run at once on a dynamic-batch ONNX model


@dataclass(frozen=True)
class Detections:
    """Detections of one image, best score first; boxes are xyxy pixels of the original image (clipped)."""

    boxes: np.ndarray  # (n, 4) float32 x1, y1, x2, y2
    scores: np.ndarray  # (n,) float32
    class_ids: np.ndarray  # (n,) int64
    names: tuple[str, ...]  # (n,) class name of each detection
    image_shape: tuple[int, int]  # (height, width) of the original image

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def counts(self) -> dict[str, int]:
        """Detections per class name, in class-id order."""
        out: dict[str, int] = {}
        for cid in np.unique(self.class_ids):
            idx = np.flatnonzero(self.class_ids == cid)
            out[self.names[int(idx[0])]] = int(idx.size)
        return out

    def summary(self) -> str:
        """``"4 person, 1 bus"`` (or ``"no detections"``)."""
        counts = self.counts()
        return ", ".join(f"{n} {name}" for name, n in counts.items()) if counts else "no detections"

    def to_list(self) -> list[dict[str, Any]]:
        """JSON-ready list: ``{"box": [x1, y1, x2, y2], "score", "class_id", "name"}`` per detection."""
        return [
            {
                "box": [round(float(v), 2) for v in box],
                "score": round(float(score), 5),
                "class_id": int(cid),
                "name": name,
            }
            for box, score, cid, name in zip(self.boxes, self.scores, self.class_ids, self.names, strict=True)
        ]


class _Session(Protocol):
    """What the Detector needs from a backend: one image input, one YOLOv8 output."""

    backend: str
    input_name: str
    imgsz: tuple[int, int]
    batch_range: tuple[int, int]  # (min, max) images per inference run
    names: dict[int, str]
    stride: int

    def input_buffer(self, n: int) -> np.ndarray: ...

    def run(self, n: int) -> np.ndarray: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------------------------
# ONNX Runtime
# ---------------------------------------------------------------------------------------------------------------


def ort_session(path: Path | bytes, providers: Sequence[str] | None = None) -> ort.InferenceSession:
    """An ONNX Runtime session of ``path`` (or serialized model bytes) on ``providers`` (default CPU),
    quiet, with one clear error."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    chosen = list(providers) if providers else ["CPUExecutionProvider"]
    missing = [p for p in chosen if p not in available]
    if missing:
        raise TrtqError(f"ONNX Runtime providers {missing} are not available here (available: {available})")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    what = "the model" if isinstance(path, bytes) else str(path)
    try:
        return ort.InferenceSession(path if isinstance(path, bytes) else str(path), sess_options=opts, providers=chosen)
    except Exception as exc:
        raise TrtqError(f"ONNX Runtime cannot load {what}: {str(exc).splitlines()[0][:200]}") from None


class OnnxSession:
    """An ONNX model on ONNX Runtime with a reused input buffer (CPU provider unless ``providers`` says otherwise)."""

    backend = "onnxruntime"

    def __init__(self, path: Path, *, providers: Sequence[str] | None = None) -> None:
        from trtq.modelinfo import parse_metadata_value

        session = ort_session(path, providers)
        self.session: ort.InferenceSession | None = session
        self.providers = list(session.get_providers())
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1:
            raise TrtqError(f"{path} has {len(inputs)} inputs; trtq expects one image input")
        inp, out = inputs[0], outputs[0]
        in_shape = [d if isinstance(d, int) and d > 0 else None for d in inp.shape]
        out_shape = [d if isinstance(d, int) and d > 0 else None for d in out.shape]
        dtypes = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
        if len(in_shape) != 4 or in_shape[1] not in (3, None) or inp.type not in dtypes:
            raise TrtqError(
                f"{path}: input {inp.name!r} is {inp.type}{in_shape}; expected a float NCHW image tensor [N,3,H,W] "
                "as exported by `trtq export`"
            )
        if len(out_shape) != 3 or (out_shape[1] is not None and out_shape[1] < 5):
            raise TrtqError(
                f"{path}: output {out.name!r} has shape {out_shape}; expected a YOLOv8 detection output "
                "[N, 4 + classes, anchors] (export a detection model with `trtq export`)"
            )
        meta = {k: parse_metadata_value(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
        self.input_name = str(inp.name)
        self.output_name = str(out.name)
        h, w = in_shape[2], in_shape[3]
        if h is None or w is None:
            size = meta.get("imgsz", 640)
            h, w = (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) else (int(size), int(size))
        self.imgsz = (h, w)
        stride = meta.get("stride", 32)
        self.stride = int(max(stride) if isinstance(stride, (list, tuple)) else stride)
        names = meta.get("names")
        self.names = {int(k): str(v) for k, v in names.items()} if isinstance(names, dict) else {}
        self.dtype = np.dtype(dtypes[inp.type])
        static = in_shape[0]
        self.batch_range = (static, static) if static is not None else (1, MAX_DYNAMIC_BATCH)
        self._static_batch = static
        self._buffer = np.zeros((self.batch_range[0], 3, *self.imgsz), dtype=self.dtype)

    def input_buffer(self, n: int) -> np.ndarray:
        if self._buffer.shape[0] < n:
            self._buffer = np.zeros((n, 3, *self.imgsz), dtype=self.dtype)
        return self._buffer[:n]

    def run(self, n: int) -> np.ndarray:
        if self.session is None:
            raise TrtqError("this ONNX Runtime session is closed")
        run_n = self._static_batch or n
        (out,) = self.session.run([self.output_name], {self.input_name: self.input_buffer(run_n)})
        return np.asarray(out)[:n]

    def close(self) -> None:
        self.session = None


# ---------------------------------------------------------------------------------------------------------------
# TensorRT
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class EngineTensor:
    """One engine I/O tensor with its pinned host and device buffers (sized for the largest batch)."""

    name: str
    is_input: bool
    dtype: np.dtype[Any]
    shape: tuple[int, ...]  # as built; -1 for dynamic dimensions
    host: np.ndarray = field(repr=False)  # pinned, at the largest shape
    device: DeviceBuffer = field(repr=False)

    def host_view(self, shape: tuple[int, ...]) -> np.ndarray:
        """The leading ``prod(shape)`` elements of the pinned buffer, viewed as ``shape`` (no copy)."""
        return self.host.reshape(-1)[: int(np.prod(shape))].reshape(shape)


def _read_engine_checked(path: Path) -> tuple[bytes, EngineMetadata | None, dict[str, Any] | None]:
    """The plan, its metadata and its ultralytics header; one clear error for each kind of broken file."""
    import hashlib

    from trtq.engine_meta import read_engine, read_header

    plan, meta = read_engine(path)  # raises for a missing engine or a corrupt sidecar
    header = read_header(path)
    if not plan:
        raise TrtqError(f"{path} holds no TensorRT plan (empty file): rebuild it with `trtq build`")
    expected = meta.engine_sha256 if meta is not None else ""
    if expected and hashlib.sha256(plan).hexdigest() != expected:
        raise TrtqError(
            f"{path} does not match its metadata (sha256 differs: truncated or modified copy); "
            "copy it again or rebuild it with `trtq build`"
        )
    return plan, meta, header


class TensorRTSession:
    """A deserialized engine with one execution context, one CUDA stream and buffers allocated once.

    Used by :class:`Detector` and by the benchmark harness; every I/O tensor gets a pinned host buffer and a
    device buffer sized for the largest batch of optimization profile 0, registered once with
    ``set_tensor_address``.
    """

    backend = "tensorrt"

    def __init__(self, path: Path, *, device: int = 0) -> None:
        from trtq.trt.compat import require_tensorrt

        require_tensorrt(f"running the TensorRT engine {path.name}")
        import tensorrt as trt

        from trtq.device import get_device
        from trtq.engine_meta import check_compatible, configure_runtime

        plan, meta, header = _read_engine_checked(path)
        self.path = path
        self.meta: EngineMetadata | None = meta
        self.header: dict[str, Any] | None = header
        self.device: Device = get_device("auto", device)
        self._closed = False
        try:
            if meta is not None:
                check_compatible(
                    meta,
                    tensorrt_version=str(trt.__version__),
                    compute_capability=self.device.compute_capability,
                    dla_core=meta.dla_core,
                )
            else:
                logger.warning(
                    "%s has no metadata (no .json sidecar, no header): compatibility not checked", path
                )
            from trtq.trt.compat import trt_logger

            self.runtime = trt.Runtime(trt_logger(trt))  # one logger per process (TensorRT keeps the first)
            configure_runtime(self.runtime, meta, header)  # DLA core (record or ultralytics header), host code
            try:
                engine = self.runtime.deserialize_cuda_engine(plan)
            except Exception as exc:  # some bindings raise instead of returning None
                logger.debug("deserialize_cuda_engine raised %s: %s", type(exc).__name__, exc)
                engine = None
            if engine is None:
                raise TrtqError(
                    f"TensorRT could not deserialize {path} (truncated, corrupt, or built by another TensorRT "
                    "version or for another GPU): rebuild it on this device with `trtq build`"
                )
            self.engine = engine
            context = engine.create_execution_context()
            if context is None:
                raise TrtqError(
                    f"TensorRT could not create an execution context for {path} (out of GPU memory?)"
                )
            self.context = context
            self.stream: Stream = self.device.stream()
            self.tensors: dict[str, EngineTensor] = {}
            self._setup_io(trt)
        except BaseException:
            self.close()
            raise

    def _setup_io(self, trt: Any) -> None:
        engine, context = self.engine, self.context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or not outputs:
            raise TrtqError(
                f"{self.path} has inputs {inputs} and outputs {outputs}; trtq expects one image input and an output"
            )
        self.input_name = inputs[0]
        self.output_names = outputs
        in_shape = tuple(int(d) for d in engine.get_tensor_shape(self.input_name)[:])
        if len(in_shape) != 4 or in_shape[1] not in (3, -1):
            raise TrtqError(
                f"{self.path}: input {self.input_name!r} has shape {list(in_shape)}; expected [N, 3, H, W]"
            )
        if in_shape[0] == -1 or -1 in in_shape[2:]:
            pmin, _popt, pmax = engine.get_tensor_profile_shape(self.input_name, 0)
            lo, hi = tuple(int(d) for d in pmin[:]), tuple(int(d) for d in pmax[:])
            self.batch_range = (lo[0], hi[0])
            self.imgsz = (hi[2], hi[3])
        else:
            self.batch_range = (in_shape[0], in_shape[0])
            self.imgsz = (in_shape[2], in_shape[3])
        meta, header = self.meta, self.header or {}
        if meta is not None:
            self.names = {int(k): str(v) for k, v in (meta.names or {}).items()}
            self.stride = int(meta.stride or 32)
        else:  # an engine with only an ultralytics header (or nothing at all)
            raw_names = header.get("names")
            self.names = {int(k): str(v) for k, v in raw_names.items()} if isinstance(raw_names, dict) else {}
            self.stride = int(header.get("stride") or 32)
        max_in = (self.batch_range[1], 3, *self.imgsz)
        if not context.set_input_shape(self.input_name, max_in):
            raise TrtqError(f"{self.path}: input shape {list(max_in)} rejected by the engine's profile")
        self._batch = self.batch_range[1]
        for name in names:
            is_input = name == self.input_name
            shape = max_in if is_input else tuple(int(d) for d in context.get_tensor_shape(name)[:])
            if any(d < 0 for d in shape):
                raise TrtqError(
                    f"{self.path}: output {name!r} has a data-dependent shape {list(shape)}; not supported"
                )
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            host = self.device.pinned_empty(shape, dtype)
            buf = self.device.alloc(max(int(host.nbytes), 1))
            built = tuple(int(d) for d in engine.get_tensor_shape(name)[:])
            self.tensors[name] = EngineTensor(name, is_input, dtype, built, host, buf)
            if not context.set_tensor_address(name, int(buf.ptr)):
                raise TrtqError(f"{self.path}: TensorRT rejected the buffer address of {name!r}")
        self.dtype = self.tensors[self.input_name].dtype

    @property
    def output_name(self) -> str:
        return self.output_names[0]

    def set_batch(self, n: int) -> None:
        """Select the batch size of the next runs (input shape of profile 0)."""
        lo, hi = self.batch_range
        if not lo <= n <= hi:
            raise TrtqError(f"{self.path.name}: batch {n} is outside the engine's range {lo}..{hi}")
        if n != self._batch:
            if not self.context.set_input_shape(self.input_name, (n, 3, *self.imgsz)):
                raise TrtqError(f"{self.path.name}: TensorRT rejected batch {n}")
            self._batch = n

    @property
    def batch(self) -> int:
        return self._batch

    def shape_of(self, name: str) -> tuple[int, ...]:
        """Current shape of ``name`` for the selected batch."""
        if name == self.input_name:
            return (self._batch, 3, *self.imgsz)
        return tuple(int(d) for d in self.context.get_tensor_shape(name)[:])

    def input_buffer(self, n: int) -> np.ndarray:
        return self.tensors[self.input_name].host_view((n, 3, *self.imgsz))

    def copy_inputs(self) -> None:
        t = self.tensors[self.input_name]
        self.device.htod(t.device, t.host_view(self.shape_of(t.name)), self.stream)

    def enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.handle):
            raise TrtqError(f"TensorRT failed to run {self.path.name} (execute_async_v3 returned False)")

    def copy_outputs(self) -> None:
        for name in self.output_names:
            t = self.tensors[name]
            self.device.dtoh(t.host_view(self.shape_of(name)), t.device, self.stream)

    def run(self, n: int) -> np.ndarray:
        run_n = n if self.batch_range[0] <= n else self.batch_range[0]
        self.set_batch(run_n)
        self.copy_inputs()
        self.enqueue()
        self.copy_outputs()
        self.stream.synchronize()
        out = self.tensors[self.output_name]
        return out.host_view(self.shape_of(self.output_name))[:n]

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        # TensorRT objects first (while the CUDA context is current), then device memory, then the context.
        for attr in ("context", "engine", "runtime"):
            if hasattr(self, attr):
                delattr(self, attr)
        for t in getattr(self, "tensors", {}).values():
            t.device.free()
        self.tensors = {}
        if hasattr(self, "stream"):
            del self.stream
        self.device.close()


def model_kind(path: str | Path) -> tuple[Path, str]:
    """``(path, "onnx" | "engine")`` from the suffix; TrtqError for a missing path, a folder or another suffix."""
    p = Path(path)
    if not p.exists():
        raise TrtqError(f"model not found: {p}")
    if p.is_dir():
        raise TrtqError(f"{p} is a directory; pass an .onnx model or an .engine file")
    suffix = p.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return p, "onnx"
    if suffix in ENGINE_SUFFIXES:
        return p, "engine"
    raise TrtqError(f"{p}: unknown model type {suffix!r}; pass an .onnx model or an .engine/.plan file")


def open_session(path: str | Path, *, device: int = 0, providers: Sequence[str] | None = None) -> _Session:
    """Open ``path`` on the backend its suffix names (.onnx: ONNX Runtime; .engine/.plan/.trt: TensorRT)."""
    p, kind = model_kind(path)
    if kind == "onnx":
        return OnnxSession(p, providers=providers)
    return TensorRTSession(p, device=device)


# ---------------------------------------------------------------------------------------------------------------
# Detector
# ---------------------------------------------------------------------------------------------------------------


def _check_threshold(name: str, value: float) -> float:
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise TrtqError(f"{name} must be between 0 and 1, got {value}")
    return v


class Detector:
    """YOLOv8 detector over a TensorRT engine or an ONNX model (see the module docstring).

    ``conf``: minimum class score; ``iou``: NMS IoU threshold; ``max_det``: most detections per image;
    ``device``: CUDA device index (engines); ``providers``: ONNX Runtime execution providers (default CPU).
    Thread-safe by serialization (one internal lock); see the module docstring.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        conf: float = 0.25,
        iou: float = 0.7,
        max_det: int = 300,
        device: int = 0,
        providers: Sequence[str] | None = None,
    ) -> None:
        self.conf = _check_threshold("conf", conf)
        self.iou = _check_threshold("iou", iou)
        if int(max_det) < 1:
            raise TrtqError(f"max_det must be at least 1, got {max_det}")
        self.max_det = int(max_det)
        self.path = Path(path)
        from trtq.images import letterbox  # OpenCV, only when a detector is made

        self._letterbox = letterbox
        self._session: _Session | None = open_session(self.path, device=device, providers=providers)
        self._lock = threading.Lock()
        self.last_timing: dict[str, float] = {}
        s = self._session
        self.backend: str = s.backend
        self.imgsz: tuple[int, int] = s.imgsz
        self.stride: int = s.stride
        self.batch_range: tuple[int, int] = s.batch_range
        self.names: dict[int, str] = dict(s.names)
        self.input_name: str = s.input_name

    # -- lifecycle -------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Free the model and its buffers (GPU memory for engines). Idempotent."""
        with self._lock:
            if self._session is not None:
                self._session.close()
                self._session = None

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Detector({str(self.path)!r}, backend={self.backend!r}, imgsz={self.imgsz}, conf={self.conf}, iou={self.iou})"

    # -- inference -------------------------------------------------------------------------------------------
    def __call__(self, images: np.ndarray | Sequence[np.ndarray], *, rgb: bool = False) -> list[Detections]:
        return self.detect(images, rgb=rgb)

    def detect(self, images: np.ndarray | Sequence[np.ndarray], *, rgb: bool = False) -> list[Detections]:
        """Detect objects in one image (HxWx3 uint8) or a batch (a list, or an NxHxWx3 array).

        Images are BGR (OpenCV's order) unless ``rgb=True``. Returns one :class:`Detections` per image, in order.
        ``last_timing`` holds the milliseconds spent in ``preprocess``, ``inference`` and ``postprocess``.
        """
        batch = self._as_list(images)
        with self._lock:
            session = self._session
            if session is None:
                raise TrtqError("this Detector is closed")
            results: list[Detections] = []
            timing = {"preprocess": 0.0, "inference": 0.0, "postprocess": 0.0}
            lo, hi = session.batch_range
            chunk = hi if lo == hi else min(hi, max(lo, len(batch)))
            for start in range(0, len(batch), chunk):
                part = batch[start : start + chunk]
                t0 = time.perf_counter()
                n_run = max(len(part), lo)
                buf = session.input_buffer(n_run)
                for i, img in enumerate(part):
                    self._fill(buf[i], img, rgb)
                t1 = time.perf_counter()
                out = session.run(len(part))
                t2 = time.perf_counter()
                decoded = decode(out, conf=self.conf, iou=self.iou, max_det=self.max_det)
                for img, det in zip(part, decoded, strict=True):
                    results.append(self._to_detections(det, img.shape[:2]))
                t3 = time.perf_counter()
                timing["preprocess"] += (t1 - t0) * 1e3
                timing["inference"] += (t2 - t1) * 1e3
                timing["postprocess"] += (t3 - t2) * 1e3
            timing["total"] = sum(timing.values())
            self.last_timing = timing
        return results

    @staticmethod
    def _as_list(images: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
        if isinstance(images, np.ndarray):
            batch = list(images) if images.ndim == 4 else [images]
        elif isinstance(images, (list, tuple)):
            batch = list(images)
        else:
            raise TrtqError(f"detect() takes an image array or a list of them, got {type(images).__name__}")
        if not batch:
            raise TrtqError("detect() got no images")
        for i, img in enumerate(batch):
            if not isinstance(img, np.ndarray):
                raise TrtqError(f"image {i} is a {type(img).__name__}, not a numpy array (HxWx3 uint8)")
            if img.size == 0:
                raise TrtqError(
                    f"image {i} is empty (shape {img.shape}): check the camera or file it came from"
                )
            if img.ndim != 3 or img.shape[2] != 3:
                raise TrtqError(
                    f"image {i} has shape {img.shape}; expected HxWx3 (colour, channels last); "
                    "convert grayscale with cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)"
                )
            if img.dtype != np.uint8:
                raise TrtqError(
                    f"image {i} is {img.dtype}; expected uint8 pixels 0..255 (as OpenCV reads them)"
                )
        return batch

    def _fill(self, dst: np.ndarray, img: np.ndarray, rgb: bool) -> None:
        """Letterbox ``img`` into one slot of the input buffer: CHW, RGB, float /255 (ultralytics' predictor)."""
        lb = self._letterbox(img, self.imgsz, stride=self.stride)[0]
        chw = lb.transpose(2, 0, 1)
        if not rgb:
            chw = chw[::-1]
        np.divide(chw, 255.0, out=dst, casting="unsafe")

    def _to_detections(self, det: np.ndarray, shape: tuple[int, ...]) -> Detections:
        h0, w0 = int(shape[0]), int(shape[1])
        boxes = det[:, :4].astype(np.float32, copy=True)
        scale_boxes(boxes, self.imgsz, (h0, w0))
        class_ids = det[:, 5].astype(np.int64)
        names = tuple(self.names.get(int(c), str(int(c))) for c in class_ids)
        return Detections(boxes, det[:, 4].astype(np.float32), class_ids, names, (h0, w0))


# ---------------------------------------------------------------------------------------------------------------
# predict: images in, drawn images / JSON out
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """The detections of one image file and how long they took."""

    path: Path
    detections: Detections
    ms: float  # preprocess + inference + postprocess
    saved: Path | None = None

    def summary(self) -> str:
        return f"{self.path.name}: {self.detections.summary()} ({self.ms:.1f} ms)"

    def to_dict(self) -> dict[str, Any]:
        h, w = self.detections.image_shape
        return {
            "image": str(self.path),
            "width": w,
            "height": h,
            "ms": round(self.ms, 2),
            "saved": str(self.saved) if self.saved else None,
            "detections": self.detections.to_list(),
        }


def predict(
    model: str | Path,
    source: str | Path,
    *,
    conf: float = 0.25,
    iou: float = 0.7,
    max_det: int = 300,
    save: str | Path | None = None,
    json_path: str | Path | None = None,
    device: int = 0,
    providers: Sequence[str] | None = None,
    on_result: Any = None,
) -> list[Prediction]:
    """Run ``model`` on every image of ``source`` (file, directory, glob, list file).

    ``save``: write each image with drawn boxes into this directory (same file name; JPEG/PNG as the source,
    other formats as JPEG). ``json_path``: write all detections as one JSON file. ``on_result``: called with
    each :class:`Prediction` as soon as it is ready (progress output). Images are processed one at a time.
    """
    from trtq.fileio import write_json
    from trtq.images import load_image, resolve_image_paths

    out_dir = Path(save) if save is not None else None
    results: list[Prediction] = []
    used_names: set[str] = set()
    with Detector(model, conf=conf, iou=iou, max_det=max_det, device=device, providers=providers) as det:
        for path in resolve_image_paths(source):
            img = load_image(path)
            (d,) = det.detect(img)
            saved = None
            if out_dir is not None:
                from trtq.draw import draw_detections, write_image

                suffix = path.suffix.lower() if path.suffix.lower() in (".jpg", ".jpeg", ".png") else ".jpg"
                name, k = path.stem + suffix, 1
                while name in used_names:  # same file name in two source folders
                    name, k = f"{path.stem}_{k}{suffix}", k + 1
                used_names.add(name)
                saved = write_image(out_dir / name, draw_detections(img, d))
            pred = Prediction(path, d, det.last_timing.get("total", 0.0), saved)
            results.append(pred)
            if on_result is not None:
                on_result(pred)
        if json_path is not None:
            write_json(
                json_path,
                {
                    "model": str(model),
                    "backend": det.backend,
                    "conf": conf,
                    "iou": iou,
                    "images": [r.to_dict() for r in results],
                },
            )
    return results
