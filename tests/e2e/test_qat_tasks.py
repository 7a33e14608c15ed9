"""Label fine-tuning of pose, OBB and segment models with their own ultralytics trainers, and where the training files go.

Tiny runs: YOLOv8n structures from ultralytics' yamls with the COCO backbone transplanted, four coco128 images
with synthetic labels in the task's format, 64 px, one iteration.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("torch")
pytest.importorskip("ultralytics")

from tests.qat_data import task_dataset, task_pt  # noqa: E402
from trtq.errors import TrtqError  # noqa: E402
from trtq.quantize_options import QuantizeOptions  # noqa: E402

IMGSZ = 64


def _quantized_tensors(path: Path) -> set[str]:
    import onnx

    return {n.input[0] for n in onnx.load(str(path)).graph.node if n.op_type == "QuantizeLinear"}


def _run(pt: Path, data: Path, out: Path) -> dict:
    from trtq.qat import qat

    qat(pt, data=data, epochs=1, batch=4, imgsz=IMGSZ, output=out, num_images=None, calib_images=2, progress=False)
    return json.loads(out.with_suffix(".report.json").read_text())["qat"]


@pytest.mark.parametrize("task", ["pose", "obb", "segment"])
def test_labels_mode_trains_each_task_with_its_own_loss(
    task: str, tmp_path: Path, shared_assets: Path, yolo_pt: Path
) -> None:
    pt = task_pt(task, tmp_path / "pt", yolo_pt)
    data, instances = task_dataset(task, tmp_path / "ds", shared_assets / "coco128", pt)
    out = tmp_path / "out" / "m.onnx"
    q = _run(pt, data, out)
    assert q["train_instances"] == instances > 0  # every synthetic label was read, none dropped as corrupt
    extra = {"pose": {"pose", "kobj"}, "obb": {"angle"}, "segment": {"seg"}}[task]
    assert extra <= set(q["first_losses"]), q["first_losses"]
    assert all(np.isfinite(v) for v in q["first_losses"].values())
    # the fine-tuned Q/DQ ONNX quantizes exactly the tensors `trtq quantize` does on the model's export
    from trtq.export import export_onnx
    from trtq.quantize import quantize

    base = export_onnx(pt, imgsz=IMGSZ, output=tmp_path / "base.onnx")
    ptq = quantize(base, data, QuantizeOptions(num_images=2, progress=False), output=tmp_path / "ptq.onnx")
    assert _quantized_tensors(out) == _quantized_tensors(ptq.path)


def test_a_run_whose_labels_are_all_dropped_fails(tmp_path: Path, shared_assets: Path, yolo_pt: Path) -> None:
    """Valid pose labels, but on images ultralytics drops as corrupt (under 10 px); the background images it
    keeps (empty label files) give it nothing to learn from: an error, not a model trained on 0 instances."""
    import shutil

    pt = task_pt("pose", tmp_path / "pt", yolo_pt)
    data, _ = task_dataset("pose", tmp_path / "ds", shared_assets / "coco128", pt, image_px=8)
    for img in sorted((shared_assets / "coco128" / "images" / "train2017").glob("*.jpg"))[-2:]:
        shutil.copyfile(img, tmp_path / "ds" / "images" / "train" / img.name)
        (tmp_path / "ds" / "labels" / "train" / f"{img.stem}.txt").write_text("")  # background: no object
    out = tmp_path / "out" / "m.onnx"
    with pytest.raises(TrtqError, match="0 labelled instances"):
        _run(pt, data, out)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_relative_output_keeps_training_files_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, yolo_pt: Path, val_yaml: Path
) -> None:
    """ultralytics puts a relative training project under its global runs folder: nothing may land there or
    in the working folder, except the outputs."""
    import ultralytics.cfg as ucfg

    runs = tmp_path / "ultralytics-runs"
    monkeypatch.setattr(ucfg, "SETTINGS", {**ucfg.SETTINGS, "runs_dir": str(runs)})
    monkeypatch.setattr(ucfg, "TESTS_RUNNING", False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    from trtq.qat import qat

    qat(yolo_pt, data=val_yaml, epochs=1, batch=2, imgsz=IMGSZ, output="q.onnx", num_images=2, calib_images=2,
        progress=False)
    assert not runs.exists(), sorted(str(p) for p in runs.rglob("*"))
    assert sorted(os.listdir(work)) == ["q.cache", "q.cache.json", "q.float.onnx", "q.onnx", "q.report.json", "q.report.md"]
