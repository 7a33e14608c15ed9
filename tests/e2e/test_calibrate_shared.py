"""Export and calibration on the shared YOLOv8n and coco128 images (slow; skipped where absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

pytestmark = pytest.mark.slow


def test_calibrate_shared_model(yolo_onnx: Path, calib_dir: Path, tmp_path: Path) -> None:
    from calibrators.calibrate import calibrate
    from calibrators.table import CalibrationTable, parse_trt_cache

    out = tmp_path / "y.cache"
    res = calibrate(yolo_onnx, calib_dir, num_images=6, output=out, progress=False)
    header, scales = parse_trt_cache(out.read_bytes())
    assert header == "TRT-100300-EntropyCalibration2"  # percentile ranges travel in an entropy2 cache
    graph = onnx.load(str(yolo_onnx)).graph
    tensors = {t for n in graph.node for t in n.output} | {i.name for i in graph.input}
    assert set(scales) <= tensors
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert all(n.input[0] in scales for n in convs), "every Conv input activation needs a scale"
    table = CalibrationTable.load(out)
    assert table.model_sha256 == res.table.model_sha256 and len(table.model_sha256) == 64
    assert 0.5 < table.amax["images"] <= 1.0
    sig = [n.output[0] for n in graph.node if n.op_type == "Sigmoid" and n.output[0] in table.amax]
    assert sig and all(table.amax[s] == pytest.approx(1.0) for s in sig if res.histograms[s].derived)
    # The default percentile 99.99 clips the rare outliers: for most activations amax is below the observed max.
    clipped = [n for n, h in res.histograms.items() if not h.derived and table.amax[n] < 0.99 * h.max_abs]
    assert len(clipped) > 0.5 * sum(1 for h in res.histograms.values() if not h.derived)
    # Determinism: same images and settings -> byte-identical cache.
    out2 = tmp_path / "y2.cache"
    calibrate(yolo_onnx, calib_dir, num_images=6, output=out2, progress=False)
    assert out2.read_bytes() == out.read_bytes()


def test_export_keeps_metadata_and_matches_reference_onnx(yolo_pt: Path, yolo_onnx: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    from trtq.export import export_onnx
    from trtq.images import ImageBatcher
    from trtq.modelinfo import read_model_info

    out = export_onnx(yolo_pt, output=tmp_path / "y.onnx")
    info = read_model_info(out)
    assert info.input.shape == (1, 3, 640, 640)
    assert len(info.names) == 80 and info.names[0] == "person"
    assert info.stride == 32 and info.imgsz == (640, 640)
    assert info.metadata.get("task") == "detect"
    onnx.checker.check_model(str(out))
    batch = next(iter(ImageBatcher.from_model(yolo_onnx.parent.parent / "coco128" / "images" / "val2017", info, num_images=1)))
    a = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, batch)[0].ravel()
    b = ort.InferenceSession(str(yolo_onnx), providers=["CPUExecutionProvider"]).run(None, batch)[0].ravel()
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert cos > 0.9999
    assert not list(tmp_path.glob("*.trtq-tmp*"))
