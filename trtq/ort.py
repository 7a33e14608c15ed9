"""The one ONNX Runtime session helper, shared by calibration, fidelity, benchmarks and the runtime.

A base-level module: it imports only ``trtq.errors`` (and ONNX Runtime when called), so build-time code
(``calibrators/``) can open sessions without importing the deploy-time runtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from trtq.errors import TrtqError

if TYPE_CHECKING:
    import onnxruntime as ort


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
