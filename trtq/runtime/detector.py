"""``Detector``: letterbox, run a session, decode every task; one API for engines and ONNX models."""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trtq.errors import TrtqError
from trtq.machine import usable_cpus
from trtq.postprocess import decode_layout
from trtq.runtime.decode import Detections, to_detections
from trtq.runtime.sessions import OnnxSession, Session, open_session
from trtq.tasks import TaskLayout, refuse_ambiguous, task_layout

if TYPE_CHECKING:
    from trtq.runtime.overlap import OverlappedEngine
    from trtq.runtime.stream import StreamResult


def _check_threshold(name: str, value: float) -> float:
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise TrtqError(f"{name} must be between 0 and 1, got {value}")
    return v


class Detector:
    """YOLO detector (detect, segment, pose, OBB; grid or end-to-end heads) over a TensorRT engine or an
    ONNX model (see :mod:`trtq.runtime`). ``task`` and ``layout`` say what the model's outputs mean.

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
        # OpenCV, only when a detector is made
        from trtq.images import letterbox_batch, letterbox_into, to_tensor

        self._letterbox_into = letterbox_into
        self._letterbox_batch = letterbox_batch
        self._to_tensor = to_tensor
        session = open_session(self.path, device=device, providers=providers)
        try:
            self.layout, self._head, self._protos = _layout_of(session, self.path)
        except BaseException:
            session.close()
            raise
        self._session: Session | None = session
        self._lock = threading.Lock()
        self.last_timing: dict[str, float] = {}
        self.task: str = self.layout.task
        s = session
        self.backend: str = s.backend
        self.imgsz: tuple[int, int] = s.imgsz
        self.stride: int = s.stride
        self.batch_range: tuple[int, int] = s.batch_range
        self.names: dict[int, str] = dict(s.names)
        self.input_name: str = s.input_name
        # dynamic height and width: each batch is padded only to the stride, as ultralytics' predictor does
        self.dynamic_hw: bool = bool(getattr(s, "dynamic_hw", False))

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
        return (
            f"Detector({str(self.path)!r}, backend={self.backend!r}, task={self.task!r}, imgsz={self.imgsz}, "
            f"conf={self.conf}, iou={self.iou})"
        )

    # -- inference -------------------------------------------------------------------------------------------
    def __call__(self, images: np.ndarray | Sequence[np.ndarray], *, rgb: bool = False) -> list[Detections]:
        return self.detect(images, rgb=rgb)

    def detect(self, images: np.ndarray | Sequence[np.ndarray], *, rgb: bool = False) -> list[Detections]:
        """Detect objects in one image (HxWx3 uint8) or a batch (a list, or an NxHxWx3 array).

        Each :class:`Detections` carries the task's fields: masks, keypoints or rotated boxes.

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
                if self.dynamic_hw:
                    x = self._dynamic_input(part, rgb)
                    canvas = (int(x.shape[2]), int(x.shape[3]))
                    t1 = time.perf_counter()
                    out = getattr(session, "run_array")(x)  # noqa: B009 - only ONNX sessions have dynamic sizes
                    t2 = time.perf_counter()
                else:
                    buf = session.input_buffer(max(len(part), lo))
                    for i, img in enumerate(part):
                        self._fill(buf[i], img, rgb)
                    t1 = time.perf_counter()
                    out, canvas = session.run(len(part)), self.imgsz
                    t2 = time.perf_counter()
                decoded = decode_layout(
                    out[self._head], self.layout, conf=self.conf, iou=self.iou, max_det=self.max_det
                )
                protos = out[self._protos] if self._protos is not None else None
                for i, (img, rows) in enumerate(zip(part, decoded, strict=True)):
                    proto = None if protos is None else protos[i].astype(np.float32, copy=False)
                    shape = (int(img.shape[0]), int(img.shape[1]))
                    results.append(to_detections(rows, self.layout, canvas, shape, self.names, proto))
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

    def _dynamic_input(self, part: list[np.ndarray], rgb: bool) -> np.ndarray:
        """The input batch of a dynamic-size model: :func:`trtq.images.letterbox_batch` (padded to the stride
        when the images share a shape, as ultralytics' predictor pads such a model), RGB, /255, NCHW."""
        x = self._to_tensor(self._letterbox_batch(part, self.imgsz, stride=self.stride, auto=True))
        return np.ascontiguousarray(x[:, ::-1]) if rgb else x  # to_tensor swaps BGR to RGB

    def _fill(self, dst: np.ndarray, img: np.ndarray, rgb: bool, *, auto: bool = False) -> None:
        """Letterbox ``img`` into one slot of the input buffer: CHW, RGB, float /255 (ultralytics' predictor);
        ``auto``: padded only to the stride (a dynamic model's minimum rectangle)."""
        self._letterbox_into(dst, img, self.imgsz, stride=self.stride, auto=auto, swap_rb=not rgb)

    # -- video ---------------------------------------------------------------------------------------------
    def stream(
        self,
        source: str | int | Path | Sequence[str | int | Path],
        *,
        vid_stride: int = 1,
        live: bool | None = None,
        batch: int | None = None,
        reconnect: int = 0,
        depth: int = 2,
        lanes: int | None = None,
    ) -> Iterator[StreamResult]:
        """Detections over video: a file, camera index, URL, GStreamer pipeline, ``.streams`` list, or several.

        A generator of :class:`~trtq.runtime.stream.StreamResult` (stream index, frame number, the frame, its
        detections), backed by a reader / preprocess / inference / postprocess pipeline of threads
        (:mod:`trtq.runtime.stream`). Files give every frame in order; live sources with ``live`` (their
        default) give the newest frame. Several sources run as one batch per round when the model takes it.
        ``lanes``: inferences side by side (:meth:`inference_lanes`; default :meth:`cpu_lanes` for files, 1
        for live sources). Sources are opened here (a bad one raises :class:`TrtqError` at once); closing the generator (or
        leaving the loop) stops every thread.
        """
        from trtq.runtime.sources import open_sources
        from trtq.runtime.stream import StreamPipeline

        names = [source] if isinstance(source, (str, int, Path)) else list(source)
        sources = open_sources([str(s) for s in names], vid_stride=vid_stride, reconnect=reconnect)
        return iter(StreamPipeline(self, sources, live=live, batch=batch, depth=depth, lanes=lanes))

    @property
    def input_dtype(self) -> np.dtype[Any]:
        """The dtype of the model's input (float32, or float16 for an FP16 model)."""
        session = self._session
        if session is None:
            raise TrtqError("this Detector is closed")
        return session.input_buffer(max(session.batch_range[0], 1)).dtype

    def input_hw(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """The input size for frames of ``image_hw``: the model's, or on a dynamic model ultralytics' minimum
        rectangle (the letterboxed frame padded to the nearest stride multiple)."""
        if not self.dynamic_hw:
            return self.imgsz
        from trtq.images import letterbox_hw

        return letterbox_hw(image_hw, self.imgsz, stride=self.stride, auto=True)

    def fill_input(self, dst: np.ndarray, image: np.ndarray, *, rgb: bool = False) -> None:
        """Letterbox one BGR image into ``dst`` (3xHxW, the model's input dtype), as :meth:`detect` does; a
        ``dst`` smaller than the model's size (a dynamic model, :meth:`input_hw`) gets ultralytics' ``auto``
        letterbox."""
        self._fill(dst, image, rgb, auto=tuple(dst.shape[1:]) != self.imgsz)

    def run_tensor(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Run the model on a preprocessed NCHW batch (in chunks the model takes); every output, owned."""
        with self._lock:
            session = self._session
            if session is None:
                raise TrtqError("this Detector is closed")
            return _run_batch(session, tensor)

    @property
    def on_cpu(self) -> bool:
        """Whether the model runs on ONNX Runtime's CPU provider (where :meth:`inference_lanes` opens sessions)."""
        session = self._session
        return isinstance(session, OnnxSession) and session.providers == ["CPUExecutionProvider"]

    def cpu_lanes(self) -> int:
        """How many frames :meth:`inference_lanes` would run side by side by default: 2 for an ONNX model on
        ONNX Runtime's CPU provider on a machine with at least 2 cores (one frame per core group uses a CPU
        better than one frame spread over every core: fewer thread hand-offs per layer), else 1."""
        return 2 if self.on_cpu and usable_cpus() >= 2 else 1

    @contextlib.contextmanager
    def inference_lanes(self, n: int) -> Iterator[list[Callable[[np.ndarray], list[np.ndarray]]]]:
        """``n`` ways to :meth:`run_tensor` that may run side by side, one per thread.

        On ONNX Runtime's CPU provider: ``n`` sessions of the model, each with ``cpus // n`` threads, opened
        here and closed when the block ends. On any other backend (a TensorRT engine, a GPU provider) and for
        ``n`` = 1: this Detector's own :meth:`run_tensor`, once."""
        if n < 1:
            raise TrtqError(f"inference lanes must be at least 1, got {n}")
        session = self._session
        if session is None:
            raise TrtqError("this Detector is closed")
        if n == 1 or not isinstance(session, OnnxSession) or not self.on_cpu:
            yield [self.run_tensor]
            return
        threads = max(1, usable_cpus() // n)
        lanes: list[OnnxSession] = []
        try:
            for _ in range(n):
                lanes.append(OnnxSession(self.path, providers=session.providers, threads=threads))
            yield [functools.partial(_run_batch, lane) for lane in lanes]
        finally:
            for lane in lanes:
                lane.close()

    @contextlib.contextmanager
    def overlapped(self) -> Iterator[OverlappedEngine]:
        """An :class:`~trtq.runtime.overlap.OverlappedEngine` over this engine, for the calling thread (its
        CUDA context made current there with pycuda); holds the Detector's lock until the block ends."""
        from trtq.runtime.overlap import OverlappedEngine
        from trtq.trt.session import TensorRTSession

        with self._lock:
            session = self._session
            if not isinstance(session, TensorRTSession):
                raise TrtqError("overlapped execution is for TensorRT engines")
            ctx: Any = getattr(session.device, "_ctx", None)  # pycuda: a context is current per thread
            if ctx is not None:
                ctx.push()
            try:
                runner = OverlappedEngine(session)
                try:
                    yield runner
                finally:
                    runner.close()
            finally:
                if ctx is not None:
                    ctx.pop()

    def decode_outputs(
        self,
        outputs: Sequence[np.ndarray],
        shapes: Sequence[tuple[int, ...]],
        input_hw: tuple[int, int] | None = None,
    ) -> list[Detections]:
        """Decode the outputs of :meth:`run_tensor` (on inputs of ``input_hw``, default the model's size) onto
        images of ``shapes`` (height, width), as :meth:`detect`."""
        decoded = decode_layout(outputs[self._head], self.layout, conf=self.conf, iou=self.iou, max_det=self.max_det)
        protos = outputs[self._protos] if self._protos is not None else None
        results: list[Detections] = []
        for i, (shape, rows) in enumerate(zip(shapes, decoded, strict=True)):
            proto = None if protos is None else protos[i].astype(np.float32, copy=False)
            hw = (int(shape[0]), int(shape[1]))
            results.append(to_detections(rows, self.layout, input_hw or self.imgsz, hw, self.names, proto))
        return results


def _run_batch(session: Session, tensor: np.ndarray) -> list[np.ndarray]:
    """``tensor`` (NCHW, preprocessed) through ``session`` in chunks it takes; every output, owned."""
    if tuple(tensor.shape[2:]) != session.imgsz and isinstance(session, OnnxSession):  # dynamic ONNX, smaller
        return session.run_array(tensor)
    lo, hi = session.batch_range
    n = int(tensor.shape[0])
    chunk = hi if lo == hi else min(hi, max(lo, n))
    parts: list[list[np.ndarray]] = []
    for start in range(0, n, chunk):
        part = tensor[start : start + chunk]
        buf = session.input_buffer(max(len(part), lo))
        buf[: len(part)] = part
        outs = session.run(len(part))
        parts.append([np.array(o) if session.backend == "tensorrt" else o for o in outs])
    if len(parts) == 1:
        return parts[0]
    return [np.concatenate(group) for group in zip(*parts, strict=True)]


def _layout_of(session: Session, path: Path) -> tuple[TaskLayout, int, int | None]:
    """The task layout of the session's model, the index of its head output and of its mask prototypes.

    One source of truth with quantize and verify: an ONNX without task metadata is read as
    :func:`trtq.modelinfo.model_layout` tells from its graph (which needs the ``onnx`` package); where the
    head cannot be told, one line refuses it instead of decoding it as a detector."""
    shapes = session.output_shapes
    head = next((i for i, s in enumerate(shapes) if len(s) == 3), 0)
    protos = next((i for i, s in enumerate(shapes) if len(s) == 4), None)
    ordered = [shapes[head], *(s for i, s in enumerate(shapes) if i != head)]
    layout = None
    if "task" not in session.metadata and path.suffix.lower() == ".onnx":
        layout = _graph_layout(path)
    if layout is None:
        layout = task_layout(session.metadata, ordered, imgsz=session.imgsz, source=str(path))
        if "task" not in session.metadata:
            layout = refuse_ambiguous(layout, session.metadata, str(path))
    return layout, head, protos if layout.task == "segment" else None


def _graph_layout(path: Path) -> TaskLayout | None:
    """:func:`trtq.modelinfo.model_layout` of an ONNX file; None where the ``onnx`` package is missing."""
    try:
        import onnx  # noqa: F401  (the graph reader; not part of the minimal runtime)
    except ImportError:
        return None
    from trtq.modelinfo import model_layout, read_model_info

    return model_layout(read_model_info(path, with_hash=False))
