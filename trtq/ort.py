"""The one ONNX Runtime session helper, shared by calibration, fidelity, benchmarks and the runtime.

A base-level module: it imports only ``trtq.errors`` (and ONNX Runtime when called), so build-time code
(``calibrators/``) can open sessions without importing the deploy-time runtime.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtq.errors import TrtqError

if TYPE_CHECKING:
    import onnxruntime as ort


# ONNX Runtime session option that keeps QuantizeLinear/DequantizeLinear nodes unfused: without it the
# CPU provider folds DQ -> Conv/MatMul -> Q into QLinearConv / MatMulInteger, whose u8 x s8 kernels on x86
# without VNNI add pairs of products in saturating 16 bits (VPMADDUBSW)
EXACT_QDQ_OPTION = "session.disable_quant_qdq"


def ort_session(
    path: Path | bytes,
    providers: Sequence[str] | None = None,
    *,
    exact_qdq: bool = False,
    threads: int | None = None,
) -> ort.InferenceSession:
    """An ONNX Runtime session of ``path`` (or serialized model bytes) on ``providers`` (default CPU),
    quiet, with one clear error.

    ``exact_qdq``: compute Q/DQ arithmetic as written (dequantize, float op, quantize), never in fused
    integer kernels, so the result is the same on every CPU. Use it wherever ONNX Runtime *simulates*
    another runtime (TensorRT accumulates in int32) or computes the intended arithmetic of a CPU-target
    model; leave it off to run a CPU-target model on the CPU's own integer kernels.

    ``threads``: ONNX Runtime's intra-op threads for one run (default: ONNX Runtime's choice, every core)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    chosen = list(providers) if providers else ["CPUExecutionProvider"]
    missing = [p for p in chosen if p not in available]
    if missing:
        raise TrtqError(f"ONNX Runtime providers {missing} are not available here (available: {available})")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads is not None:
        if threads < 1:
            raise TrtqError(f"threads must be at least 1, got {threads}")
        opts.intra_op_num_threads = int(threads)
    if exact_qdq:
        opts.add_session_config_entry(EXACT_QDQ_OPTION, "1")
    what = "the model" if isinstance(path, bytes) else str(path)
    try:
        return ort.InferenceSession(path if isinstance(path, bytes) else str(path), sess_options=opts, providers=chosen)
    except Exception as exc:
        raise TrtqError(f"ONNX Runtime cannot load {what}: {str(exc).splitlines()[0][:200]}") from None


@contextlib.contextmanager
def exact_qdq_sessions() -> Iterator[None]:
    """Within the block, every ``onnxruntime.InferenceSession`` created (by any library, e.g. ultralytics'
    validator, which builds its own) computes Q/DQ exactly, as :func:`ort_session` with ``exact_qdq``."""
    import onnxruntime as ort

    original = ort.InferenceSession

    class _ExactSession(original):  # type: ignore[misc,valid-type]
        def __init__(self, path_or_bytes: Any, sess_options: Any = None, *args: Any, **kwargs: Any) -> None:
            opts = sess_options if sess_options is not None else ort.SessionOptions()
            opts.add_session_config_entry(EXACT_QDQ_OPTION, "1")
            super().__init__(path_or_bytes, opts, *args, **kwargs)

    ort.InferenceSession = _ExactSession  # type: ignore[misc]
    try:
        yield
    finally:
        ort.InferenceSession = original  # type: ignore[misc]
